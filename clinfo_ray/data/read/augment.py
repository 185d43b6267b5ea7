"""The paper's augmentations for a whole batch at once, each image with its own random draw.

``torchvision.transforms.v2`` applies one random draw to a whole batch tensor, so calling it on a
batch would give every image the same crop. ``ViewAugmentation`` keeps torchvision's recipe and
formulas (tests check each colour op against ``torchvision.transforms.v2.functional`` per image)
but draws parameters per view and runs each step as one batched tensor op:

* RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3)): up to 10 tries per view as in
  torchvision, else the whole image; the crop and resize is ``torchvision.ops.roi_align``
  (bilinear, ceil(crop/size)² samples per output pixel: downscaling is averaged, not aliased);
* horizontal flip with p = 0.5;
* ColorJitter(brightness, contrast, saturation = s, hue = s/4) with p = ``jitter_prob``: factors
  per view; the order of the four ops is drawn once per batch (torchvision draws it per image);
* grayscale with p = ``grayscale_prob`` (3 channels kept).

The same code runs in Ray Data's CPU tasks and on a training worker's GPU.
"""

from __future__ import annotations

import math
import os

import torch

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
CROP_TRIES = 10


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    # A fresh OS seed per call: torch's default seed is the same in every new process, so Ray
    # workers would otherwise all draw the same "random" crops.
    seed = int.from_bytes(os.urandom(8), "little") >> 1 if seed is None else seed
    return torch.Generator(device=device).manual_seed(seed)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, dev: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo


def crop_boxes(
    n: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """(n, 4) boxes x0, y0, x1, y1 in pixel units, drawn as torchvision's RandomResizedCrop."""
    area = height * width
    tries = (n, CROP_TRIES)
    target = torch.empty(tries, device=device).uniform_(*scale, generator=generator) * area
    log_r = torch.empty(tries, device=device).uniform_(*map(math.log, ratio), generator=generator)
    w = torch.sqrt(target * torch.exp(log_r)).round()  # (n, tries)
    h = torch.sqrt(target / torch.exp(log_r)).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), -1)  # first valid try, -1 if none
    pick = first.clamp(min=0)[:, None]
    w = torch.where(first >= 0, w.gather(1, pick)[:, 0], float(width))
    h = torch.where(first >= 0, h.gather(1, pick)[:, 0], float(height))
    x0 = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
    y0 = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma, torchvision's weights."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` (in turns, [-0.5, 0.5]) through HSV.

    RGB -> HSV as torchvision's ``_rgb_to_hsv``; HSV -> RGB by the closed form
    c_n = V - V·S·clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6, n = 5, 3, 1 for R, G, B,
    which equals torchvision's sector table with a few elementwise ops on (N, 3, H, W).
    """
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eq = maxc == minc
    delta = maxc - minc
    sat = delta / torch.where(eq, torch.ones_like(maxc), maxc)
    safe = torch.where(eq, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    h6 = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h6 = torch.where(eq, torch.zeros_like(h6), h6)
    hue = torch.remainder(torch.fmod(h6 / 6.0 + 1.0, 1.0) + shift.view(-1, 1, 1), 1.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + (hue * 6.0).unsqueeze(1), 6.0)  # (N, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    v = maxc.unsqueeze(1)
    return (v - v * sat.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


class ViewAugmentation:
    """V independently augmented views of every image of a batch.

    Call with ``images``: (B, 3, H, W) uint8 (or float in [0, 1]); returns (B, V, 3, size, size),
    uint8 by default (compact for Ray Data), float32 in [0, 1] with ``dtype=torch.float32``.
    """

    def __init__(
        self,
        *,
        size: int,
        views: int = 2,
        min_scale: float = 0.2,
        jitter: float = 0.4,
        jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        flip_prob: float = 0.5,
    ) -> None:
        if size < 1 or views < 1 or not 0.0 < min_scale <= 1.0:
            raise ValueError(f"size={size}, views={views}, min_scale={min_scale}: out of range")
        self.size, self.views, self.min_scale = size, views, min_scale
        self.jitter, self.jitter_prob = jitter, jitter_prob
        self.grayscale_prob, self.flip_prob = grayscale_prob, flip_prob

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"

    def __call__(
        self,
        images: torch.Tensor,
        *,
        dtype: torch.dtype = torch.uint8,
        seed: int | None = None,
    ) -> torch.Tensor:
        b, c, height, width = images.shape
        dev = images.device
        g = _generator(dev, seed)
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        n = b * self.views
        boxes = crop_boxes(
            n,
            height,
            width,
            scale=(self.min_scale, 1.0),
            ratio=(3 / 4, 4 / 3),
            generator=g,
            device=dev,
        )
        owner = torch.arange(b, device=dev).repeat_interleave(self.views)  # view -> its image
        rois = torch.cat([owner[:, None].to(boxes.dtype), boxes], dim=1)  # (B*V, 5)
        # imported here: a driver that only starts a run (Ray's, a Tune trial's) never loads it
        from torchvision.ops import roi_align

        # sampling_ratio 0: ceil(crop side / size) samples a pixel, so downscaling is averaged
        v = roi_align(x, rois, (self.size, self.size), 1.0, 0, True)  # (B*V, 3, size, size)
        flip = torch.rand(n, generator=g, device=dev) < self.flip_prob
        v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
        v = self._jitter(v, g)
        gray = torch.rand(n, generator=g, device=dev) < self.grayscale_prob
        v = torch.where(gray.view(-1, 1, 1, 1), grayscale(v).expand_as(v), v)
        v = v.view(b, self.views, c, self.size, self.size)
        if dtype == torch.uint8:
            return v.mul(255.0).round_().to(torch.uint8)
        return v.to(dtype)

    def _jitter(self, v: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev, s = v.shape[0], v.device, self.jitter
        if s <= 0 or self.jitter_prob <= 0:
            return v
        on = torch.rand(n, generator=g, device=dev) < self.jitter_prob
        ops = [
            (adjust_brightness, _uniform(n, max(0.0, 1 - s), 1 + s, g, dev), 1.0),
            (adjust_contrast, _uniform(n, max(0.0, 1 - s), 1 + s, g, dev), 1.0),
            (adjust_saturation, _uniform(n, max(0.0, 1 - s), 1 + s, g, dev), 1.0),
            (adjust_hue, _uniform(n, -s / 4, s / 4, g, dev), 0.0),
        ]
        for k in torch.randperm(4, generator=g, device=dev).tolist():
            op, factor, identity = ops[k]
            v = op(v, torch.where(on, factor, torch.full_like(factor, identity)))
        return v
