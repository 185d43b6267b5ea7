"""Cl-InfoNCE against a float64 double-loop reference, closed forms and the edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from clinfo_ray.losses import ClInfoNCELoss, cl_infonce
from clinfo_ray.losses.cl_infonce import default_chunk_rows
from tests.loss_reference import cl_infonce_reference, nt_xent, supcon


def _layout(name: str, num_images: int, gen: torch.Generator) -> torch.Tensor:
    if name == "singletons":
        return torch.arange(num_images)
    if name == "one_cluster":
        return torch.zeros(num_images, dtype=torch.int64)
    if name == "random":
        return torch.randint(0, max(1, num_images // 3), (num_images,), generator=gen)
    if name == "sparse_ids":  # non-contiguous, negative and huge ids
        pool = torch.tensor([-7, 3, 10**12, 42])
        return pool[torch.randint(0, 4, (num_images,), generator=gen)]
    raise ValueError(name)


def _check_against_reference(
    num_images: int, num_views: int, dim: int, tau: float, layout: str, chunk: int | None
) -> None:
    gen = torch.Generator().manual_seed(num_images * 1000 + num_views * 100 + dim)
    x = torch.randn(num_images, num_views, dim, dtype=torch.float64, generator=gen) * 3
    ids = _layout(layout, num_images, gen)
    x_fast = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    fast = cl_infonce(x_fast, ids, tau, chunk_rows=chunk)
    ref = cl_infonce_reference(x_ref, ids, tau)
    fast.backward()
    ref.backward()
    assert fast.dtype == torch.float64
    torch.testing.assert_close(fast, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("num_images", [1, 2, 5, 16])
@pytest.mark.parametrize("num_views", [1, 2, 4])
@pytest.mark.parametrize("layout", ["singletons", "one_cluster", "random", "sparse_ids"])
def test_matches_reference_over_layouts(num_images: int, num_views: int, layout: str) -> None:
    _check_against_reference(num_images, num_views, 8, 0.2, layout, chunk=None)


@pytest.mark.parametrize("dim", [1, 3, 32])
@pytest.mark.parametrize("tau", [0.01, 0.07, 0.5, 2.0])
def test_matches_reference_over_dims_and_temperatures(dim: int, tau: float) -> None:
    _check_against_reference(12, 2, dim, tau, "random", chunk=None)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1000])
def test_chunking_does_not_change_value_or_gradient(chunk: int) -> None:
    _check_against_reference(21, 3, 16, 0.1, "random", chunk=chunk)


def test_base_temperature_scales_by_tau_over_base() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, 8, dtype=torch.float64, generator=gen)
    ids = torch.randint(0, 3, (10,), generator=gen)
    plain = cl_infonce(x, ids, 0.1)
    authors = cl_infonce(x, ids, 0.1, base_temperature=0.07)
    torch.testing.assert_close(authors, plain * (0.1 / 0.07), rtol=1e-12, atol=0)
    torch.testing.assert_close(authors, cl_infonce_reference(x, ids, 0.1, 0.07), rtol=1e-9, atol=0)


def test_singleton_clusters_give_simclr_nt_xent() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 2, 16, dtype=torch.float64, generator=gen)
    loss = cl_infonce(x, torch.arange(32), 0.5)
    torch.testing.assert_close(loss, nt_xent(x, 0.5), rtol=1e-10, atol=0)


@pytest.mark.parametrize("num_views", [2, 3])
def test_labels_give_supervised_contrastive(num_views: int) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(24, num_views, 16, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 5, (24,), generator=gen)
    loss = cl_infonce(x, labels, 0.1, base_temperature=0.07)
    torch.testing.assert_close(loss, supcon(x, labels, 0.1, 0.07), rtol=1e-10, atol=0)


@pytest.mark.parametrize("layout", ["singletons", "one_cluster", "random"])
def test_identical_embeddings_give_log_of_candidates(layout: str) -> None:
    num_images, num_views = 9, 2
    x = torch.ones(num_images, num_views, 4, requires_grad=True)
    ids = _layout(layout, num_images, torch.Generator().manual_seed(3))
    loss = cl_infonce(x, ids, 0.1)
    expected = math.log(num_images * num_views - 1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().max() < 1e-5  # every similarity is already equal: nothing to move


def test_no_anchor_with_a_positive_gives_zero_not_nan() -> None:
    x = torch.randn(6, 1, 8, requires_grad=True)  # V = 1, every image its own cluster
    loss = cl_infonce(x, torch.arange(6), 0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_single_view_single_image() -> None:
    x = torch.randn(1, 1, 8, requires_grad=True)  # no candidate at all
    loss = cl_infonce(x, torch.zeros(1, dtype=torch.int64), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


def test_single_view_excludes_only_anchors_without_positives() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 1, 5, dtype=torch.float64, generator=gen)
    ids = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4])  # images 2, 3 and 7 have no positive
    torch.testing.assert_close(cl_infonce(x, ids, 0.3), cl_infonce_reference(x, ids, 0.3))


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e8, 1e30])
def test_huge_and_tiny_norms_are_finite_and_scale_free(scale: float) -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(16, 2, 32, generator=gen)
    ids = torch.randint(0, 4, (16,), generator=gen)
    scaled = (x * scale).requires_grad_(True)
    loss = cl_infonce(scaled, ids, 0.05)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scaled.grad).all()
    torch.testing.assert_close(loss, cl_infonce(x, ids, 0.05), rtol=1e-5, atol=1e-6)


def test_zero_vectors_do_not_give_nan() -> None:
    x = torch.zeros(4, 2, 8, requires_grad=True)
    loss = cl_infonce(x, torch.tensor([0, 1, 1, 2]), 0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast_accumulates_in_fp32(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(64, 2, 32, generator=gen)
    ids = torch.randint(0, 8, (64,), generator=gen)
    half = x.to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cl_infonce(half, ids, 0.05)
    loss.backward()
    assert loss.dtype == torch.float32
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()
    # The only error left is the rounding of the inputs themselves.
    expected = cl_infonce_reference(half.detach().double(), ids, 0.05)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fp32_matches_reference_closely() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(40, 2, 64, generator=gen)
    ids = torch.randint(0, 10, (40,), generator=gen)
    loss = cl_infonce(x, ids, 0.1, chunk_rows=16)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(cl_infonce_reference(x, ids, 0.1).item(), rel=1e-5)


def test_gradcheck_of_the_chunked_function() -> None:
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = torch.tensor([0, 1, 0, 2, 1])
    assert torch.autograd.gradcheck(lambda t: cl_infonce(t, ids, 0.3, chunk_rows=2), (x,))


def test_module_form_equals_function() -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(8, 2, 16, generator=gen)
    ids = torch.randint(0, 3, (8,), generator=gen)
    module = ClInfoNCELoss(temperature=0.2, base_temperature=0.07)
    assert module(x, ids).item() == cl_infonce(x, ids, 0.2, 0.07).item()
    assert "temperature=0.2" in repr(module)


@pytest.mark.parametrize(
    ("features", "ids", "tau", "message"),
    [
        (torch.randn(4, 8), torch.arange(4), 0.1, r"\(B, V, D\)"),
        (torch.randn(4, 2, 8), torch.arange(3), 0.1, r"cluster_ids must be \(B,\)"),
        (torch.randn(4, 2, 8), torch.zeros(4), 0.1, "integer"),
        (torch.randn(4, 2, 8), torch.arange(4), 0.0, "temperature must be > 0"),
        (torch.randint(0, 3, (4, 2, 8)), torch.arange(4), 0.1, "floating point"),
    ],
)
def test_bad_inputs_fail_with_clear_messages(
    features: torch.Tensor, ids: torch.Tensor, tau: float, message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        cl_infonce(features, ids, tau)


def test_default_chunk_bounds_memory() -> None:
    for n in (1, 1000, 16_384, 65_536, 10**6):
        for device, budget in (("cpu", 2**24), ("cuda", 2**26)):
            rows = default_chunk_rows(n, device)
            assert 1 <= rows <= n
            assert rows * n <= max(budget, n)


def test_benchmark_dense_implementation_is_the_same_function() -> None:
    from benchmarks.loss_bench import dense_cl_infonce

    gen = torch.Generator().manual_seed(10)
    x = torch.randn(50, 2, 16, generator=gen)
    ids = torch.randint(0, 7, (50,), generator=gen)
    assert dense_cl_infonce(x, ids, 0.1).item() == pytest.approx(
        cl_infonce(x, ids, 0.1).item(), rel=1e-5
    )
