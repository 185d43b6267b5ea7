"""Rank 0's record of a run: TensorBoard scalars, metrics.jsonl beside them, a console line.

A run in a bucket (``run.output_dir: s3://...``) writes both into a local temporary folder and
uploads them after every epoch and at the end, each file one object (TensorBoard's event files
and metrics.jsonl as a whole): the bucket holds every epoch that finished. A resumed run first
fetches the metrics.jsonl it appends to; its TensorBoard events go to a new file beside the old.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from clinfo_ray.storage import location as loc

log = logging.getLogger("clinfo_ray.training")

TENSORBOARD_DIR = "tensorboard"
METRICS_FILE = "metrics.jsonl"


def _format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:d}:{secs:02d}"


class RunLog:
    """The one writer of a run's logs; only rank 0 makes one (other ranks get ``None``)."""

    def __init__(self, run_dir: str | Path, total_epochs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # only rank 0 pays the import

        self.location = str(run_dir)  # a local folder or a URI
        self.remote = loc.is_uri(self.location)
        if self.remote:
            self.run_dir = Path(tempfile.mkdtemp(prefix="clinfo-ray-run-log-"))
            metrics = loc.join(self.location, METRICS_FILE)
            if loc.is_file(metrics):  # a resumed run appends to what its bucket holds
                (self.run_dir / METRICS_FILE).write_bytes(loc.read_bytes(metrics))
        else:
            self.run_dir = Path(run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR))
        self.metrics_path = self.run_dir / METRICS_FILE
        self.total_epochs = total_epochs
        self._epoch_seconds: list[float] = []

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars (keys like ``train/loss``); non-finite values are logged too."""
        for key, value in values.items():
            self.writer.add_scalar(key, float(value), global_step=step)

    def record(self, record: dict[str, Any]) -> None:
        """One JSON line in metrics.jsonl (epoch summaries, evaluations, cluster rebuilds)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")

    def epoch_done(self, epoch: int, seconds: float, metrics: dict[str, float]) -> str:
        """Log one epoch everywhere and return the console line (with an ETA)."""
        self._epoch_seconds.append(seconds)
        recent = self._epoch_seconds[-5:]
        eta = sum(recent) / len(recent) * (self.total_epochs - epoch)
        shown = " ".join(
            f"{k.split('/')[-1]}={v:.4g}"
            for k, v in metrics.items()
            if math.isfinite(v) and k != "epoch"  # the line starts with it
        )
        line = (
            f"epoch {epoch}/{self.total_epochs} {shown} "
            f"[{_format_seconds(seconds)}/epoch, eta {_format_seconds(eta)}]"
        )
        log.info(line)
        self.writer.flush()
        self.upload()
        return line

    def upload(self) -> None:
        """A run in a bucket: metrics.jsonl and the TensorBoard events to it (nothing locally)."""
        if not self.remote:
            return
        if self.metrics_path.is_file():
            loc.write_bytes(loc.join(self.location, METRICS_FILE), self.metrics_path.read_bytes())
        loc.upload_dir(self.run_dir / TENSORBOARD_DIR, loc.join(self.location, TENSORBOARD_DIR))

    def close(self) -> None:
        self.writer.close()
        self.upload()
        if self.remote:
            shutil.rmtree(self.run_dir, ignore_errors=True)
