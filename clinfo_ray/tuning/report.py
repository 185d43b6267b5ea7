"""What a search leaves: ``trials.csv``, a printed table, ``best.yaml`` and a plot.

A trial's status is ``completed`` (all ``optim.epochs``), ``stopped early`` (by ASHA),
``errored`` (it raised: the error's first line is kept) or ``unfinished`` (the search was
interrupted; rerunning the command resumes it). ``final`` is the metric of its last epoch,
``best`` the highest of any epoch. The best trial is the completed one with the highest final
metric (a stopped trial's early score is not a trained model's); when no trial completed, the
one with the highest best metric. ``best.yaml`` is the search's base config with that trial's
values: ``clinfo-ray train --config best.yaml`` trains it (run.name NAME-best).
"""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import yaml

from clinfo_ray.config import TrainConfig, apply_overrides
from clinfo_ray.storage import location as loc
from clinfo_ray.training.run_log import METRICS_FILE
from clinfo_ray.tuning.search import METRIC
from clinfo_ray.tuning.space import SearchSpace
from clinfo_ray.tuning.trial import TRIALS_DIR

CSV_FILE = "trials.csv"
BEST_FILE = "best.yaml"
COMPLETED, STOPPED, ERRORED, UNFINISHED = "completed", "stopped early", "errored", "unfinished"


@dataclass(frozen=True)
class TrialRecord:
    trial_id: str
    params: dict[str, Any]  # dotted key -> drawn value
    status: str
    epochs: int  # epochs reported
    final: float | None  # the metric of the last epoch
    best: float | None  # the highest metric of any epoch
    error: str | None = None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _history_from_frame(frame: Any) -> dict[int, float | None]:
    """epoch -> metric from Tune's per-trial results (the last row of an epoch wins)."""
    history: dict[int, float | None] = {}
    if frame is None or "epoch" not in getattr(frame, "columns", ()):
        return history
    for _, row in frame.iterrows():
        epoch = _number(row.get("epoch"))
        if epoch is not None:
            history[int(epoch)] = _number(row.get(METRIC))
    return history


def _history_from_run(run_dir: str) -> dict[int, float | None]:
    """epoch -> metric from the trial run's own metrics.jsonl (rank 0 writes every epoch)."""
    history: dict[int, float | None] = {}
    path = loc.join(run_dir, METRICS_FILE)
    if not loc.is_file(path):
        return history
    for line in loc.read_text(path).splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if row.get("event") == "epoch" and _number(row.get("epoch")) is not None:
            history[int(row["epoch"])] = _number(row.get(METRIC))
    return history


def _trials(grid: Any) -> dict[str, Any]:
    """trial id -> Tune's Trial (its status: TERMINATED, ERROR, RUNNING, ...; its config:
    a Result's config comes from its last result, empty for a trial that errored before
    reporting and was restored)."""
    analysis = getattr(grid, "_experiment_analysis", None)
    return {t.trial_id: t for t in getattr(analysis, "trials", None) or []}


def _params(result: Any, trial: Any, keys: Sequence[str]) -> dict[str, Any]:
    config = getattr(trial, "config", None) or result.config or {}
    if not config:
        # Tune writes it as a trial starts, on the search's filesystem (a disk or a bucket)
        filesystem = getattr(result, "filesystem", None) or pafs.LocalFileSystem()
        params_file = posixpath.join(result.path, "params.json")
        if filesystem.get_file_info(params_file).type == pafs.FileType.File:
            with filesystem.open_input_stream(params_file) as stream:
                config = json.loads(stream.read().decode("utf-8"))
    return {key: config.get(key) for key in keys}


def collect(grid: Any, search_dir: str, space: SearchSpace, epochs: int) -> list[TrialRecord]:
    """One record per trial of a Tune ResultGrid, by trial id (for grid and random search the
    order the trials were made in). The metric history is what Tune received, else (a trial
    Tune started again after its run had ended) what the trial's run logged itself."""
    trials = _trials(grid)
    records = []
    for result in grid:
        trial_id = posixpath.basename(result.path.rstrip("/"))  # folders named by trial id
        history = _history_from_frame(getattr(result, "metrics_dataframe", None))
        if not history:
            history = _history_from_run(loc.join(search_dir, TRIALS_DIR, trial_id))
        scores = [v for _, v in sorted(history.items()) if v is not None]
        done = max(history, default=0)
        trial = trials.get(trial_id)
        tune_status = str(getattr(trial, "status", ""))
        error = None
        if result.error is not None or tune_status == "ERROR":
            status = ERRORED
            text = str(result.error or "error").strip()
            error = text.splitlines()[-1] if text else "error"
        elif done >= epochs:
            status = COMPLETED
        elif tune_status == "TERMINATED":
            status = STOPPED
        else:
            status = UNFINISHED
        params = _params(result, trial, space.keys)
        records.append(
            TrialRecord(
                trial_id,
                params,
                status,
                done,
                history.get(done),
                max(scores) if scores else None,
                error,
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    completed = [r for r in records if r.status == COMPLETED and r.final is not None]
    if completed:
        return max(completed, key=lambda r: r.final or 0.0)
    scored = [r for r in records if r.best is not None]
    return max(scored, key=lambda r: r.best or 0.0) if scored else None


def best_config(base: TrainConfig, best: TrialRecord, name: str) -> Any:
    """The base config with the best trial's values, named NAME-best."""
    cfg = apply_overrides(base, best.params, f"best trial {best.trial_id}")
    return apply_overrides(cfg, {"run.name": f"{name}-best"})


def write_best_yaml(path: str, cfg: TrainConfig, best: TrialRecord, name: str) -> None:
    shown = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (
        f"# The best trial ({best.trial_id}, {best.status}) of the search {name!r}: {shown}\n"
        f"# {METRIC} (validation split): final {_fmt(best.final)}, best {_fmt(best.best)}\n"
        f"# clinfo-ray train --config {path}\n"
    )
    loc.write_text(path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_csv(path: str, records: Sequence[TrialRecord], keys: Sequence[str]) -> None:
    fields = ["trial_id", *keys, "status", "epochs", "final", "best", "error"]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(fields)
    for r in records:
        values = [r.params.get(k) for k in keys]
        writer.writerow([r.trial_id, *values, r.status, r.epochs, r.final, r.best, r.error])
    loc.write_text(path, handle.getvalue())


def format_table(
    records: Sequence[TrialRecord], keys: Sequence[str], best: TrialRecord | None
) -> str:
    """The trials as a text table, best final metric first, the best trial marked."""
    header = ["trial", *keys, "status", "epochs", "final", "best"]
    order = sorted(records, key=lambda r: (r.final is None, -(r.final or 0.0), r.trial_id))
    rows = [
        [
            r.trial_id + (" *" if best is not None and r.trial_id == best.trial_id else ""),
            *(_fmt(r.params.get(k)) for k in keys),
            r.status,
            str(r.epochs),
            _fmt(r.final),
            _fmt(r.best),
        ]
        for r in order
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = f"{METRIC} on the validation split; * the best trial"
    errors = [f"{r.trial_id}: {r.error}" for r in order if r.error]
    return "\n".join([*lines, note, *errors])


def plot(path: str, records: Sequence[TrialRecord], space: SearchSpace, title: str) -> str | None:
    """A PNG of each trial's best metric over the searched values: one key, the metric
    against its values; two keys, a heatmap (each cell the best trial in it; a continuous key
    in bins); more, one panel per key. None when no trial has a score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in records if r.best is not None]
    if not scored:
        return None
    keys = space.keys
    best = best_record(records)
    if len(keys) == 2:
        fig, ax = plt.subplots(figsize=(7, 5.5))
        _heatmap(ax, fig, scored, space, best)
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            _scatter(ax, scored, space, key, best)
    fig.suptitle(f"{title}: best {METRIC} (validation) per trial")
    fig.tight_layout()
    with loc.local_output(path) as local:  # a local path or a URI
        fig.savefig(local, dpi=120, format="png")
    plt.close(fig)
    return path


def _is_numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _scatter(
    ax: Any,
    records: Sequence[TrialRecord],
    space: SearchSpace,
    key: str,
    best: TrialRecord | None,
) -> None:
    values = [r.params.get(key) for r in records]
    scores = [r.best for r in records]
    colours = ["tab:blue" if r.status == COMPLETED else "tab:orange" for r in records]
    numeric = _is_numeric(values)
    labels = sorted({str(v) for v in values})
    xs = values if numeric else [labels.index(str(v)) for v in values]
    ax.scatter(xs, scores, c=colours)
    for x, r in zip(xs, records, strict=True):
        if best is not None and r.trial_id == best.trial_id:
            ax.scatter([x], [r.best], marker="*", s=250, facecolors="none", edgecolors="k")
    if numeric and space.dimension(key).log_scale:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(f"best {METRIC}")
    ax.set_title("blue: completed, orange: stopped early, star: best.yaml", fontsize=9)


_MAX_CELLS = 8  # distinct values shown as they are; more are put in this many bins


def _axis(values: Sequence[Any], log: bool) -> tuple[list[str], list[int]]:
    """Tick labels and each value's cell along one heatmap axis."""
    distinct = sorted(set(values), key=lambda v: (str(type(v)), v if _is_numeric([v]) else str(v)))
    if len(distinct) <= _MAX_CELLS or not _is_numeric(values):
        return [_fmt(v) for v in distinct], [distinct.index(v) for v in values]
    low, high = min(values), max(values)
    scale = (math.log, math.exp) if log and low > 0 else (float, float)
    a, b = scale[0](low), scale[0](high)
    width = (b - a) / _MAX_CELLS
    cells = [min(_MAX_CELLS - 1, int((scale[0](v) - a) / width)) for v in values]
    edges = [scale[1](a + i * width) for i in range(_MAX_CELLS + 1)]
    labels = [f"{_fmt(edges[i])}-{_fmt(edges[i + 1])}" for i in range(_MAX_CELLS)]
    return labels, cells


def _heatmap(
    ax: Any,
    fig: Any,
    records: Sequence[TrialRecord],
    space: SearchSpace,
    best: TrialRecord | None,
) -> None:
    import numpy as np

    (ykey, xkey) = space.keys
    xlabels, xcells = _axis([r.params.get(xkey) for r in records], space.dimension(xkey).log_scale)
    ylabels, ycells = _axis([r.params.get(ykey) for r in records], space.dimension(ykey).log_scale)
    grid = np.full((len(ylabels), len(xlabels)), np.nan)
    notes: dict[tuple[int, int], set[str]] = {}
    for r, x, y in zip(records, xcells, ycells, strict=True):
        if np.isnan(grid[y, x]) or (r.best or 0.0) > grid[y, x]:
            grid[y, x] = r.best
        notes.setdefault((y, x), set()).add(r.status)
        if best is not None and r.trial_id == best.trial_id:
            notes[(y, x)].add("best")
    image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=f"best {METRIC}")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=30, ha="right")
    ax.set_yticks(range(len(ylabels)), ylabels)
    ax.set_xlabel(xkey)
    ax.set_ylabel(ykey)
    for (y, x), value in np.ndenumerate(grid):
        if np.isnan(value):
            continue
        note = notes.get((y, x), set())
        text = f"{value:.3f}" + (" *" if "best" in note else "")
        if note & {COMPLETED, "best"} == set():
            text += "\nstopped"
        ax.text(x, y, text, ha="center", va="center", color="w", fontsize=8)
    ax.set_title("* best.yaml's trial; stopped: every trial in the cell stopped early", fontsize=9)


def write_outputs(
    search_dir: str,
    records: Sequence[TrialRecord],
    space: SearchSpace,
    base: TrainConfig,
    name: str,
) -> dict[str, str | None]:
    """trials.csv, best.yaml and NAME.png in the search's folder (a local path or a URI);
    their locations (None for what could not be made: no scored trial)."""
    written: dict[str, str | None] = {}
    csv_path = loc.join(search_dir, CSV_FILE)
    write_csv(csv_path, records, space.keys)
    written["csv"] = csv_path
    best = best_record(records)
    written["best"] = None
    if best is not None:
        path = loc.join(search_dir, BEST_FILE)
        write_best_yaml(path, best_config(base, best, name), best, name)
        written["best"] = path
    written["plot"] = plot(loc.join(search_dir, f"{name}.png"), records, space, name)
    return written
