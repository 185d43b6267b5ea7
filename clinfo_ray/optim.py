r"""Optimizers (SGD with momentum, LARS) and the per-step warm-up + cosine learning-rate schedule.

Parameter groups: weights of dimension >= 2 (conv and linear kernels) get weight decay and, under
LARS, the trust-ratio adaptation; parameters of dimension <= 1 (biases, BatchNorm scales and
shifts) get neither, as in SimCLR and BYOL.

LARS (You et al., 2017), as implemented for one adapted parameter w with gradient g:

.. math::

    u = g + \lambda w, \qquad
    r = \eta \, \frac{\lVert w \rVert}{\lVert g \rVert + \lambda \lVert w \rVert}
        \ (r = 1 \text{ when } \lVert w \rVert = 0 \text{ or } \lVert g \rVert = 0), \\
    m \leftarrow \mu m + r u, \qquad w \leftarrow w - \text{lr} \cdot m

with λ the weight decay, η the trust coefficient, μ the momentum. Non-adapted parameters take
the same step with r = 1 and λ = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import LambdaLR

from clinfo_ray.config import OptimConfig


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling over SGD with momentum; see the module docstring.

    Each group may set ``lars_adapt`` (default True): False skips the trust ratio (biases, norm
    parameters). ``weight_decay`` per group as in SGD.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0, trust_coefficient > 0; got "
                f"{lr}, {momentum}, {weight_decay}, {trust_coefficient}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars_adapt": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay, adapt = group["weight_decay"], group["lars_adapt"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                update = grad.add(p, alpha=decay) if decay else grad.clone()
                if adapt:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = (
                        group["trust_coefficient"]
                        * w_norm
                        / (g_norm + decay * w_norm + group["eps"])
                    )
                    # No CPU-GPU sync: the fallback to 1 is chosen on the device.
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                    update.mul_(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: kernels (ndim >= 2) with ``weight_decay``; biases and norm params without.

    The second group also carries ``lars_adapt=False`` (ignored by SGD).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False})
    return groups


class WarmupCosine:
    """LR factor for step s (0-based, one per optimizer step), for ``LambdaLR``.

    Linear warm-up ``(s + 1) / warmup_steps`` reaching 1 at s = warmup_steps - 1, then a cosine
    from 1 (at s = warmup_steps) to ``final_fraction`` (at s = total_steps, held after). A plain
    object (not a lambda) so that LambdaLR's state dict holds its numbers and reloads.
    """

    def __init__(self, warmup_steps: int, total_steps: int, final_fraction: float = 0.0) -> None:
        if not 0 <= warmup_steps <= total_steps or total_steps < 1:
            raise ValueError(
                f"need 0 <= warmup_steps <= total_steps, total_steps >= 1; "
                f"got {warmup_steps}, {total_steps}"
            )
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_fraction = final_fraction

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return self.final_fraction + (1.0 - self.final_fraction) * cosine


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, steps_per_epoch: int
) -> tuple[Optimizer, LambdaLR]:
    """The optimizer over ``model``'s trainable parameters and its per-step LambdaLR.

    Call ``scheduler.step()`` after every ``optimizer.step()``. ``model`` may be DDP-wrapped or
    hold extra modules (e.g. the ce-clusters classifier in an ``nn.ModuleDict``).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    groups = parameter_groups(model, cfg.weight_decay)
    optimizer: Optimizer
    if cfg.name == "lars":
        optimizer = LARS(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.trust_coefficient,
        )
    else:
        optimizer = SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    schedule = WarmupCosine(warmup, total, cfg.final_lr_fraction)
    return optimizer, LambdaLR(optimizer, schedule)
