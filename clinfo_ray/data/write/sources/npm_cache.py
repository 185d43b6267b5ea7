"""Fetch npm packages as plain tarballs into a cache folder (never running their scripts)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from clinfo_ray.data.write.sources.source_table import PrepareError

log = logging.getLogger(__name__)

CACHE_ENV = "CLINFO_RAY_CACHE"


def default_cache() -> Path:
    """``$CLINFO_RAY_CACHE``, else ``~/.cache/clinfo-ray``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clinfo-ray")


def fetch_package(spec: str, cache: str | Path | None = None) -> Path:
    """Unpacked folder of npm package ``spec`` (``name@version``), reused when already there.

    ``npm pack`` downloads the tarball only; it is unpacked with Python's tarfile ('data' filter:
    no links out of the folder, no special files). The folder appears only when complete.
    """
    cache = Path(cache) if cache is not None else default_cache()
    target = cache / spec.replace("/", "_")
    if (target / "package" / "package.json").is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise PrepareError(
            f"npm is not installed: it is needed to fetch {spec} into {cache} (install "
            "Node.js and npm, e.g. apt-get install npm; or copy a filled cache folder there, "
            f"or name one with ${CACHE_ENV} or prepare's --cache)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        log.info("fetching %s with npm pack into %s", spec, cache)
        done = subprocess.run(
            [npm, "pack", "--ignore-scripts", "--silent", spec],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            last = (done.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise PrepareError(f"npm pack {spec} failed: {last}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        if target.exists():  # another process finished first
            return target
        unpacked.rename(target)
    return target
