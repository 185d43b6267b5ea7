"""Batched per-view augmentation: torchvision parity of every op, crop statistics, randomness."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as F

from clinfo_ray.data.read.augment import (
    ViewAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    crop_boxes,
)


def images(n: int = 8, size: int = 12) -> torch.Tensor:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    x[0] = 0.5  # grey: hue undefined
    x[1, :, :3] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red band
    x[2, 2] = x[2, 0]  # max shared by two channels
    return x


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, F.adjust_brightness, [0.6, 1.4, 1.0, 0.8, 1.2, 0.7, 1.1, 0.9]),
        (adjust_contrast, F.adjust_contrast, [0.6, 1.4, 1.0, 0.8, 1.2, 0.7, 1.1, 0.9]),
        (adjust_saturation, F.adjust_saturation, [0.6, 1.4, 1.0, 0.8, 1.2, 0.7, 1.1, 0.9]),
        (adjust_hue, F.adjust_hue, [-0.1, 0.1, 0.0, 0.05, -0.5, 0.5, 0.33, -0.02]),
    ],
)
def test_batched_colour_ops_equal_torchvision_per_image(ours, theirs, factors):
    x = images()
    got = ours(x.clone(), torch.tensor(factors))
    want = torch.stack([theirs(x[i], f) for i, f in enumerate(factors)])
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(1)
    boxes = crop_boxes(
        4000,
        40,
        60,
        scale=(0.2, 1.0),
        ratio=(3 / 4, 4 / 3),
        generator=g,
        device=torch.device("cpu"),
    )
    x0, y0, x1, y1 = boxes.unbind(1)
    w, h = x1 - x0, y1 - y0
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 60).all() and (y1 <= 40).all()
    area = w * h / (40 * 60)
    full = (w == 60) & (h == 40)  # the fallback after 10 failed tries
    assert 0.18 < area[~full].min() and area.max() <= 1.0
    ratio = (w / h)[~full]
    assert ratio.min() > 0.7 and ratio.max() < 1.4  # 3/4..4/3 up to rounding
    # the same distribution as torchvision's sampler (rejection makes it smaller than U(0.2, 1))
    torch.manual_seed(2)
    ref = [T.RandomResizedCrop.get_params(torch.empty(3, 40, 60), [0.2, 1.0], [3 / 4, 4 / 3])]
    ref += [
        T.RandomResizedCrop.get_params(torch.empty(3, 40, 60), [0.2, 1.0], [3 / 4, 4 / 3])
        for _ in range(3999)
    ]
    ref_area = torch.tensor([hh * ww / 2400 for _, _, hh, ww in ref])
    assert math.isclose(area.mean().item(), ref_area.mean().item(), abs_tol=0.02)
    assert len({tuple(b) for b in boxes[:50].tolist()}) > 45  # each view its own crop


def test_identity_recipe_returns_the_image():
    x = (torch.rand(3, 3, 16, 16) * 255).round().to(torch.uint8)
    aug = ViewAugmentation(
        size=16, views=2, min_scale=1.0, jitter=0.0, grayscale_prob=0.0, flip_prob=0.0
    )
    out = aug(x)
    assert out.shape == (3, 2, 3, 16, 16) and out.dtype == torch.uint8
    # min_scale 1 with ratio 3/4..4/3 still may pick a non-square full-area box: allow that view
    same = (out == x[:, None]).flatten(2).all(-1)
    assert same.float().mean() > 0.3


def test_views_differ_and_fresh_randomness_each_call():
    x = (torch.rand(16, 3, 24, 24) * 255).to(torch.uint8)
    aug = ViewAugmentation(size=16, views=3)
    a, b = aug(x), aug(x)
    assert a.shape == (16, 3, 3, 16, 16)
    assert not torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])
    torch.testing.assert_close(aug(x, seed=5), aug(x, seed=5))
    f = aug(x, dtype=torch.float32, seed=5)
    assert f.dtype == torch.float32 and 0.0 <= f.min() and f.max() <= 1.0
    torch.testing.assert_close(f.mul(255).round().to(torch.uint8), aug(x, seed=5))


def test_grayscale_and_flip_probabilities():
    x = torch.zeros(2000, 3, 8, 8)
    x[:, 0, :, :4] = 1.0  # red left half: flips and greys are visible
    gray = ViewAugmentation(size=8, views=1, min_scale=1.0, jitter=0.0, grayscale_prob=0.2)
    out = gray(x, dtype=torch.float32)[:, 0]
    is_gray = (out[:, 0] - out[:, 1]).abs().amax((1, 2)) < 1e-6
    assert 0.16 < is_gray.float().mean() < 0.24
    flipped = out[:, :, :, 6:].sum((1, 2, 3)) > out[:, :, :, :2].sum((1, 2, 3))
    assert 0.45 < flipped.float().mean() < 0.55
