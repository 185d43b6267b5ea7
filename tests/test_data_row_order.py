"""Rows are written in one seeded permutation: neighbouring rows do not share labels.

The prepare test draws images whose annotation file is sorted by label, as UT-Zappos50K's folders
and the emoji code points are, and measures the runs of equal labels over the written train rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from clinfo_ray.commands.prepare import add_arguments, config_from_args
from clinfo_ray.config import PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest, split_files
from clinfo_ray.data.row_order import (
    batch_label_mixing,
    mean_label_run_length,
    row_permutation,
    shuffled_mean_label_run_length,
    uniform_batches,
)
from clinfo_ray.data.write.prepare import list_source, prepare
from tests.datasets import draw_shapes

N_IMAGES, N_CLASSES = 600, 6


def test_mean_label_run_length_by_hand() -> None:
    assert mean_label_run_length([3, 3, 3, 1, 1, 3]) == 2.0  # runs 3, 2, 1
    assert mean_label_run_length(np.arange(5)) == 1.0
    assert mean_label_run_length(np.zeros(7)) == 7.0
    assert mean_label_run_length(["a", "b", "b", -1, -1]) == 5 / 3
    with pytest.raises(ValueError, match="non-empty"):
        mean_label_run_length([])


def test_shuffled_run_length_matches_the_closed_form() -> None:
    """Adjacent pairs of a uniform shuffle are equal with p = sum_c n_c (n_c - 1) / (n (n - 1)),
    so runs R = n - (n - 1) p on average, and n / R is close to E[n / R] for large n."""
    labels = np.repeat(np.arange(N_CLASSES), 100)
    n = labels.size
    counts = np.bincount(labels)
    equal = (counts * (counts - 1)).sum() / (n * (n - 1))
    closed = n / (n - (n - 1) * equal)
    assert shuffled_mean_label_run_length(labels) == pytest.approx(closed, rel=0.01)
    assert mean_label_run_length(labels) == 100.0  # sorted: one run per class


def test_row_permutation_is_seeded() -> None:
    a = row_permutation(50, 0)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, row_permutation(50, 0))
    assert not np.array_equal(a, row_permutation(50, 1))


def test_seed_flag_defaults_from_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["imagefolder", "--out", "x", "--images", "i", "--annotations", "a"])
    assert config_from_args(args).seed == PrepareConfig("emoji", "x").seed == 0
    args = parser.parse_args(["emoji", "--out", "x", "--seed", "7"])
    assert config_from_args(args).seed == 7


@pytest.fixture(scope="module")
def sorted_source(tmp_path_factory: pytest.TempPathFactory) -> PrepareConfig:
    """600 small images, annotated in label order (six classes of 100), with a hierarchy."""
    root = tmp_path_factory.mktemp("sorted")
    records = draw_shapes(root / "img", N_IMAGES, size=16)
    lines = ["path,tags,label,hierarchy"]
    for i, r in enumerate(records):
        label = i * N_CLASSES // N_IMAGES
        lines.append(f"{r['path']},{'|'.join(r['tags'])},c{label},k{label % 2}>c{label}")
    (root / "a.csv").write_text("\n".join(lines) + "\n")
    return PrepareConfig(
        "imagefolder", str(root / "ds"), images=str(root / "img"), annotations=str(root / "a.csv")
    )


def _prepare(config: PrepareConfig, out: Path, seed: int) -> Path:
    prepare(dataclasses.replace(config, out=str(out), seed=seed, shard_size=128))
    return out


def _train_rows(folder: Path) -> list[dict]:
    files = split_files(folder, C.TRAIN)  # file order, as a streaming reader takes them
    return pq.read_table(files, columns=[C.ID, C.LABEL, C.HIERARCHY]).to_pylist()


def test_prepare_writes_a_seeded_permutation_and_keeps_the_split(
    ray_session: None, sorted_source: PrepareConfig, tmp_path: Path
) -> None:
    source = list_source(sorted_source).rows.to_pydict()
    assert mean_label_run_length(source[C.LABEL]) == 100.0  # the source is sorted by label
    split_of = dict(zip(source[C.ID], source[C.SPLIT], strict=True))

    first = _train_rows(_prepare(sorted_source, tmp_path / "s0", seed=0))
    labels = np.array([r[C.LABEL] for r in first])
    uniform = shuffled_mean_label_run_length(labels, draws=500)
    assert mean_label_run_length(labels) == pytest.approx(uniform, rel=0.10)
    # only the order changed: the same train rows as the source's own split
    assert sorted(r[C.ID] for r in first) == sorted(i for i, s in split_of.items() if s == C.TRAIN)
    assert json.loads((tmp_path / "s0" / C.MANIFEST).read_text())["row_order"] == {
        "permutation_seed": 0
    }

    again = _train_rows(_prepare(sorted_source, tmp_path / "again", seed=0))
    assert [r[C.ID] for r in again] == [r[C.ID] for r in first]
    other = _train_rows(_prepare(sorted_source, tmp_path / "s1", seed=1))
    assert [r[C.ID] for r in other] != [r[C.ID] for r in first]
    assert sorted(r[C.ID] for r in other) == sorted(r[C.ID] for r in first)
    assert read_manifest(tmp_path / "s1").row_order == {"permutation_seed": 1}

    # the imagefolder hierarchy column "k1>c3" is written as its list of ancestors
    assert all(r[C.HIERARCHY] == [f"k{r[C.LABEL] % 2}", f"c{r[C.LABEL]}"] for r in first)


def test_streamed_batches_of_a_sorted_source_mix_like_a_uniform_shuffle(
    ray_session: None, sorted_source: PrepareConfig, tmp_path: Path
) -> None:
    """The streamed path (data.cache none), end to end from a source sorted by label: the runs
    of equal labels inside a batch, and how many pairs of a batch share a label, are within
    10% of what batches drawn uniformly at random give."""
    from clinfo_ray.data.read.augment import ViewAugmentation
    from clinfo_ray.data.read.stream import StreamPlan

    data = _prepare(sorted_source, tmp_path / "ds", seed=0)
    plan = StreamPlan.build(data, augmentation=ViewAugmentation(size=8, views=1), seed=0)
    batches = [
        b["label"].numpy() for epoch in range(1, 6) for b in plan.iter_epoch(epoch, batch_size=32)
    ]
    labels = np.array([r[C.LABEL] for r in _train_rows(data)])
    streamed, uniform = batch_label_mixing(batches), batch_label_mixing(uniform_batches(labels, 32))
    assert len(batches) == 5 * (labels.size // 32)
    assert streamed[0] == pytest.approx(uniform[0], rel=0.10)
    assert streamed[1] == pytest.approx(uniform[1], rel=0.10)
