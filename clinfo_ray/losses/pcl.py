r"""Prototypical Contrastive Learning (PCL), Li et al., ICLR 2021: InfoNCE over instances plus
ProtoNCE over k-means prototypes at M granularities.

The function, as implemented
----------------------------
``features`` holds V augmented views of B images: (B, V, D); each view a is normalised,
z_a = x_a / ||x_a||. For each granularity m = 1..M a spherical k-means of the model's own
embeddings of the whole train split (redone every ``clusters.recluster_every`` epochs) gives K_m
unit-length prototypes c_{m,j}, a concentration φ_{m,j} > 0 for each, and the cluster c_m(a) of
the image of view a:

.. math::

    \ell^m_a = -\log \frac{\exp(\langle z_a, c_{m,c_m(a)} \rangle / φ_{m,c_m(a)})}
                          {\sum_{j=1}^{K_m} \exp(\langle z_a, c_{m,j} \rangle / φ_{m,j})}
    L_{proto} = \frac{1}{M} \sum_{m=1}^{M} \frac{1}{B V} \sum_a \ell^m_a
    L = L_{InfoNCE} + w \cdot L_{proto}

L_InfoNCE is :func:`~clinfo_ray.losses.cl_infonce.cl_infonce` with every image its own cluster:
what ``simclr`` trains (NT-Xent over the global batch, gathered over ranks, times τ/τ_b). w is
``loss.proto_weight``: 1 in the paper.

Choices inside it:

* every prototype of a granularity is a candidate. The paper samples r negative prototypes per
  anchor; with K_m up to a few thousand the full softmax costs one (B·V, K_m) product, small
  next to the instance term's (B·V, W·B·V), and it is exact (no sampling noise);
* every view is an anchor, its image's cluster its one positive prototype; the loss averages
  the anchors, then the granularities (the paper's 1/M);
* one network, no momentum encoder: the paper takes the prototypes and the instance negatives
  from a MoCo momentum encoder and its queue. Here the prototypes come from the model's own
  embeddings at the last re-clustering (as ``clinfonce-kmeans`` does) and the instance term's
  negatives are the global batch;
* prototypes and concentrations are constants: no gradient reaches them;
* before the first k-means (``clusters.warmup_epochs``) there are no prototypes: L = L_InfoNCE;
* each rank averages ProtoNCE over its own anchors, no gather: with equal batches on every rank
  (``drop_last``) the mean over ranks is the mean over the global batch, and DDP's gradient
  averaging gives its gradient;
* computed in float32 under autocast and for half inputs; float64 inputs stay float64.

Concentration (the paper's eq. 12)
----------------------------------
For cluster j with n_j members z (unit-length embeddings) and their mean c̄_j (not normalised):

.. math::

    φ_j = \frac{\sum_{z \in j} \lVert z - \bar c_j \rVert_2}{n_j \log(n_j + α)}, \quad α = 10

A loose cluster gets a large φ (a soft, high-temperature target), a tight one a small φ; the
log keeps small clusters from getting a tiny φ. As the authors' code does: a cluster of one
member (no spread to measure) takes the largest φ of the others; φ is then clipped to its 10th
and 90th percentiles (numpy's linear interpolation) and scaled so that mean(φ) = τ
(``loss.temperature``). Guard the paper lacks: a φ still 0 after clipping (clusters of one
repeated image) takes the smallest positive φ, or all φ are τ when none is positive.

The prototype c_j = c̄_j / ||c̄_j||: one centroid update of spherical k-means under the final
assignment, so every prototype has members and is the mean its φ is measured around.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clinfo_ray.losses.cl_infonce import ClInfoNCELoss, cl_infonce

ALPHA = 10.0  # α of the concentration: smooths φ of small clusters
PERCENTILES = (10.0, 90.0)  # φ is clipped to these percentiles of itself


@dataclass(frozen=True)
class Prototypes:
    """The prototypes of M granularities, on one device.

    centroids: M tensors (K_m, D) float, unit rows. concentrations: M tensors (K_m,) float > 0.
    """

    centroids: tuple[torch.Tensor, ...]
    concentrations: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if not self.centroids or len(self.centroids) != len(self.concentrations):
            raise ValueError(
                f"need M >= 1 centroid matrices and as many concentration vectors; got "
                f"{len(self.centroids)} and {len(self.concentrations)}"
            )
        dims = {c.shape[1] if c.dim() == 2 else -1 for c in self.centroids}
        for c, phi in zip(self.centroids, self.concentrations, strict=True):
            if c.dim() != 2 or len(dims) != 1 or phi.shape != c.shape[:1]:
                raise ValueError(
                    "centroids must be (K_m, D) with one D, concentrations (K_m,); got "
                    f"{[tuple(c.shape) for c in self.centroids]} and "
                    f"{[tuple(p.shape) for p in self.concentrations]}"
                )

    @property
    def sizes(self) -> tuple[int, ...]:
        """K_m of each granularity."""
        return tuple(int(c.shape[0]) for c in self.centroids)

    def to(self, device: torch.device | str) -> Prototypes:
        return Prototypes(
            tuple(c.to(device) for c in self.centroids),
            tuple(p.to(device) for p in self.concentrations),
        )


def proto_nce(
    features: torch.Tensor, cluster_ids: torch.Tensor, prototypes: Prototypes
) -> torch.Tensor:
    """ProtoNCE, L_proto of the module docstring, over this rank's anchors.

    Args:
        features: (B, V, D) float, any scale.
        cluster_ids: (B, M) int64; column m is each image's cluster at granularity m, in
            0..K_m-1 (not checked: a check would cost a CPU-GPU sync a step).
        prototypes: M granularities of (K_m, D) centroids and (K_m,) concentrations.

    Returns:
        0-d tensor, float32 (float64 for float64 features).
    """
    num_levels = len(prototypes.centroids)
    if features.dim() != 3 or not features.is_floating_point():
        raise ValueError(f"features must be float (B, V, D); got {tuple(features.shape)}")
    if cluster_ids.shape != (features.shape[0], num_levels):
        raise ValueError(
            f"cluster_ids must be (B, M) = ({features.shape[0]}, {num_levels}); got "
            f"{tuple(cluster_ids.shape)}"
        )
    if prototypes.centroids[0].shape[1] != features.shape[2]:
        raise ValueError(
            f"prototypes have {prototypes.centroids[0].shape[1]} dims, features {features.shape[2]}"
        )
    compute_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=features.device.type, enabled=False):
        num_images, num_views, dim = features.shape
        z = F.normalize(features.to(compute_dtype), dim=-1).reshape(num_images * num_views, dim)
        ids = cluster_ids.to(z.device, torch.int64).repeat_interleave(num_views, dim=0)  # (n, M)
        terms = []
        for m, (centroids, phi) in enumerate(
            zip(prototypes.centroids, prototypes.concentrations, strict=True)
        ):
            # 1/φ on the (K, D) side: no extra (n, K) pass
            scaled = centroids.to(z) / phi.to(z)[:, None]  # (K_m, D)
            logits = z @ scaled.T  # (n, K_m)
            terms.append(F.cross_entropy(logits, ids[:, m]))
        return torch.stack(terms).mean()


def pcl_loss(
    features: torch.Tensor,
    index: torch.Tensor,
    temperature: float,
    *,
    prototypes: Prototypes | None = None,
    cluster_ids: torch.Tensor | None = None,
    proto_weight: float = 1.0,
    base_temperature: float | None = None,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """PCL's loss L = L_InfoNCE + w · L_proto (module docstring).

    Args:
        features: (B, V, D) float, any scale: V augmented views of B images.
        index: (B,) int64, each image's row in its split: unique over the global batch, the
            instance term's cluster ids.
        temperature: τ of the instance term (τ > 0).
        prototypes: the M granularities' prototypes; None before the first k-means, when the
            loss is the instance term alone (``simclr``'s loss).
        cluster_ids: (B, M) int64 clusters of each image; given exactly when ``prototypes`` is.
        proto_weight: w >= 0.
        base_temperature: τ_b of the instance term (scaled by τ/τ_b); None means τ.
        chunk_rows: the instance term's rows per chunk of logits (see ``cl_infonce``).

    Returns:
        0-d tensor, float32 (float64 for float64 features).
    """
    if (prototypes is None) != (cluster_ids is None):
        raise ValueError("prototypes and cluster_ids come together: give both or neither")
    if not proto_weight >= 0:
        raise ValueError(f"proto_weight must be >= 0; got {proto_weight}")
    instance = cl_infonce(features, index, temperature, base_temperature, chunk_rows=chunk_rows)
    if prototypes is None or cluster_ids is None:
        return instance
    return instance + proto_weight * proto_nce(features, cluster_ids, prototypes)


class PCLLoss(ClInfoNCELoss):
    """``nn.Module`` form of :func:`pcl_loss`:
    ``loss = PCLLoss(0.1)(features, index, cluster_ids, prototypes)``."""

    def __init__(
        self,
        temperature: float = 0.1,
        proto_weight: float = 1.0,
        base_temperature: float | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        super().__init__(temperature, base_temperature, chunk_rows)
        self.proto_weight = proto_weight

    def forward(  # type: ignore[override]
        self,
        features: torch.Tensor,
        index: torch.Tensor,
        cluster_ids: torch.Tensor | None = None,
        prototypes: Prototypes | None = None,
    ) -> torch.Tensor:
        return pcl_loss(
            features,
            index,
            self.temperature,
            prototypes=prototypes,
            cluster_ids=cluster_ids,
            proto_weight=self.proto_weight,
            base_temperature=self.base_temperature,
            chunk_rows=self.chunk_rows,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, proto_weight={self.proto_weight}"


def _cluster_means(
    embeddings: np.ndarray, assignment: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 embeddings (n, D), means c̄ (K, D) float64, member counts (K,) int64)."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(assignment)
    if x.ndim != 2 or labels.shape != x.shape[:1] or x.shape[0] == 0:
        raise ValueError(
            f"need embeddings (n, D) and an assignment (n,), n >= 1; got {x.shape} and "
            f"{labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"the assignment must hold integer ids >= 0; got {labels.dtype}")
    counts = np.bincount(labels)  # (K,)
    if (counts == 0).any():
        raise ValueError(
            f"cluster ids must be contiguous 0..K-1; {int(np.argmin(counts))} has no member"
        )
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(x[order], starts, axis=0)  # (K, D)
    return x, sums / counts[:, None], counts


def concentration(
    embeddings: np.ndarray,
    assignment: np.ndarray,
    temperature: float,
    *,
    alpha: float = ALPHA,
    percentiles: Sequence[float] = PERCENTILES,
) -> np.ndarray:
    """φ (K,) float64 of each cluster (module docstring: spread, singletons, clip, rescale).

    Args:
        embeddings: (n, D) float, the unit-length embeddings that were clustered.
        assignment: (n,) int, cluster ids 0..K-1, every id with a member.
        temperature: τ > 0, the mean of the result.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    x, means, counts = _cluster_means(embeddings, assignment)
    labels = np.asarray(assignment)
    distance = np.linalg.norm(x - means[labels], axis=1)  # (n,) ||z - c̄_j||
    spread = np.bincount(labels, weights=distance, minlength=counts.size)  # (K,)
    phi = np.zeros(counts.size)
    many = counts > 1
    phi[many] = spread[many] / (counts[many] * np.log(counts[many] + alpha))
    phi[~many] = phi[many].max() if many.any() else 1.0
    low, high = np.percentile(phi, list(percentiles))
    phi = np.clip(phi, low, high)
    positive = phi > 0
    phi = np.where(positive, phi, phi[positive].min()) if positive.any() else np.ones_like(phi)
    return float(temperature) * phi / phi.mean()


def prototypes_of(
    embeddings: np.ndarray, assignment: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """One granularity's prototypes: (centroids (K, D) float32, unit rows c̄_j / ||c̄_j||;
    concentrations (K,) float32 from :func:`concentration`)."""
    _, means, _ = _cluster_means(embeddings, assignment)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    centroids = means / np.maximum(norms, np.finfo(np.float64).tiny)
    phi = concentration(embeddings, assignment, temperature)
    return centroids.astype(np.float32), phi.astype(np.float32)
