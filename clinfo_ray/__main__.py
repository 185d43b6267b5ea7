"""``python -m clinfo_ray COMMAND ...``: the same as the ``clinfo-ray`` console script."""

import sys

from clinfo_ray.commands.main import main

sys.exit(main())
