"""Optimizers and schedule: LARS against a hand computation, parameter groups, warm-up + cosine."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from clinfo_ray.config import OptimConfig
from clinfo_ray.optim import LARS, WarmupCosine, build_optimizer, parameter_groups


def test_lars_trust_ratio_matches_hand_computation() -> None:
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    w.grad = torch.tensor([[0.6, 0.8]])  # ||g|| = 1
    b.grad = torch.tensor([0.5, 0.5])
    lr, decay, eta = 0.1, 0.01, 0.001
    groups: list[dict[str, Any]] = [
        {"params": [w]},
        {"params": [b], "weight_decay": 0.0, "lars_adapt": False},
    ]
    opt = LARS(
        groups,
        lr=lr,
        momentum=0.9,
        weight_decay=decay,
        trust_coefficient=eta,
        eps=0.0,
    )
    opt.step()
    ratio = eta * 5.0 / (1.0 + decay * 5.0)  # eta ||w|| / (||g|| + wd ||w||)
    update = ratio * (torch.tensor([[0.6, 0.8]]) + decay * torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - lr * update)
    # Excluded parameter: plain SGD step, no decay, no trust ratio.
    torch.testing.assert_close(b.detach(), torch.tensor([1.0, -1.0]) - lr * b.grad)
    # Second step: momentum buffer m = 0.9 m + r u with the new norms.
    w_before = w.detach().clone()
    opt.step()
    ratio2 = eta * w_before.norm() / (1.0 + decay * w_before.norm())
    update2 = 0.9 * update + ratio2 * (w.grad + decay * w_before)
    torch.testing.assert_close(w.detach(), w_before - lr * update2)


def test_lars_zero_weight_falls_back_to_ratio_one() -> None:
    w = nn.Parameter(torch.zeros(2, 2))
    w.grad = torch.ones(2, 2)
    LARS([w], lr=0.5, momentum=0.0, weight_decay=0.1).step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5))


def test_parameter_groups_exclude_bias_and_norm() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    expected = [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}
    assert no_decay["lars_adapt"] is False


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_build_optimizer_groups_and_kind(name: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    cfg = OptimConfig(name=name, lr=0.2, weight_decay=1e-3, warmup_epochs=1, epochs=2)  # type: ignore[arg-type]
    optimizer, _ = build_optimizer(model, cfg, steps_per_epoch=5)
    assert type(optimizer).__name__ == {"sgd": "SGD", "lars": "LARS"}[name]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0]
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_schedule_warmup_end_and_final_values() -> None:
    steps_per_epoch, lr = 10, 0.4
    cfg = OptimConfig(lr=lr, warmup_epochs=2, epochs=10, final_lr_fraction=0.1)
    optimizer, scheduler = build_optimizer(nn.Linear(2, 2), cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(lr / 20)  # first warm-up step: 1/20 of the peak
    assert lrs[19] == pytest.approx(lr)  # last warm-up step reaches the peak
    assert lrs[20] == pytest.approx(lr)  # cosine starts at the peak
    assert max(lrs) == pytest.approx(lr)
    # halfway through the cosine: final + (1 - final) / 2
    assert lrs[60] == pytest.approx(lr * (0.1 + 0.9 * 0.5))
    last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 79 / 80))
    assert lrs[-1] == pytest.approx(lr * last)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr * 0.1)  # after the last step
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))  # monotone decay


def test_schedule_without_warmup_and_bad_arguments() -> None:
    schedule = WarmupCosine(0, 100)
    assert schedule(0) == pytest.approx(1.0) and schedule(100) == pytest.approx(0.0)
    assert schedule(150) == pytest.approx(0.0)  # held after the end
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(10, 5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_optimizer(nn.Linear(2, 2), OptimConfig(), steps_per_epoch=0)


def test_lars_trains_a_tiny_regression() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.3
    model = nn.Linear(4, 1)
    optimizer = LARS(parameter_groups(model, 0.0), lr=0.1, momentum=0.9, trust_coefficient=0.1)
    losses = []
    for _ in range(200):
        loss = ((model(x).squeeze(1) - y) ** 2).mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 1e-3 * losses[0]
