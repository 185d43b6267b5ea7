"""The linear probe: a linear classifier trained on frozen features, scored on the test split.

The protocol of the paper (and SimCLR / MoCo v3): the encoder is frozen, features are
standardised with the train split's per-dimension mean and std, and one ``nn.Linear`` is trained
with minibatch SGD (momentum 0.9, Nesterov, weight decay on the weights only) under a cosine
learning-rate schedule for ``EvalConfig.linear_epochs`` epochs. Reported: top-1 and top-5 on the
test split (top-5 becomes top-C when there are C < 5 classes) and top-1 on the train split.

Rows with a negative label ("no label", -1) are left out of both splits. Runs on the GPU when
one is there; the whole feature matrix sits on the device and minibatches are index slices, so
an epoch costs a few matrix products. Deterministic for a given ``seed`` on a given device.
Pure torch; no Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clinfo_ray.config import EvalConfig

log = logging.getLogger(__name__)


def _labelled(x: np.ndarray, y: np.ndarray, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"{name}: expected features (n, D), labels (n,); got {x.shape}, {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {y.dtype}")
    keep = y >= 0
    if not keep.any():
        raise ValueError(f"{name}: no labelled rows")
    return torch.from_numpy(np.ascontiguousarray(x[keep], dtype=np.float32)), torch.from_numpy(
        y[keep].astype(np.int64)
    )


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    """Fraction of rows whose label is among the k largest logits, for each k (capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (n, kmax)
    hit = top == labels[:, None]  # (n, kmax)
    return [hit[:, : min(k, logits.shape[1])].any(dim=1).float().mean().item() for k in ks]


# Multiply-adds of one step's forward pass below which the CPU probe runs on one thread. Steps
# this small finish before an OpenMP pool wakes: on the shared 2-core machine (load ~10) the
# default 100-epoch probe of 2,000 x 256 features took 9-53 s on 2 threads and 0.7-1.9 s on one.
_SINGLE_THREAD_WORK = 1 << 22


@contextlib.contextmanager
def _cpu_threads(device: torch.device, work: int) -> Iterator[None]:
    """One intra-op thread for small steps on the CPU; torch's setting is restored after."""
    before = torch.get_num_threads()
    if device.type == "cpu" and work < _SINGLE_THREAD_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: EvalConfig, seed: int
) -> tuple[torch.nn.Linear, float]:
    """SGD on standardised features; returns the classifier and the last epoch's mean loss."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, dim = x.shape
    classifier = torch.nn.Linear(dim, num_classes).to(x.device)
    with torch.no_grad():  # MoCo v3's probe init, drawn from our own generator
        classifier.weight.copy_(torch.randn(num_classes, dim, generator=gen) * 0.01)
        classifier.bias.zero_()
    optimizer = torch.optim.SGD(
        [
            {"params": [classifier.weight], "weight_decay": cfg.linear_weight_decay},
            {"params": [classifier.bias], "weight_decay": 0.0},
        ],
        lr=cfg.linear_lr,
        momentum=0.9,
        nesterov=True,
    )
    batch = min(cfg.linear_batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.linear_epochs * steps_per_epoch
    step, epoch_loss = 0, float("nan")
    for _ in range(cfg.linear_epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        losses = torch.zeros((), device=x.device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            for group in optimizer.param_groups:
                group["lr"] = cfg.linear_lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(classifier(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses += loss.detach()  # summed on the device: no sync per step
            step += 1
        epoch_loss = losses.item() / steps_per_epoch
    return classifier, epoch_loss


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cfg: EvalConfig,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a linear classifier on (train_x, train_y), score it on (test_x, test_y).

    train_x: (n_train, D) float; train_y: (n_train,) int, -1 = unlabelled (dropped); likewise
    the test split. Classes are 0..C-1 with C = 1 + the largest label of either split.
    ``device``: default CUDA when available, else CPU.

    Returns {"top1", "top5" (fractions on the test split), "train_top1", "train_loss" (the last
    epoch's mean cross-entropy), "num_classes", "train_rows", "test_rows", "seconds"}.
    """
    started = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    xtr, ytr = _labelled(train_x, train_y, "train")
    xte, yte = _labelled(test_x, test_y, "test")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have {xtr.shape[1]} dims, test {xte.shape[1]}")
    num_classes = int(max(ytr.max().item(), yte.max().item())) + 1
    mean = xtr.mean(dim=0)
    std = xtr.std(dim=0).clamp_min(1e-6)  # constant dimensions stay finite (and zero)
    xtr, xte = ((xtr - mean) / std).to(dev), ((xte - mean) / std).to(dev)
    ytr, yte = ytr.to(dev), yte.to(dev)
    work = min(cfg.linear_batch_size, len(ytr)) * xtr.shape[1] * num_classes
    with _cpu_threads(dev, work):
        classifier, train_loss = _train(xtr, ytr, num_classes, cfg, seed)
        with torch.no_grad():
            top1, top5 = topk_accuracy(classifier(xte), yte, (1, 5))
            (train_top1,) = topk_accuracy(classifier(xtr), ytr, (1,))
    result = {
        "top1": top1,
        "top5": top5,
        "train_top1": train_top1,
        "train_loss": train_loss,
        "num_classes": num_classes,
        "train_rows": len(ytr),
        "test_rows": len(yte),
        "seconds": time.perf_counter() - started,
    }
    log.info("linear probe: top-1 %.4f top-5 %.4f (%.1f s)", top1, top5, result["seconds"])
    return result
