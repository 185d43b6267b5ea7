"""PCL: ProtoNCE against a float64 loop reference, closed forms, gradients, the concentration
against a hand computation, and the whole loss (InfoNCE + ProtoNCE; InfoNCE alone in warm-up)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clinfo_ray.config import TrainConfig, apply_overrides
from clinfo_ray.losses import PCLLoss, Prototypes, cl_infonce, concentration, pcl_loss, proto_nce
from clinfo_ray.losses.pcl import prototypes_of
from clinfo_ray.training.objective import PROTOTYPE_IDS, TrainOutput, batch_loss
from tests.loss_reference import nt_xent, proto_nce_reference


def _prototypes(
    sizes: tuple[int, ...], dim: int, gen: torch.Generator, dtype: torch.dtype = torch.float64
) -> Prototypes:
    centroids = tuple(
        torch.nn.functional.normalize(torch.randn(k, dim, dtype=dtype, generator=gen), dim=1)
        for k in sizes
    )
    phis = tuple(0.05 + 0.5 * torch.rand(k, dtype=dtype, generator=gen) for k in sizes)
    return Prototypes(centroids, phis)


def _ids(num_images: int, sizes: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    columns = [torch.randint(0, k, (num_images,), generator=gen) for k in sizes]
    return torch.stack(columns, dim=1)  # (B, M)


@pytest.mark.parametrize("num_images", [1, 3, 8])
@pytest.mark.parametrize("num_views", [1, 2, 3])
@pytest.mark.parametrize("sizes", [(2,), (3, 7), (5, 2, 11)])
def test_proto_nce_matches_the_loop_reference(
    num_images: int, num_views: int, sizes: tuple[int, ...]
) -> None:
    gen = torch.Generator().manual_seed(100 * num_images + 10 * num_views + len(sizes))
    dim = 6
    x = torch.randn(num_images, num_views, dim, dtype=torch.float64, generator=gen) * 4
    prototypes = _prototypes(sizes, dim, gen)
    ids = _ids(num_images, sizes, gen)
    x_fast = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    fast = proto_nce(x_fast, ids, prototypes)
    ref = proto_nce_reference(
        x_ref, ids, list(prototypes.centroids), list(prototypes.concentrations)
    )
    fast.backward()
    ref.backward()
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


def test_equal_prototypes_give_log_k_and_a_zero_gradient() -> None:
    k = 9
    gen = torch.Generator().manual_seed(0)
    one = torch.nn.functional.normalize(torch.randn(1, 5, dtype=torch.float64, generator=gen))
    prototypes = Prototypes((one.repeat(k, 1),), (torch.full((k,), 0.3, dtype=torch.float64),))
    x = torch.randn(4, 2, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    loss = proto_nce(x, _ids(4, (k,), gen), prototypes)
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(math.log(k), dtype=torch.float64))
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.zeros_like(x))


def test_a_sharp_own_prototype_gives_a_loss_near_zero() -> None:
    # each image on its own prototype, the others orthogonal, φ small: softmax ~ one-hot
    centroids = torch.eye(4, dtype=torch.float64)
    prototypes = Prototypes((centroids,), (torch.full((4,), 0.01, dtype=torch.float64),))
    x = centroids[:, None, :].repeat(1, 2, 1) * 3.0  # (4, 2, 4): both views on the prototype
    loss = proto_nce(x, torch.arange(4)[:, None], prototypes)
    assert 0 <= float(loss) < 1e-30


def test_gradcheck_through_features_prototypes_and_concentrations() -> None:
    gen = torch.Generator().manual_seed(3)
    sizes = (3, 4)
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    base = _prototypes(sizes, 4, gen)
    centroids = [c.clone().requires_grad_(True) for c in base.centroids]
    phis = [p.clone().requires_grad_(True) for p in base.concentrations]
    ids = _ids(3, sizes, gen)

    def loss(
        x: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, p0: torch.Tensor, p1: torch.Tensor
    ) -> torch.Tensor:
        return proto_nce(x, ids, Prototypes((c0, c1), (p0, p1)))

    assert torch.autograd.gradcheck(loss, (x, *centroids, *phis))


def test_pcl_gradcheck_of_the_whole_loss() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    prototypes = _prototypes((2, 3), 4, gen)
    ids = _ids(3, (2, 3), gen)
    index = torch.tensor([7, 2, 5])

    def loss(x: torch.Tensor) -> torch.Tensor:
        return pcl_loss(x, index, 0.3, prototypes=prototypes, cluster_ids=ids, proto_weight=0.7)

    assert torch.autograd.gradcheck(loss, (x,))


@pytest.mark.parametrize("weight", [1.0, 0.25, 0.0])
@pytest.mark.parametrize("base_temperature", [None, 0.07])
def test_total_is_infonce_plus_weighted_proto_nce(
    weight: float, base_temperature: float | None
) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 8, dtype=torch.float64, generator=gen)
    index = torch.tensor([10, 3, 4, 0, 8, 1])
    prototypes = _prototypes((4, 6), 8, gen)
    ids = _ids(6, (4, 6), gen)
    total = pcl_loss(
        x,
        index,
        0.2,
        prototypes=prototypes,
        cluster_ids=ids,
        proto_weight=weight,
        base_temperature=base_temperature,
    )
    instance = cl_infonce(x, index, 0.2, base_temperature)
    expected = instance + weight * proto_nce_reference(
        x, ids, list(prototypes.centroids), list(prototypes.concentrations)
    )
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)
    module = PCLLoss(0.2, proto_weight=weight, base_temperature=base_temperature)
    torch.testing.assert_close(module(x, index, ids, prototypes), total)


def test_warmup_without_prototypes_is_simclr() -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(5, 2, 8, dtype=torch.float64, generator=gen)
    index = torch.arange(5)
    loss = pcl_loss(x, index, 0.5)
    torch.testing.assert_close(loss, cl_infonce(x, index, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(loss, nt_xent(x, 0.5), rtol=1e-10, atol=1e-12)


def test_prototypes_and_ids_come_together_and_shapes_are_checked() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 4)
    prototypes = _prototypes((3,), 4, gen, torch.float32)
    with pytest.raises(ValueError, match="both or neither"):
        pcl_loss(x, torch.arange(2), 0.1, prototypes=prototypes)
    with pytest.raises(ValueError, match="both or neither"):
        pcl_loss(x, torch.arange(2), 0.1, cluster_ids=torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"cluster_ids must be \(B, M\) = \(2, 1\)"):
        proto_nce(x, torch.zeros(2, 2, dtype=torch.int64), prototypes)
    with pytest.raises(ValueError, match="prototypes have 4 dims, features 5"):
        proto_nce(torch.randn(2, 2, 5), torch.zeros(2, 1, dtype=torch.int64), prototypes)
    with pytest.raises(ValueError, match=r"concentrations \(K_m,\)"):
        Prototypes((torch.randn(3, 4),), (torch.ones(2),))


def test_float32_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4, 2, 8, generator=gen)
    prototypes = _prototypes((3, 5), 8, gen, torch.float32)
    ids = _ids(4, (3, 5), gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pcl_loss(x.bfloat16(), torch.arange(4), 0.1, prototypes=prototypes, cluster_ids=ids)
    exact = pcl_loss(x, torch.arange(4), 0.1, prototypes=prototypes, cluster_ids=ids)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, exact, rtol=3e-2, atol=0)  # bf16 inputs, float32 maths


def _by_hand_percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile: interpolate at position q/100·(K-1) of the sorted."""
    ordered = sorted(values)
    position = q / 100 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def test_concentration_by_hand_with_a_singleton_and_the_low_clip() -> None:
    s = math.sqrt
    rows = [
        ([1, 0], 0), ([0, 1], 0),  # mean (.5, .5): two distances sqrt(.5)
        ([1, 0], 1), ([1, 0], 1), ([-1, 0], 1),  # mean (1/3, 0): 2/3, 2/3, 4/3
        ([0, -1], 2),  # one member: no spread, takes the largest φ of the others
        ([0, 1], 3), ([0, 1], 3), ([1, 0], 3), ([1, 0], 3),  # mean (.5, .5): 4 × sqrt(.5)
        ([0.6, 0.8], 4), ([0.8, 0.6], 4),  # mean (.7, .7): two distances sqrt(.02)
    ]  # fmt: skip
    z = np.array([r[0] for r in rows], dtype=np.float64)
    assignment = np.array([r[1] for r in rows])
    raw = [
        2 * s(0.5) / (2 * math.log(12)),
        (2 / 3 + 2 / 3 + 4 / 3) / (3 * math.log(13)),
        0.0,  # filled below
        4 * s(0.5) / (4 * math.log(14)),
        2 * s(0.02) / (2 * math.log(12)),
    ]
    raw[2] = max(raw[0], raw[1], raw[3], raw[4])
    low, high = _by_hand_percentile(raw, 10), _by_hand_percentile(raw, 90)
    clipped = [min(max(v, low), high) for v in raw]
    assert clipped[4] == low > raw[4]  # the tight cluster is lifted to the 10th percentile
    tau = 0.2
    expected = [tau * v / (sum(clipped) / len(clipped)) for v in clipped]

    phi = concentration(z, assignment, tau)
    np.testing.assert_allclose(phi, expected, rtol=1e-12)
    assert phi.mean() == pytest.approx(tau, rel=1e-12)
    assert phi[2] == phi.max() == phi[1]  # the singleton: the largest of the others


def test_concentration_clips_the_top_and_keeps_the_order() -> None:
    # three clusters of two members each, at angles 2a apart: spreads sin(a) per member
    angles = [0.1, 0.3, 0.6]
    z, assignment = [], []
    for j, a in enumerate(angles):
        z += [[math.cos(a), math.sin(a)], [math.cos(a), -math.sin(a)]]
        assignment += [j, j]
    raw = [2 * math.sin(a) / (2 * math.log(12)) for a in angles]
    low, high = _by_hand_percentile(raw, 10), _by_hand_percentile(raw, 90)
    assert raw[0] < low and high < raw[2]
    clipped = [min(max(v, low), high) for v in raw]
    phi = concentration(np.array(z), np.array(assignment), 0.1)
    np.testing.assert_allclose(phi, [0.1 * v / (sum(clipped) / 3) for v in clipped], rtol=1e-12)


def test_concentration_degenerate_cases() -> None:
    # every cluster one member: no spread anywhere, every φ is τ
    np.testing.assert_allclose(concentration(np.eye(3), np.arange(3), 0.3), [0.3, 0.3, 0.3])
    # two clusters of one repeated image each: φ 0 survives the 10th-percentile clip, so it
    # takes the smallest positive φ (never a division by 0)
    a, b = 0.2, 0.5
    z = [[1, 0], [1, 0], [0, 1], [0, 1]]
    z += [[math.cos(a), math.sin(a)], [math.cos(a), -math.sin(a)]]
    z += [[math.cos(b), math.sin(b)], [math.cos(b), -math.sin(b)]]
    raw = [0.0, 0.0, math.sin(a) / math.log(12), math.sin(b) / math.log(12)]
    high = _by_hand_percentile(raw, 90)
    lifted = [raw[2], raw[2], raw[2], high]
    phi = concentration(np.array(z), np.array([0, 0, 1, 1, 2, 2, 3, 3]), 0.1)
    np.testing.assert_allclose(phi, [0.1 * v / (sum(lifted) / 4) for v in lifted], rtol=1e-12)
    with pytest.raises(ValueError, match=r"contiguous 0\.\.K-1; 1 has no member"):
        concentration(np.eye(2), np.array([0, 2]), 0.1)


def test_prototypes_are_the_normalised_means() -> None:
    gen = np.random.default_rng(0)
    z = gen.normal(size=(40, 5))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    assignment = np.arange(40) % 4
    centroids, phi = prototypes_of(z, assignment, 0.1)
    assert centroids.dtype == phi.dtype == np.float32 and centroids.shape == (4, 5)
    for j in range(4):
        mean = z[assignment == j].mean(0)
        np.testing.assert_allclose(centroids[j], mean / np.linalg.norm(mean), rtol=1e-6)
    np.testing.assert_allclose(phi, concentration(z, assignment, 0.1), rtol=1e-6)


def test_batch_loss_of_pcl_contrasts_instances_and_adds_proto_nce() -> None:
    cfg = apply_overrides(TrainConfig(), {"loss.method": "pcl", "loss.proto_weight": 0.5})
    gen = torch.Generator().manual_seed(9)
    projections = torch.randn(4, 2, 8, generator=gen)
    out = TrainOutput(torch.randn(4, 2, 16), projections, None)
    batch = {
        "index": torch.tensor([3, 0, 9, 4]),
        "cluster": torch.zeros(4, dtype=torch.int64),  # pcl's instance term ignores it
        "label": torch.tensor([0, 0, 1, -1]),
    }
    warm = batch_loss(cfg, batch, out)
    torch.testing.assert_close(warm, cl_infonce(projections, batch["index"], 0.1))
    prototypes = _prototypes((3, 5), 8, gen, torch.float32)
    ids = _ids(4, (3, 5), gen)
    loss = batch_loss(cfg, {**batch, PROTOTYPE_IDS: ids}, out, prototypes)
    torch.testing.assert_close(loss, warm + 0.5 * proto_nce(projections, ids, prototypes))
