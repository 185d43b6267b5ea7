"""Gradient caching (data.micro_batch_size): the gradients of one graph over the same
micro-batches, in float64, on one process and on 2 gloo ranks, for every loss.method; dropout
replayed; BatchNorm running statistics updated once per micro-batch."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from clinfo_ray.checkpointing import read_checkpoint_state, save_checkpoint
from clinfo_ray.config import ConfigError, TrainConfig, apply_overrides
from clinfo_ray.optim import build_optimizer
from clinfo_ray.training.grad_cache import cached_backward
from clinfo_ray.training.objective import backward_batch, batch_loss, train_step
from tests.gloo import finish_rank, run_ranks
from tests.micro_batch_reference import (
    METHODS,
    batch_of,
    buffers,
    config,
    gradients,
    module_of,
    one_graph_backward,
)

BATCH, MICRO = 8, 2
EXACT = {"rtol": 1e-9, "atol": 1e-12}  # float64: far inside the 1e-6 asked


def _assert_all_close(got: dict, want: dict, **tol: float) -> None:
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, msg=name, **tol)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_equal_one_graph_over_the_micro_batches(method: str) -> None:
    cfg = config(method, BATCH, MICRO)
    batch, prototypes = batch_of(cfg, BATCH)
    cached, reference = module_of(cfg), module_of(cfg)
    torch.manual_seed(7)  # the dropout masks
    loss = backward_batch(cached, cfg, batch, prototypes)
    rng_after = torch.get_rng_state()
    torch.manual_seed(7)
    want = one_graph_backward(reference, cfg, batch, prototypes, MICRO)
    torch.testing.assert_close(loss, want, **EXACT)
    grads = gradients(cached)
    assert len(grads) == len(gradients(reference)) > 10  # encoder, head or classifier
    _assert_all_close(grads, gradients(reference), **EXACT)
    # running statistics as the one graph leaves them: each micro-batch counted once
    _assert_all_close(buffers(cached), buffers(reference), rtol=0, atol=0)
    tracked = [  # the encoder's (ce-clusters never runs the head)
        b for n, b in cached.model.encoder.named_buffers() if n.endswith("num_batches_tracked")
    ]
    assert tracked and all(int(b) == BATCH // MICRO for b in tracked)
    assert torch.equal(rng_after, torch.get_rng_state())  # one pass's draws, replayed not redrawn


def test_the_check_sees_dropout_and_batch_norm() -> None:
    """The parity above is not vacuous: other dropout masks, or BatchNorm over the rank's whole
    batch instead of each micro-batch, give other gradients."""
    cfg = config("simclr", BATCH, MICRO)
    batch, _ = batch_of(cfg, BATCH)
    runs = []
    for seed, micro in ((7, MICRO), (8, MICRO), (7, BATCH)):
        module = module_of(cfg)
        torch.manual_seed(seed)
        one_graph_backward(module, cfg, batch, None, micro)
        runs.append(gradients(module))
    for other in runs[1:]:
        assert max((other[n] - g).abs().max().item() for n, g in runs[0].items()) > 1e-4


def test_without_micro_batches_the_step_is_one_pass() -> None:
    """micro_batch_size None (or the whole batch) is the batch in one pass, as before."""
    for micro in (None, BATCH):
        cfg = config("clinfonce", BATCH, micro)
        batch, _ = batch_of(cfg, BATCH)
        got, want = module_of(cfg), module_of(cfg)
        torch.manual_seed(3)
        loss = backward_batch(got, cfg, batch)
        torch.manual_seed(3)
        torch.testing.assert_close(loss, one_graph_backward(want, cfg, batch, None, BATCH))
        _assert_all_close(gradients(got), gradients(want), rtol=0, atol=0)


def test_bf16_autocast_caches_the_low_precision_gradient() -> None:
    """optim.amp (bf16 autocast; on the CPU here): both passes under the same autocast."""
    cfg = apply_overrides(config("simclr", BATCH, MICRO), {"optim.amp": True, "run.device": "gpu"})
    assert cfg.autocast_bf16
    batch, _ = batch_of(cfg, BATCH, dtype=torch.float32)
    cached, reference = module_of(cfg, torch.float32), module_of(cfg, torch.float32)
    torch.manual_seed(7)
    loss = backward_batch(cached, cfg, batch)
    torch.manual_seed(7)
    want = one_graph_backward(reference, cfg, batch, None, MICRO)
    torch.testing.assert_close(loss, want, rtol=1e-2, atol=1e-3)
    for name, g in gradients(reference).items():
        err = (gradients(cached)[name] - g).abs().max() / g.abs().max().clamp(min=1e-12)
        assert err < 2e-2, name


def test_train_step_with_micro_batches_steps_like_the_one_graph() -> None:
    """A whole optimiser step (SGD with momentum and weight decay): the same parameters."""
    cfg = config("supcon", BATCH, MICRO)
    batch, _ = batch_of(cfg, BATCH)
    modules = [module_of(cfg), module_of(cfg)]
    optims = [build_optimizer(m, cfg.optim, steps_per_epoch=4) for m in modules]
    torch.manual_seed(5)
    loss = train_step(modules[0], cfg, batch, *optims[0])
    torch.manual_seed(5)
    optimizer, scheduler = optims[1]
    optimizer.zero_grad(set_to_none=True)
    want = one_graph_backward(modules[1], cfg, batch, None, MICRO)
    optimizer.step()
    scheduler.step()
    assert loss == pytest.approx(float(want), rel=1e-12)
    params = [dict(m.named_parameters()) for m in modules]
    _assert_all_close(params[0], params[1], **EXACT)


def test_uneven_last_micro_batch() -> None:
    """cached_backward itself takes any micro size; the last micro-batch may be smaller."""
    cfg = config("simclr", BATCH, None)
    batch, _ = batch_of(cfg, BATCH)
    cached, reference = module_of(cfg), module_of(cfg)
    torch.manual_seed(2)
    cached_backward(cached, batch["views"], 3, functools.partial(batch_loss, cfg, batch))
    torch.manual_seed(2)
    one_graph_backward(reference, cfg, batch, None, 3)
    _assert_all_close(gradients(cached), gradients(reference), **EXACT)


@pytest.mark.parametrize(
    ("micro", "ok"), [(None, True), (1, True), (4, True), (8, True), (0, False), (3, False)]
)
def test_micro_batch_size_must_divide_the_worker_batch(micro: int | None, ok: bool) -> None:
    raw = {"data": {"batch_size_per_worker": 8, "micro_batch_size": micro}}
    if ok:
        cfg = TrainConfig.from_dict(raw)
        assert cfg.data.micro_batch_size == micro
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        return
    with pytest.raises(ConfigError, match=r"data\.micro_batch_size.*divisor.*got") as err:
        TrainConfig.from_dict(raw)
    assert err.value.key == "data.micro_batch_size"


def test_checkpoint_keeps_the_setting(tmp_path: Path) -> None:
    """A resumed run reads its config from the checkpoint: micro-batches stay on. The step
    keeps no state of its own between steps (the RNG ends where one pass leaves it)."""
    cfg = config("simclr", BATCH, MICRO)
    save_checkpoint(tmp_path, model=module_of(cfg).model, epoch=1, step=4, config=cfg)
    assert read_checkpoint_state(tmp_path).train_config().data.micro_batch_size == MICRO


# ---- 2 gloo ranks: DDP with gradient caching against one graph per rank, all-reduced ----

WORLD = 2


def _rank_worker(rank_: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks on a small machine: no thread oversubscription
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    results: dict[str, dict[str, dict]] = {}
    for method in METHODS:
        cfg = config(method, BATCH, MICRO)
        whole, prototypes = batch_of(cfg, WORLD * BATCH)  # the global batch, equal on ranks
        mine = slice(rank_ * BATCH, (rank_ + 1) * BATCH)
        batch = {key: value[mine] for key, value in whole.items()}
        reference = module_of(cfg)
        cached = DistributedDataParallel(copy.deepcopy(reference), broadcast_buffers=False)
        torch.manual_seed(100 + rank_)  # each rank's own dropout masks
        loss = backward_batch(cached, cfg, batch, prototypes)
        torch.manual_seed(100 + rank_)
        want = one_graph_backward(reference, cfg, batch, prototypes, MICRO)
        for p in reference.parameters():  # what DDP does: the mean over ranks
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= WORLD
        results[method] = {
            "loss": {"got": loss, "want": want},
            "grads": {"got": gradients(cached.module), "want": gradients(reference)},
            "buffers": {"got": buffers(cached.module), "want": buffers(reference)},
        }
    torch.save(results, Path(out) / f"rank{rank_}.pt")
    finish_rank()


def test_two_gloo_ranks_equal_one_graph(tmp_path: Path) -> None:
    ranks = run_ranks(_rank_worker, tmp_path, world=WORLD)
    for method in METHODS:
        for r in ranks:
            loss, grads, bufs = (r[method][key] for key in ("loss", "grads", "buffers"))
            torch.testing.assert_close(loss["got"], loss["want"], **EXACT)
            assert len(grads["want"]) > 10, method
            _assert_all_close(grads["got"], grads["want"], **EXACT)
            _assert_all_close(bufs["got"], bufs["want"], rtol=0, atol=0)
        # DDP: both ranks hold the same (all-reduced) gradients
        _assert_all_close(ranks[0][method]["grads"]["got"], ranks[1][method]["grads"]["got"])
