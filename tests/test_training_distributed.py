"""Two gloo ranks on the CPU, no Ray: what the training worker does across ranks.

- ce-clusters trains under DDP (its classifier runs inside the wrapped module's forward);
- embeddings for k-means / kNN use rank 0's BatchNorm buffers on every rank and gather to rank 0;
- gather_to_rank0 gives rank 0 every rank's rows in rank order, the others None;
- the logged loss is the mean over every rank's steps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clinfo_ray.config import ModelConfig, TrainConfig
from clinfo_ray.data.read.worker_cache import InMemorySplit
from clinfo_ray.distributed import broadcast_buffers_from_rank0, gather_to_rank0, mean_over_ranks
from clinfo_ray.model import build_model
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.embedding import embed_split
from clinfo_ray.training.objective import TrainModule, train_step
from tests.gloo import finish_rank, run_ranks

WORLD = 2
SIZE = 16
MODEL = {"cnn_width": 4, "proj_dim": 8}
# mean_over_ranks: each rank's per-step losses; ranks may hold different numbers of them
LOSSES = {0: [1.0, 2.0], 1: [6.0]}
CE_STEPS, CE_CLUSTERS, CE_BATCH = 3, 3, 4


def _split(images: torch.Tensor) -> InMemorySplit:
    """An unaugmented split held in memory, as a worker holds the kNN bank (label: index % 2)."""
    index = torch.arange(len(images))
    return InMemorySplit(images=images, index=index, label=index % 2)


def _images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 256, (7, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)


def _running_means(model: nn.Module) -> torch.Tensor:
    return torch.cat([m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)])


def _embeddings(rank_: int) -> dict[str, torch.Tensor]:
    """Same weights, different BN running statistics per rank (as after DDP training)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL))  # type: ignore[arg-type]
    model.train()
    with torch.no_grad():  # rank-specific batches move each rank's running statistics
        model(torch.rand(8, 3, SIZE, SIZE) * (rank_ + 1) + 2.0 * rank_)
    before = _running_means(model).clone()
    images = _images()
    got = embed_split(model, _split(images).in_order(3), torch.device("cpu"))
    model.eval()
    with torch.no_grad():  # every row embedded here, with this rank's buffers after embed_split
        out = model(images.float() / 255.0)
    local = {
        "buffers_before": before,
        "gathered": torch.tensor(got is not None),
        "local_features": out.features,
        "local_projections": F.normalize(out.projections, dim=-1),
    }
    if got is None:
        return local
    return {
        **local,
        "index": torch.from_numpy(got.index),
        "features": torch.from_numpy(got.features),
        "projections": torch.from_numpy(got.projections),
        "labels": torch.from_numpy(got.labels),
    }


# gather_to_rank0: rank r holds GATHER_ROWS[r] rows (rank 1 more, so rank 0's are padded)
GATHER_ROWS = {0: 2, 1: 3}


def _gather_rows(rank_: int) -> dict[str, torch.Tensor]:
    rows = torch.arange(GATHER_ROWS[rank_] * 2, dtype=torch.float32).view(-1, 2) + 100 * rank_
    empty = torch.empty(0, 2) if rank_ == 0 else rows  # a rank with no rows takes part too
    out = {"rows": rows}
    for name, x in (("all", gather_to_rank0(rows)), ("one_empty", gather_to_rank0(empty))):
        out[f"{name}_is_none"] = torch.tensor(x is None)
        if x is not None:
            out[name] = x
    return out


def _ce_clusters_steps(rank_: int) -> dict[str, torch.Tensor]:
    """ce-clusters under DDP as prepare_model wraps it (default DDP arguments)."""
    cfg = TrainConfig.from_dict(
        {
            "loss": {"method": "ce-clusters"},
            "clusters": {"method": "labels"},
            "model": MODEL,
            "optim": {"lr": 0.1, "warmup_epochs": 0, "epochs": 1},
        }
    )
    torch.manual_seed(0)
    inner = TrainModule(build_model(cfg.model), CE_CLUSTERS)
    start = {k: p.detach().clone() for k, p in inner.named_parameters()}
    optimizer, scheduler = build_optimizer(inner, cfg.optim, CE_STEPS)
    module = DistributedDataParallel(inner)
    gen = torch.Generator().manual_seed(100 + rank_)
    losses = []
    for _ in range(CE_STEPS):
        batch = {
            "views": torch.rand(CE_BATCH, 2, 3, SIZE, SIZE, generator=gen),
            "cluster": torch.randint(0, CE_CLUSTERS, (CE_BATCH,), generator=gen),
            "index": torch.arange(CE_BATCH),
            "label": torch.zeros(CE_BATCH, dtype=torch.int64),
        }
        losses.append(train_step(module, cfg, batch, optimizer, scheduler))
    return {  # parameters only: each rank's BN buffers follow its own last batch
        "losses": torch.tensor(losses),
        **{f"start.{k}": v for k, v in start.items()},
        **{f"end.{k}": p.detach() for k, p in inner.named_parameters()},
    }


SCENARIOS: dict[str, Callable[[int], dict[str, torch.Tensor]]] = {
    "embed": _embeddings,
    "gather": _gather_rows,
    "mean": lambda r: {"loss": torch.tensor(mean_over_ranks(LOSSES[r], torch.device("cpu")))},
    "ce": _ce_clusters_steps,
}


def _worker(rank_: int, port: int, scenario: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    torch.set_num_threads(1)
    torch.save(SCENARIOS[scenario](rank_), Path(out) / f"rank{rank_}.pt")
    finish_rank()


def _on_two_ranks(scenario: str, out: Path) -> list[dict[str, torch.Tensor]]:
    return run_ranks(_worker, out, scenario, world=WORLD)


def test_embeddings_use_rank0_batchnorm_buffers_on_every_rank(tmp_path: Path) -> None:
    first, second = _on_two_ranks("embed", tmp_path)
    # the ranks really did hold different running statistics before embedding
    assert not torch.allclose(first["buffers_before"], second["buffers_before"])
    # the whole split on rank 0 only, in index order
    assert bool(first["gathered"]) and not bool(second["gathered"])
    assert "features" not in second
    assert first["index"].tolist() == list(range(len(_images())))
    assert first["labels"].tolist() == [i % 2 for i in range(len(_images()))]
    # rank 1 embedded the odd rows: with rank 0's statistics
    torch.testing.assert_close(first["features"], first["local_features"])
    torch.testing.assert_close(first["projections"], first["local_projections"])
    # and afterwards rank 1's own model is rank 0's
    torch.testing.assert_close(second["local_features"], first["local_features"])


def test_gather_to_rank0_gives_rank0_every_row_in_rank_order(tmp_path: Path) -> None:
    first, second = _on_two_ranks("gather", tmp_path)
    assert not bool(first["all_is_none"]) and not bool(first["one_empty_is_none"])
    assert bool(second["all_is_none"]) and bool(second["one_empty_is_none"])
    assert "all" not in second and "one_empty" not in second
    assert torch.equal(first["all"], torch.cat([first["rows"], second["rows"]]))
    assert torch.equal(first["one_empty"], second["rows"])


def test_mean_over_ranks_weighs_every_step_of_every_rank(tmp_path: Path) -> None:
    expected = (1.0 + 2.0 + 6.0) / 3  # not rank 0's 1.5, nor the mean of rank means 3.75
    for r in _on_two_ranks("mean", tmp_path):
        assert r["loss"].item() == pytest.approx(expected)


def test_ce_clusters_trains_under_ddp(tmp_path: Path) -> None:
    first, second = _on_two_ranks("ce", tmp_path)
    for r in (first, second):
        assert torch.isfinite(r["losses"]).all()
        assert (r["losses"] > 0).all()
    assert not torch.equal(first["losses"], second["losses"])  # each rank its own batches
    ends = [k for k in first if k.startswith("end.")]
    for key in ends:  # DDP averaged the gradients: both ranks hold the same parameters
        torch.testing.assert_close(first[key], second[key], rtol=1e-6, atol=1e-7)
    # the classifier and the encoder learned; the unused projection head did not move
    weight = "classifier.classifier.weight"
    assert not torch.equal(first[f"end.{weight}"], first[f"start.{weight}"])
    encoder = next(k for k in ends if k.startswith("end.model.encoder.") and "weight" in k)
    assert not torch.equal(first[encoder], first["start." + encoder.removeprefix("end.")])
    head = [k for k in ends if k.startswith("end.model.head.")]
    assert head and all(torch.equal(first[k], first["start." + k[4:]]) for k in head)


def test_helpers_at_world_size_one() -> None:
    model = nn.BatchNorm1d(3)
    model(torch.randn(5, 3))
    before = model.running_mean.clone()
    broadcast_buffers_from_rank0(model)
    assert torch.equal(model.running_mean, before)
    assert mean_over_ranks([1.0, 2.0, 4.0], torch.device("cpu")) == pytest.approx(7 / 3)
    assert math.isnan(mean_over_ranks([], torch.device("cpu")))
    rows = torch.randn(3, 2)
    assert gather_to_rank0(rows) is rows
