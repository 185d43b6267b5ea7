"""The command layer: one module per ``clinfo-ray`` subcommand, the Ray connection policy and
the logging setup. Library packages never import from here."""
