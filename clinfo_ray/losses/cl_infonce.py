r"""Clustering InfoNCE (Cl-InfoNCE), Tsai et al., ICLR 2022, exact and memory-lean.

The function, as implemented
----------------------------
``features`` holds V augmented views of B images: (B, V, D). Each view is normalised to unit
length, z_a = x_a / ||x_a||. Anchors are all N = B·V views (all W·B·V views of the global batch
when ``torch.distributed`` runs with world size W; each rank owns its own views as anchors and
contrasts them against every rank's views). With c(a) the cluster id of the image of view a:

.. math::

    s_{ab} = \langle z_a, z_b \rangle / \tau
    A(a) = \{ b \ne a \}                   \quad\text{(every other view, any cluster)}
    P(a) = \{ p \in A(a) : c(p) = c(a) \}   \quad\text{(a's other views are always in it)}
    \ell_a = -\frac{1}{|P(a)|} \sum_{p \in P(a)}
             \Big[ s_{ap} - \log \sum_{k \in A(a)} e^{s_{ak}} \Big]
    L = \frac{\tau}{\tau_b} \cdot \operatorname{mean}_{a : |P(a)| > 0} \ell_a

Choices inside it:

* positives are averaged *outside* the log (SupCon's L_out); the anchor's own view is never a
  candidate, its other views are always positives;
* anchors without positives (V = 1 and a one-image cluster) are left out of the mean; when no
  anchor has a positive the loss is 0 (with a zero gradient), never NaN;
* τ_b (``base_temperature``) defaults to τ, so the factor is 1. The authors' code used
  τ/0.07 through a forgotten default: pass ``base_temperature=0.07`` to get it;
* all cluster ids equal to the image index gives SimCLR's NT-Xent; class labels give SupCon.

How it stays lean
-----------------
No N×N matrix is ever held. The positive term is a dot product with per-cluster sums of
embeddings, Σ_{p∈P(a)} s_ap = <z_a, S_{c(a)} − z_a>/τ with S_c = Σ_{c(j)=c} z_j: O(K·D).
The log-sum-exp over A(a) runs in row chunks in a custom autograd function that keeps only the
N log-sum-exp values and recomputes each chunk's logits in backward: peak extra memory
O(N·D + chunk·N). Work: one N×N×D product forward, three backward. Half-precision inputs
(and autocast regions) are computed in float32; float64 inputs stay float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clinfo_ray.distributed import gather_no_grad, gather_with_grad, world_size

# Elements of one chunk of logits (chunk_rows × N), the only buffer of that size alive at a time:
# 2**24 float32 = 64 MiB on the CPU; 2**26 = 256 MiB on a GPU, where bigger products run faster.
_CHUNK_ELEMENTS = {"cpu": 2**24, "cuda": 2**26}


def default_chunk_rows(num_candidates: int, device_type: str = "cpu") -> int:
    """Rows of logits per chunk so that one chunk holds about 2**24 (CPU) or 2**26 elements."""
    budget = _CHUNK_ELEMENTS.get(device_type, _CHUNK_ELEMENTS["cpu"])
    return max(1, min(num_candidates, budget // max(num_candidates, 1)))


def _logits_chunk(
    anchors: torch.Tensor, candidates: torch.Tensor, first: int, inv_tau: float
) -> torch.Tensor:
    """Scaled similarities of ``anchors`` (global rows first..first+c) with every candidate,
    the anchor's own column set to -inf."""
    logits = (anchors * inv_tau) @ candidates.T  # (c, N); 1/τ on the (c, D) side: no N² pass
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, rows + first] = float("-inf")
    return logits


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp that overwrites ``logits``: no second (c, N) buffer."""
    row_max = logits.amax(dim=1, keepdim=True)  # (c, 1)
    # A row of only -inf (an anchor with no candidate) keeps lse = -inf without NaN.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    return logits.sub_(row_max).exp_().sum(dim=1).log_().add_(row_max.squeeze(1))


class _ChunkedLogSumExp(torch.autograd.Function):
    """lse_a = log Σ_{k≠a} exp(<anchor_a, cand_k>·inv_tau), with anchor a = candidate row offset+a.

    Forward keeps only (n,) results; backward recomputes each chunk of logits.
    """

    @staticmethod
    def forward(
        ctx,
        anchors: torch.Tensor,
        candidates: torch.Tensor,
        offset: int,
        inv_tau: float,
        chunk: int,
    ) -> torch.Tensor:
        lse = anchors.new_empty(anchors.shape[0])
        for start in range(0, anchors.shape[0], chunk):
            block = anchors[start : start + chunk]
            logits = _logits_chunk(block, candidates, offset + start, inv_tau)
            lse[start : start + chunk] = _logsumexp_(logits)
        ctx.save_for_backward(anchors, candidates, lse)
        ctx.offset, ctx.inv_tau, ctx.chunk = offset, inv_tau, chunk
        return lse

    @staticmethod
    def backward(ctx, grad_lse: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        anchors, candidates, lse = ctx.saved_tensors
        # An anchor with no candidate (N = 1) has lse = -inf and no gradient; keep exp() finite.
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
        grad_anchors = torch.zeros_like(anchors)
        grad_candidates = torch.zeros_like(candidates)
        for start in range(0, anchors.shape[0], ctx.chunk):
            block = anchors[start : start + ctx.chunk]
            weights = _logits_chunk(block, candidates, ctx.offset + start, ctx.inv_tau)
            # softmax over candidates, times the upstream gradient and 1/τ: (c, N)
            weights.sub_(lse[start : start + ctx.chunk, None]).exp_()
            weights.mul_(grad_lse[start : start + ctx.chunk, None] * ctx.inv_tau)
            grad_anchors[start : start + ctx.chunk] = weights @ candidates
            grad_candidates.addmm_(weights.T, block)
        return grad_anchors, grad_candidates, None, None, None


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length, safe for huge and tiny norms (pre-scaled by the max |x|)."""
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return F.normalize(x / scale, dim=-1, eps=torch.finfo(x.dtype).tiny)


def _check_inputs(features: torch.Tensor, cluster_ids: torch.Tensor, temperature: float) -> None:
    if features.dim() != 3:
        raise ValueError(
            f"features must be (B, V, D) = (images, views, dim); got shape {tuple(features.shape)}"
        )
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point; got {features.dtype}")
    if cluster_ids.shape != features.shape[:1]:
        raise ValueError(
            f"cluster_ids must be (B,) = ({features.shape[0]},) to match features "
            f"{tuple(features.shape)}; got shape {tuple(cluster_ids.shape)}"
        )
    if (
        cluster_ids.is_floating_point()
        or cluster_ids.is_complex()
        or cluster_ids.dtype == torch.bool
    ):
        raise TypeError(f"cluster_ids must be an integer tensor; got {cluster_ids.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")


def cl_infonce(
    features: torch.Tensor,
    cluster_ids: torch.Tensor,
    temperature: float,
    base_temperature: float | None = None,
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Cl-InfoNCE loss over the (global) batch; see the module docstring for the formula.

    Args:
        features: (B, V, D) float, any scale: V augmented views of B images.
        cluster_ids: (B,) int64, the cluster of each image (any integers, need not be contiguous).
        temperature: τ > 0.
        base_temperature: τ_b; the loss is scaled by τ/τ_b. None means τ (factor 1).
        chunk_rows: anchor rows per chunk of logits; None picks 2**24 (CPU) or 2**26 (GPU)
            logits a chunk.

    Returns:
        0-d tensor (float32, or float64 for float64 features). Under torch.distributed with W
        ranks each rank returns its share scaled so that the mean over ranks equals the
        single-process loss over the concatenated batch, and DDP's gradient averaging yields
        that loss's gradient.
    """
    _check_inputs(features, cluster_ids, temperature)
    if base_temperature is not None and not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0; got {base_temperature}")
    compute_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=features.device.type, enabled=False):
        num_images, num_views, _ = features.shape
        z = _unit_rows(features.to(compute_dtype)).reshape(num_images * num_views, -1)  # (n, D)
        ids = cluster_ids.to(torch.int64).repeat_interleave(num_views)  # (n,) row b*V+v
        z_all, offset = gather_with_grad(z)  # (N, D)
        ids_all = gather_no_grad(ids.to(z.device))  # (N,)
        inv_tau = 1.0 / float(temperature)

        # Positive term from per-cluster sums of embeddings: O(K·D), never N×N.
        _, cluster_of = torch.unique(ids_all, return_inverse=True)  # (N,) in 0..K-1
        cluster_sums = z_all.new_zeros(int(cluster_of.max()) + 1, z_all.shape[1])
        cluster_sums = cluster_sums.index_add(0, cluster_of, z_all)  # (K, D)
        counts = torch.bincount(cluster_of)  # (K,)
        mine = cluster_of[offset : offset + z.shape[0]]
        num_pos = (counts[mine] - 1).to(z.dtype)  # (n,) |P(a)|
        pos_sum = ((z * cluster_sums[mine]).sum(1) - (z * z).sum(1)) * inv_tau  # Σ_p s_ap

        chunk = chunk_rows or default_chunk_rows(z_all.shape[0], z_all.device.type)
        lse = _ChunkedLogSumExp.apply(z, z_all, offset, inv_tau, chunk)  # (n,)

        has_pos = num_pos > 0
        per_anchor = lse - pos_sum / num_pos.clamp_min(1)
        per_anchor = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor))
        # Valid anchors of the whole global batch: each rank's share is scaled by W / N_valid
        # so that the mean over ranks is the single-process mean.
        num_valid = int((counts[cluster_of] > 1).sum())  # CPU-GPU sync point
        scale = float(temperature) / float(base_temperature or temperature)
        return per_anchor.sum() * (scale * world_size() / max(num_valid, 1))


class ClInfoNCELoss(nn.Module):
    """``nn.Module`` form of :func:`cl_infonce`: ``loss = ClInfoNCELoss(0.1)(features, ids)``."""

    def __init__(
        self,
        temperature: float = 0.1,
        base_temperature: float | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.chunk_rows = chunk_rows

    def forward(self, features: torch.Tensor, cluster_ids: torch.Tensor) -> torch.Tensor:
        return cl_infonce(
            features,
            cluster_ids,
            self.temperature,
            self.base_temperature,
            chunk_rows=self.chunk_rows,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"
