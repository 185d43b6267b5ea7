"""A mechanical record of a study's rules: when its test split was first read, under which
claims, probe grid and methods (their SHA-256 digests, :meth:`Study.rules`) and at which code
commit; and every later change of them, with its date and commit.

The first trial to read the test split writes ``rules.json`` in the study's folder (created
exclusively on a local disk: trials running side by side cannot both write it; in a bucket,
which has no exclusive create, written when absent: trials of one invocation that race there
write the same commit and digests). Each time the raw results are
published (``meta.json``), the record is carried over and, when the study's rules no longer
match the last recorded ones, a change is appended. The page lists the changes.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from clinfo_ray.storage import location as loc
from clinfo_ray.storage.location import Location
from clinfo_ray.study.spec import Study

RULES_FILE = "rules.json"
_REPO = Path(__file__).resolve().parent.parent.parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(_REPO), *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def code_commit() -> str:
    """The checkout's commit (12 hex digits), ``-dirty`` when it has uncommitted changes to
    tracked files; ``unknown`` outside a git checkout."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def stamp(study: Study) -> dict[str, Any]:
    """Today's date, the code commit and the study's rule digests."""
    return {
        "date": datetime.date.today().isoformat(),
        "commit": code_commit(),
        "digests": study.rules(),
    }


def record_first_test_read(folder: Location, study: Study) -> None:
    """Write ``folder/rules.json`` unless it exists: called just before a trial reads the test
    split, so the first call is the first read."""

    def text() -> str:  # only for the first read: the stamp runs git twice
        return json.dumps(stamp(study), indent=2, sort_keys=True) + "\n"

    if loc.is_uri(folder):
        if not loc.is_file(loc.join(folder, RULES_FILE)):
            loc.write_text(loc.join(folder, RULES_FILE), text())
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(Path(folder) / RULES_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(text())


def read_first_test_read(folder: Location) -> dict[str, Any]:
    path = loc.join(folder, RULES_FILE)
    return json.loads(loc.read_text(path)) if loc.is_file(path) else {}


def updated_rules(
    recorded: dict[str, Any], first_read: dict[str, Any], study: Study
) -> dict[str, Any]:
    """meta.json's ``rules`` brought up to date: ``recorded`` (what meta.json held), the first
    read (from the study's folder when meta.json has none), and a change appended when the
    study's rules differ from the last recorded digests. {} while no test split was read."""
    first = recorded.get("first_test_read") or first_read
    if not first:
        return {}
    changes = list(recorded.get("changes", []))
    last = (changes[-1] if changes else first)["digests"]
    now = study.rules()
    changed = [name for name in now if now[name] != last.get(name)]
    if changed:
        changes.append({**stamp(study), "changed": changed})
    return {"first_test_read": first, "changes": changes}
