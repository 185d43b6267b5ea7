"""Gradient caching (``data.micro_batch_size``): one loss over the whole global batch, with the
encoder's activations held for one micro-batch at a time (Gao et al. 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup").

A rank's batch x is cut into micro-batches x_1..x_m (in order, ``micro_batch_size`` rows each)
and the module f maps each to its outputs o_i = f(x_i) (a NamedTuple of tensors: projections
(b, V, D), or ce-clusters' logits). Then

1. **no graph**: o_i = f(x_i) for every i under ``torch.no_grad``; only the outputs are kept
   (O(B·V·D) for the rank's B images, no activations);
2. **the loss once**: L = loss(cat(o_1..o_m)) over leaf tensors that require grad; the loss
   gathers every rank's rows itself (``gather_with_grad``: its backward sums over ranks), so
   ``L.backward()`` gives g_i = ∂L/∂o_i for this rank's rows, on every rank;
3. **each micro-batch again, with its graph**: o_i = f(x_i) and
   ``torch.autograd.backward(o_i, g_i)``; the graph of x_i is freed before x_{i+1} is built,
   so peak activation memory is one micro-batch's.

By the chain rule dL/dθ = Σ_i (∂o_i/∂θ)ᵀ g_i: the parameter gradients equal those of **one
graph over the same micro-batches** (o_i = f(x_i) for each i with gradients, then
loss(cat(o_i)).backward()), up to the order of floating-point sums (tests/test_micro_batch.py:
1e-6 in float64, on one process and on 2 gloo ranks, for every ``loss.method``). "The same
micro-batches" is the semantics: BatchNorm normalises each micro-batch with its own statistics,
as DDP's per-device BatchNorm normalises each device's batch, not the rank's whole batch, so a
model with BatchNorm computes a different function with ``micro_batch_size`` than without.

Choices:

* **Randomness replayed**: before each micro-batch's pass 1 the CPU RNG state (and the CUDA
  one of the inputs' device) is saved; it is restored before that micro-batch's pass 3, so
  dropout draws the same masks in both passes. After the step the RNG is where one pass over
  the micro-batches leaves it. (The views' random augmentation happened before the step: both
  passes read the same tensors.)
* **Buffers updated once**: every buffer of the module (BatchNorm's running mean and variance,
  ``num_batches_tracked``) is saved before pass 1 and restored after it, so only pass 3
  updates them: once per micro-batch, as the one graph does.
* **DDP**: the gradient all-reduce is deferred (``no_sync``) to the last micro-batch's
  backward, which reduces the summed gradient once a step.
* **Mixed precision**: passes 1 and 3 and the loss run under the same ``precision`` context
  (``optim.amp``: bf16 autocast), so pass 3 recomputes the same low-precision outputs.
  bf16 needs no loss scaling, and the project has no GradScaler; with one, the scaled loss's
  backward in step 2 would carry the scale into every g_i, and the usual unscale before the
  optimizer step would apply to the summed parameter gradients unchanged.
* Outputs the loss does not read (the encoder features) get no gradient and are not
  back-propagated in pass 3.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clinfo_ray.distributed import gradient_sync_deferred

Precision = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class RngState:
    """The RNG state a forward on ``device`` draws from: the CPU generator's, and the CUDA
    generator's of ``device`` when it is a CUDA device."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def concat_outputs(outputs: Sequence[Any]) -> Any:
    """The micro-batches' outputs (NamedTuples of tensors with the batch first, or None) as one
    NamedTuple of the whole batch: each field concatenated along dim 0."""
    fields = zip(*outputs, strict=True)
    return outputs[0]._make(None if parts[0] is None else torch.cat(parts) for parts in fields)


def cached_backward(
    module: nn.Module,
    inputs: torch.Tensor,
    micro_batch_size: int,
    loss_of: Callable[[Any], torch.Tensor],
    precision: Precision = contextlib.nullcontext,
) -> torch.Tensor:
    """Accumulate into the parameters' ``.grad`` the gradient of ``loss_of(module(inputs))``,
    computed as the module docstring says; returns the loss (detached).

    ``inputs``: (B, ...) this rank's batch, cut along dim 0 into micro-batches of
    ``micro_batch_size`` rows (the last may be smaller). ``module(micro_batch)``: a NamedTuple
    of (b, ...) tensors or None (``TrainModule``: ``TrainOutput``). ``loss_of``: the loss of the
    whole batch's outputs (same NamedTuple, fields concatenated in batch order); called once,
    on every rank. ``precision``: the context both passes and the loss run in (autocast).
    """
    chunks = inputs.split(micro_batch_size)
    buffers = [b.detach().clone() for b in module.buffers()]
    states, outputs = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState.capture(chunk.device))
            with precision():
                outputs.append(module(chunk))
        for buffer, saved in zip(module.buffers(), buffers, strict=True):
            buffer.copy_(saved)  # pass 3 updates the running statistics, once per micro-batch
    whole = concat_outputs(outputs)  # (B, ...) fields, copies: the micro-batches' go
    del outputs
    cached = whole._make(None if o is None else o.requires_grad_() for o in whole)
    with precision():
        loss = loss_of(cached)
    loss.backward()  # on every rank: the loss's gather sums its gradient over ranks here
    sizes = [chunk.shape[0] for chunk in chunks]
    grads = [None if o is None or o.grad is None else o.grad.split(sizes) for o in cached]
    for i, chunk in enumerate(chunks):
        states[i].restore()
        with gradient_sync_deferred(module, defer=i < len(chunks) - 1):
            with precision():
                out = module(chunk)
            pairs = [(o, g[i]) for o, g in zip(out, grads, strict=True) if g is not None]
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return loss.detach()
