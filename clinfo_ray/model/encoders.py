"""Encoders: torchvision ResNet-18/50 (random init, never downloaded) and a small CNN for CPUs.

Every encoder maps images (B, 3, H, W) to pooled features (B, feature_dim) and exposes
``feature_dim``. The small-image stem (the paper's 32-px runs, as SimCLR's CIFAR setup) swaps
ResNet's 7x7 stride-2 conv + max-pool for one 3x3 stride-1 conv, so the first stage sees the
full resolution instead of a quarter of it.
"""

from __future__ import annotations

import torch
from torch import nn

from clinfo_ray.config import ModelConfig


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier: (B, 3, H, W) -> (B, 512 | 2048)."""

    def __init__(self, depth: int, *, small_image_stem: bool) -> None:
        super().__init__()
        # imported here: a driver that only starts a run (Ray's, a Tune trial's) never loads it
        from torchvision import models

        constructors = {18: models.resnet18, 50: models.resnet50}
        if depth not in constructors:
            raise ValueError(f"ResNet depth must be 18 or 50; got {depth}")
        net = constructors[depth](weights=None)  # random init: never downloads
        if small_image_stem:
            net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.feature_dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),  # BN supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Six 3x3 conv + BN + ReLU layers, then global average pooling: feature_dim = 8 * width.

    Channels width, 2w, 2w, 4w, 4w, 8w; strides 1 (2 without the small-image stem), 2, 1, 2, 1,
    2, so a 32-px image ends at 4x4 before pooling. About 34 M multiply-adds per 32-px image at
    width 32: a few seconds per 512-view step on two CPU cores.
    """

    def __init__(self, width: int = 32, *, small_image_stem: bool = True) -> None:
        super().__init__()
        w = width
        plan = [
            (3, w, 1 if small_image_stem else 2),
            (w, 2 * w, 2),
            (2 * w, 2 * w, 1),
            (2 * w, 4 * w, 2),
            (4 * w, 4 * w, 1),
            (4 * w, 8 * w, 2),
        ]
        self.layers = nn.Sequential(*(_conv_bn_relu(i, o, s) for i, o, s in plan))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim: int = 8 * w
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(images)).flatten(1)  # (B, 8w)


def build_encoder(cfg: ModelConfig) -> ResNetEncoder | SmallCNN:
    if cfg.backbone == "small_cnn":
        return SmallCNN(cfg.cnn_width, small_image_stem=cfg.small_image_stem)
    depth = {"resnet18": 18, "resnet50": 50}[cfg.backbone]
    return ResNetEncoder(depth, small_image_stem=cfg.small_image_stem)
