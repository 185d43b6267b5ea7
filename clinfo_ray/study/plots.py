"""The study's plots, drawn on a bare Agg canvas (no pyplot state) in matplotlib's default
style, at a fixed size and dpi, without the "Software" PNG field (PNG carries no date): the same
records give the same PNG bytes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clinfo_ray.study.intervals import mean_sd
from clinfo_ray.study.page_format import metric_name, scores
from clinfo_ray.study.records import TrialRecord

ACCURACY_PLOT = "accuracy_by_method.png"
MI_PLOT = "accuracy_vs_mi.png"
CE_PLOT = "accuracy_vs_conditional_entropy.png"
_FIGSIZE = (7.0, 4.5)
_DPI = 100


def _draw(path: Path, draw: Any, xlabel: str, ylabel: str, title: str) -> None:
    """One PNG: ``draw(ax)`` on a bare Agg figure in matplotlib's default style (a user's
    matplotlibrc must not change the bytes); draw returns False when it had nothing to show."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        figure = Figure(figsize=_FIGSIZE, dpi=_DPI)
        FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        if draw(ax):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "nothing to show", ha="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=_DPI, metadata={"Software": None})


def plot_accuracy_by_method(
    path: Path, records: Sequence[TrialRecord], order: Sequence[str], metric: str
) -> None:
    shown = [m for m in order if scores([r for r in records if r.method == m], "test", metric)]

    def draw(ax: Any) -> bool:
        for offset, key, marker in ((-0.1, metric, "o"), (0.1, "knn_top1", "s")):
            xs, means, sds = [], [], []
            for i, method in enumerate(shown):
                values = scores([r for r in records if r.method == method], "test", key)
                if values:
                    mean, sd = mean_sd(values)
                    xs.append(i + offset)
                    means.append(mean)
                    sds.append(sd or 0.0)  # one seed: no error bar
            ax.errorbar(xs, means, yerr=sds, fmt=marker, capsize=4, label=metric_name(key))
        ax.set_xticks(range(len(shown)), shown, rotation=20, ha="right")
        return bool(shown)

    title = "test accuracy by method (mean ± sd over seeds)"
    _draw(path, draw, "", "test accuracy", title)


def plot_accuracy_against(
    path: Path,
    records: Sequence[TrialRecord],
    order: Sequence[str],
    metric: str,
    key: str,
    label: str,
) -> None:
    def draw(ax: Any) -> bool:
        drawn = False
        for i, method in enumerate(order):  # a method keeps its colour in every plot
            points = [
                (r.clusters[key], r.test[metric])
                for r in records
                if r.method == method
                and r.clusters is not None
                and key in r.clusters
                and r.test is not None
                and metric in r.test
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.scatter(xs, ys, color=f"C{i % 10}", label=method)
                drawn = True
        return drawn

    name = metric_name(metric)
    _draw(path, draw, label, f"test {name}", f"test {name} against the clusters, one point a run")
