"""data.decode_size: views are cut from images decoded larger than the crop, not from images
already shrunk to data.image_size (no Ray: datasets are written by hand)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest
from clinfo_ray.data.read.augment import ViewAugmentation
from clinfo_ray.data.read.decode import decode_image, source_side
from clinfo_ray.training import launch
from clinfo_ray.training.launch import (
    _check_worker_cache_size,
    resolve_decode_size,
    worker_cache_problem,
)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _stripes(side: int = 128, period: int = 4) -> bytes:
    """Vertical black and white stripes, ``period`` pixels wide: detail a crop must keep."""
    x = np.zeros((side, side, 3), np.uint8)
    x[:, (np.arange(side) // (period // 2)) % 2 == 0] = 255
    return _png(x)


def _detail(views: torch.Tensor) -> torch.Tensor:
    """(N,) mean absolute difference of horizontally adjacent pixels of each view."""
    return (views[..., 1:] - views[..., :-1]).abs().mean(dim=(1, 2, 3))


def test_crops_of_a_larger_decode_keep_high_frequency_detail() -> None:
    blob = _stripes()
    aug = ViewAugmentation(size=32, views=64, min_scale=0.2, jitter=0.0, grayscale_prob=0.0)
    detail = {}
    for size in (32, 128):
        image = torch.from_numpy(decode_image(blob, size).copy())[None]  # (1, 3, S, S)
        detail[size] = _detail(aug(image, dtype=torch.float32, seed=0)[0])
    # shrunk to the crop size first, the stripes (period 1 px there) average out to grey
    assert detail[32].max() < 0.02
    # decoded at 128, small crops keep them: most of the views show stripes 2 px apart
    assert detail[128].mean() > 0.15 and (detail[128] > 0.2).float().mean() > 0.3


def test_decode_size_is_checked_and_bounded() -> None:
    with pytest.raises(ConfigError, match=r"data\.decode_size"):
        TrainConfig.from_dict({"data": {"image_size": 32, "decode_size": 16}})
    assert TrainConfig.from_dict({"data": {"image_size": 32}}).data.decode_side_bound == 64
    cfg = TrainConfig.from_dict({"data": {"image_size": 32, "decode_size": 96}})
    assert cfg.data.decode_side_bound == 96


def _dataset(folder: Path, width: int, height: int, n: int = 6) -> Path:
    blob = _png(np.full((height, width, 3), 128, np.uint8))
    rows = [
        {C.ID: f"img{i}", C.IMAGE: blob, C.LABEL: i % 2, C.TAGS: [], C.SPLIT: C.TRAIN}
        for i in range(n)
    ]
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=C.SCHEMA), folder / "train-000000.parquet")
    Manifest(
        source="test",
        rows={C.TRAIN: n, C.TEST: 0},
        class_names=["a", "b"],
        coarse_class_names=[],
        tag_vocabulary_size=0,
        skipped=[],
        files={C.TRAIN: ["train-000000.parquet"]},
    ).write(folder)
    return folder


def test_default_decode_size_is_a_multiple_capped_by_the_source(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "ds", width=40, height=30)
    assert source_side([str(data / "train-000000.parquet")]) == 30  # the shorter side
    base = TrainConfig.from_dict({"data": {"dataset_dir": str(data), "image_size": 12}})
    assert resolve_decode_size(base).data.decode_size == 24  # 2 x 12, under the source's 30
    big = apply_overrides(base, {"data.image_size": 16})
    assert resolve_decode_size(big).data.decode_size == 30  # 2 x 16 capped by the source
    small = apply_overrides(base, {"data.image_size": 32})
    assert resolve_decode_size(small).data.decode_size == 32  # never below the crop size
    given = apply_overrides(base, {"data.decode_size": 50})
    assert resolve_decode_size(given).data.decode_size == 50  # an explicit value stays


def test_worker_memory_check_counts_the_decoded_size() -> None:
    cfg = TrainConfig.from_dict(
        {"data": {"image_size": 32, "cache": "worker", "augment_on": "worker"}}
    )
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    workers = cfg.run.num_workers
    rows = total // (4 * 3 * 32**2 * workers)  # a quarter of memory at the 32-px crop size...
    with pytest.raises(ConfigError, match=r"data\.cache"):
        _check_worker_cache_size(rows, cfg)  # ...but the whole of it decoded at 64 px
    _check_worker_cache_size(rows // 8, cfg)


def test_worker_cache_fits_in_half_of_each_memory() -> None:
    gib = 2**30
    assert worker_cache_problem(2 * gib, 2, 8 * gib, "this machine's memory") is None
    problem = worker_cache_problem(2 * gib + 1, 2, 8 * gib, "this machine's memory")
    assert problem is not None and "2 worker(s)" in problem and "(8 GiB)" in problem
    assert worker_cache_problem(4 * gib, 1, 8 * gib, "GPU") is None
    assert worker_cache_problem(4 * gib + 1, 1, 8 * gib, "GPU") is not None


def test_worker_cache_on_gpu_workers_is_checked_against_the_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On GPU workers of a local run the split must also fit in half of the smallest GPU (faked:
    this machine has none); CPU workers and a cluster's workers are not checked against it."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(launch, "local_gpu_memory", lambda: [16 * 2**30, 4 * 2**30])
    raw = {"data": {"image_size": 32, "decode_size": 32, "cache": "worker"}}
    raw["data"]["augment_on"] = "worker"
    gpu = TrainConfig.from_dict({**raw, "run": {"num_workers": 1, "device": "gpu"}})
    rows = 3 * 2**30 // (3 * 32**2)  # 3 GiB decoded: fits the host, not half of 4 GiB
    with pytest.raises(ConfigError, match=r"data\.cache: .*smallest of this machine's 2 GPU"):
        _check_worker_cache_size(rows, gpu)
    _check_worker_cache_size(rows // 2, gpu)  # 1.5 GiB fits
    _check_worker_cache_size(rows, apply_overrides(gpu, {"run.device": "cpu"}))
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere:10001")
    _check_worker_cache_size(rows, gpu)
