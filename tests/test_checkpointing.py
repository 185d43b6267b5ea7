"""Checkpoints: save -> load restores everything, DDP prefixes, model-shape mismatches fail,
state.json is written last and lists the parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from clinfo_ray.checkpointing import (
    CheckpointError,
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from clinfo_ray.config import ModelConfig, TrainConfig, apply_overrides
from clinfo_ray.losses import ClusterCrossEntropy
from clinfo_ray.model import ContrastiveModel, build_model
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.cluster_state import ClusterState

CONFIG = apply_overrides(
    TrainConfig(),
    {"model.cnn_width": 4, "model.proj_dim": 8, "optim.name": "lars", "optim.warmup_epochs": 1},
)


def _step(model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, seed: int) -> None:
    torch.manual_seed(seed)
    out = model(torch.randn(4, 2, 3, 16, 16))
    loss = out.projections.pow(2).mean() + out.features.mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def _trained(cfg: TrainConfig = CONFIG) -> tuple[ContrastiveModel, Optimizer, LRScheduler]:
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer, scheduler = build_optimizer(model, cfg.optim, steps_per_epoch=3)
    for seed in range(2):
        _step(model, optimizer, scheduler, seed)
    return model, optimizer, scheduler


def _assert_same_tensors(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same_tensors(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tensors(x, y)
    else:
        assert a == b


def test_save_load_restores_model_optimizer_scheduler_loss_clusters(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trained()
    loss_module = ClusterCrossEntropy(model.feature_dim, 5)
    clusters = ClusterState(np.array([2, 0, 1, 1, 0], dtype=np.int64), version=7)
    save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_module=loss_module,
        clusters=clusters,
        epoch=3,
        step=2,
        config=CONFIG,
        cluster_table_version=7,
        extra={"train/loss": 1.5},
    )
    torch.manual_seed(123)
    fresh = build_model(CONFIG.model)  # other initial weights
    fresh_opt, fresh_sched = build_optimizer(fresh, CONFIG.optim, steps_per_epoch=3)
    fresh_loss = ClusterCrossEntropy(model.feature_dim, 5)
    fresh_clusters = ClusterState(None)  # instance clusters, version 0, until restored
    state = load_checkpoint(
        tmp_path / "ckpt",
        model=fresh,
        optimizer=fresh_opt,
        scheduler=fresh_sched,
        loss_module=fresh_loss,
        clusters=fresh_clusters,
        model_config=CONFIG.model,
    )
    assert (state.epoch, state.step, state.cluster_table_version) == (3, 2, 7)
    assert state.extra == {"train/loss": 1.5} and state.train_config() == CONFIG
    _assert_same_tensors(model.state_dict(), fresh.state_dict())
    _assert_same_tensors(optimizer.state_dict(), fresh_opt.state_dict())
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    _assert_same_tensors(loss_module.state_dict(), fresh_loss.state_dict())
    assert fresh_clusters.version == 7 and fresh_clusters.num_clusters == 3
    assert fresh_clusters.assignment is not None
    assert fresh_clusters.assignment.tolist() == [2, 0, 1, 1, 0]
    assert fresh_clusters.ids(torch.tensor([4, 0])).tolist() == [0, 2]
    # The next step after resuming equals the next step without interruption.
    _step(model, optimizer, scheduler, seed=9)
    _step(fresh, fresh_opt, fresh_sched, seed=9)
    _assert_same_tensors(model.state_dict(), fresh.state_dict())


def test_files_load_with_weights_only(tmp_path: Path) -> None:
    model, optimizer, scheduler = _trained()
    directory = save_checkpoint(
        tmp_path / "c", model=model, optimizer=optimizer, scheduler=scheduler, epoch=1, step=2,
        config=CONFIG,
    )  # fmt: skip
    for name in ("model.pt", "optimizer.pt", "scheduler.pt"):
        torch.load(directory / name, weights_only=True)  # raises on anything but plain data
    state = json.loads((directory / "state.json").read_text())
    # JSON holds the config's tuples (clusters.tags_include, ...) as lists
    assert state["config"] == json.loads(json.dumps(CONFIG.to_dict())) and state["files"] == [
        "optimizer.pt",
        "scheduler.pt",
    ]
    assert not list(directory.glob(".*.tmp"))


@pytest.mark.parametrize("assignment", [np.array([1, 0, 1]), None], ids=["table", "instances"])
def test_clusters_are_a_part_listed_and_written_before_state_json(
    tmp_path: Path, assignment: np.ndarray | None
) -> None:
    model, optimizer, _ = _trained()
    clusters = ClusterState(assignment, version=2)
    directory = save_checkpoint(
        tmp_path / "c", model=model, optimizer=optimizer, clusters=clusters, epoch=1, step=2,
        config=CONFIG, cluster_table_version=clusters.version,
    )  # fmt: skip
    state = json.loads((directory / "state.json").read_text())
    assert state["files"] == ["clusters.pt", "optimizer.pt"]
    # a directory with state.json is complete: every part is older (or as old)
    written = (directory / "state.json").stat().st_mtime_ns
    parts = ["model.pt", *state["files"]]
    assert all((directory / name).stat().st_mtime_ns <= written for name in parts)
    saved = torch.load(directory / "clusters.pt", weights_only=True)
    assert saved["version"] == 2
    restored = ClusterState(np.zeros(3, dtype=np.int64))
    load_checkpoint(directory, model=model, clusters=restored)
    assert restored.version == 2
    if assignment is None:  # instance clusters: each index its own
        assert restored.assignment is None and restored.num_clusters is None
        assert restored.ids(torch.tensor([2, 0])).tolist() == [2, 0]
    else:
        assert restored.assignment is not None
        assert restored.assignment.tolist() == [1, 0, 1]


def test_model_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    model, _, _ = _trained()
    save_checkpoint(tmp_path / "c", model=model, epoch=1, step=1, config=CONFIG)
    other = ModelConfig(backbone="resnet18", proj_dim=8)
    with pytest.raises(CheckpointError, match=r"model\.backbone: checkpoint 'small_cnn'"):
        load_checkpoint(tmp_path / "c", model=build_model(other), model_config=other)
    wider = ModelConfig(cnn_width=8, proj_dim=8)
    with pytest.raises(CheckpointError, match=r"model\.cnn_width.*model\.proj_hidden_dim"):
        load_checkpoint(tmp_path / "c", model=build_model(wider), model_config=wider)
    # Without a config the state dict comparison still names what differs.
    with pytest.raises(CheckpointError, match=r"of another shape.*encoder\.layers\.0\.0\.weight"):
        load_checkpoint(tmp_path / "c", model=build_model(wider))


def test_missing_pieces_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no state\.json"):
        read_checkpoint_state(tmp_path)
    model, optimizer, _ = _trained()
    save_checkpoint(tmp_path / "c", model=model, epoch=1, step=1, config=CONFIG)
    with pytest.raises(CheckpointError, match=r"no optimizer\.pt"):
        load_checkpoint(tmp_path / "c", model=model, optimizer=optimizer)
    with pytest.raises(CheckpointError, match=r"no clusters\.pt"):
        load_checkpoint(tmp_path / "c", model=model, clusters=ClusterState(None))


def test_ddp_wrapped_models_save_and_load_without_prefix(tmp_path: Path) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model, _, _ = _trained()
        wrapped = DistributedDataParallel(model)
        save_checkpoint(tmp_path / "c", model=wrapped, epoch=1, step=1, config=CONFIG)
        saved = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
        assert not any(key.startswith("module.") for key in saved)
        target = DistributedDataParallel(build_model(CONFIG.model))
        load_checkpoint(tmp_path / "c", model=target, model_config=CONFIG.model)
        _assert_same_tensors(model.state_dict(), target.module.state_dict())
    finally:
        dist.destroy_process_group()
    # A state dict saved from a wrapper elsewhere ("module." keys) loads into a plain model.
    torch.save({f"module.{k}": v for k, v in saved.items()}, tmp_path / "c" / "model.pt")
    plain: ContrastiveModel = build_model(CONFIG.model)
    load_checkpoint(tmp_path / "c", model=plain)
    _assert_same_tensors(model.state_dict(), plain.state_dict())


def test_load_model_from_checkpoint(tmp_path: Path) -> None:
    model, _, _ = _trained()
    save_checkpoint(tmp_path / "c", model=model, epoch=4, step=8, config=CONFIG.to_dict())
    restored, config = load_model_from_checkpoint(tmp_path / "c")
    assert config == CONFIG and not restored.training
    _assert_same_tensors(model.state_dict(), restored.state_dict())


def test_compiled_model_saves_plain_keys(tmp_path: Path) -> None:
    model, _, _ = _trained()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    assert isinstance(compiled, nn.Module)
    save_checkpoint(tmp_path / "c", model=compiled, epoch=1, step=1, config=CONFIG)
    saved = torch.load(tmp_path / "c" / "model.pt", weights_only=True)
    assert set(saved) == set(model.state_dict())


def test_a_resumed_rank_reads_a_bucket_checkpoint_where_it_is(
    tmp_path: Path, s3_prefix: str
) -> None:
    """A rank resuming from a bucket reads the checkpoint's files from the bucket into its own
    memory: no local copy that a later rank could write over while it reads (Ray's shared
    as_directory does: ray-project/ray#48726). A local checkpoint is read where it is."""
    import ray.train

    from clinfo_ray.storage import location as loc
    from clinfo_ray.training.worker import checkpoint_location

    model, _, _ = _trained()
    local = save_checkpoint(
        tmp_path / "c" / "checkpoint_epoch0002", model=model, epoch=2, step=6, config=CONFIG
    )
    run_dir = loc.join(s3_prefix, "runs", "tiny")
    uri = loc.join(run_dir, local.name)
    for part in sorted(local.iterdir()):
        loc.write_bytes(loc.join(uri, part.name), part.read_bytes())
    filesystem, path = loc.resolve(uri)
    location = checkpoint_location(ray.train.Checkpoint(path, filesystem=filesystem), run_dir)
    assert location == uri  # the bucket itself, no local folder
    restored = build_model(CONFIG.model)
    assert load_checkpoint(location, model=restored, model_config=CONFIG.model).step == 6
    _assert_same_tensors(model.state_dict(), restored.state_dict())
    here = ray.train.Checkpoint.from_directory(str(local))
    assert checkpoint_location(here, str(local.parent)) == str(local)  # read in place
