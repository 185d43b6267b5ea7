"""The linear probe: a linear classifier trained on frozen features, then scored on other rows.

The protocol of the paper (and SimCLR / MoCo v3): the encoder is frozen, features are
standardised with the training rows' per-dimension mean and std, and one ``nn.Linear`` is
trained with minibatch SGD (momentum 0.9, Nesterov, weight decay on the weights only) under a
cosine learning-rate schedule for ``EvalConfig.linear_epochs`` epochs.

:func:`train_probe` returns a :class:`Probe`; :meth:`Probe.score` scores any labelled rows with
it (top-1, and top-5, which becomes top-C when there are C < 5 classes), so the one classifier
that was validated is the one that scores the test split. Its classes are 0..C-1 with C = 1 +
the largest label of the *training* rows: what it is trained on alone decides its shape, its
initial weights and its shuffles. A scored row whose label is C or more (a class the training
rows never showed) counts as a miss.

Rows with a negative label ("no label", -1) are left out, of training and of scoring. The whole
feature matrix sits on the device and minibatches are index slices, so an epoch costs a few
matrix products. Deterministic for a given ``seed`` on a given device. Pure torch; no Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

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
    """Fraction of rows whose label is among the k largest logits, for each k (capped at C);
    a label outside 0..C-1 is never among them. Exact: whole hit counts over the row count."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (n, kmax)
    hit = top == labels[:, None]  # (n, kmax)
    cap = logits.shape[1]
    return [int(hit[:, : min(k, cap)].any(dim=1).sum().item()) / len(labels) for k in ks]


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


@dataclass(frozen=True)
class Probe:
    """A trained probe: the training rows' standardisation and the classifier, on ``device``.

    mean, std: (D,) float32; weight: (C, D) float32; bias: (C,) float32. ``train_top1`` and
    ``train_loss`` (the last epoch's mean cross-entropy) are of the labelled training rows.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    train_top1: float
    train_loss: float
    train_rows: int
    seconds: float

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) logits of raw (unstandardised) features x (n, D) on the probe's device."""
        return F.linear((x - self.mean) / self.std, self.weight, self.bias)

    def score(self, x: np.ndarray, y: np.ndarray, name: str = "scored") -> dict[str, float | int]:
        """{"top1", "top5" (fractions), "rows"} over the labelled rows of x (n, D), y (n,) int
        (-1 = not scored); a label >= ``num_classes`` is a miss. ``name`` labels errors."""
        xs, ys = _labelled(x, y, name)
        if xs.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"{name} features have {xs.shape[1]} dims, the probe's {self.weight.shape[1]}"
            )
        work = xs.shape[0] * xs.shape[1] * self.num_classes
        with _cpu_threads(self.device, work), torch.no_grad():
            logits = self.logits(xs.to(self.device))  # (n, C)
            top1, top5 = topk_accuracy(logits, ys.to(self.device), (1, 5))
        return {"top1": top1, "top5": top5, "rows": len(ys)}


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


def train_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    cfg: EvalConfig,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
) -> Probe:
    """Train a linear classifier on (train_x (n, D) float, train_y (n,) int, -1 = unlabelled:
    dropped) with ``cfg.linear_*``; C = 1 + the largest training label. ``device``: where it
    trains and scores; None: CUDA when this process sees it, else the CPU."""
    started = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x, y = _labelled(train_x, train_y, "train")
    num_classes = int(y.max().item()) + 1
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-6)  # constant dimensions stay finite (and zero)
    x, y = ((x - mean) / std).to(dev), y.to(dev)
    work = min(cfg.linear_batch_size, len(y)) * x.shape[1] * num_classes
    with _cpu_threads(dev, work):
        classifier, train_loss = _train(x, y, num_classes, cfg, seed)
        with torch.no_grad():
            (train_top1,) = topk_accuracy(classifier(x), y, (1,))
    probe = Probe(
        mean=mean.to(dev),
        std=std.to(dev),
        weight=classifier.weight.detach(),
        bias=classifier.bias.detach(),
        train_top1=train_top1,
        train_loss=train_loss,
        train_rows=len(y),
        seconds=time.perf_counter() - started,
    )
    log.debug("linear probe: train top-1 %.4f (%.1f s)", train_top1, probe.seconds)
    return probe
