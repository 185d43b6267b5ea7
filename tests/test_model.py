"""Model: output shapes per backbone and image size, the small-image stem, the head, builder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clinfo_ray.config import ModelConfig
from clinfo_ray.config.sections import BackboneName
from clinfo_ray.model import ContrastiveModel, ProjectionHead, SmallCNN, build_model


@pytest.fixture(scope="module")
def models() -> dict[str, ContrastiveModel]:
    torch.manual_seed(0)
    names: tuple[BackboneName, ...] = ("small_cnn", "resnet18", "resnet50")
    return {b: build_model(ModelConfig(backbone=b)) for b in names}


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18", "resnet50"])
@pytest.mark.parametrize("size", [32, 64])
def test_output_shapes(
    models: dict[str, ContrastiveModel], backbone: BackboneName, size: int
) -> None:
    model = models[backbone]
    expected_dim = {"small_cnn": 256, "resnet18": 512, "resnet50": 2048}[backbone]
    assert model.feature_dim == expected_dim == ModelConfig(backbone=backbone).feature_dim
    with torch.no_grad():
        views = model(torch.randn(1, 2, 3, size, size))  # (B, V, 3, H, W)
    assert views.features.shape == (1, 2, expected_dim)
    assert views.projections.shape == (1, 2, 128)
    assert torch.isfinite(views.projections).all()


def test_views_are_rows_b_times_v_plus_v(models: dict[str, ContrastiveModel]) -> None:
    model = models["small_cnn"].eval()  # eval: BatchNorm must not mix rows for this check
    images = torch.randn(3, 2, 3, 32, 32)
    with torch.no_grad():
        per_view = model(images)
        flat = model(images.reshape(6, 3, 32, 32))  # (B, 3, H, W)
        encoded = model.encode(images)
    model.train()
    assert flat.features.shape == (6, 256) and flat.projections.shape == (6, 128)
    torch.testing.assert_close(per_view.projections.reshape(6, -1), flat.projections)
    torch.testing.assert_close(per_view.features[1, 0], flat.features[2])
    torch.testing.assert_close(encoded, per_view.features)


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _stem_output_size(model: nn.Module, size: int) -> int:
    """Spatial side of the first residual stage's output."""
    seen: list[int] = []
    hook = model.encoder.net.layer1.register_forward_hook(  # type: ignore[union-attr]
        lambda _m, _i, out: seen.append(out.shape[-1])
    )
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    hook.remove()
    return seen[0]


def test_small_stem_keeps_resolution(models: dict[str, ContrastiveModel]) -> None:
    small = models["resnet18"]  # small_image_stem defaults to True
    standard = build_model(ModelConfig(backbone="resnet18", small_image_stem=False))
    assert _stem_output_size(small, 32) == 32  # 3x3 stride-1 conv, no max-pool
    assert _stem_output_size(standard, 32) == 8  # 7x7 stride-2 conv + max-pool: a quarter
    conv1 = _first_conv(small)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert any(isinstance(m, nn.MaxPool2d) for m in standard.modules())


def test_small_cnn_layers_and_stem() -> None:
    cnn = SmallCNN(width=8)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and convs[-1].out_channels == 64 == cnn.feature_dim
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == 6
    assert convs[0].stride == (1, 1)
    assert _first_conv(SmallCNN(width=8, small_image_stem=False)).stride == (2, 2)


def test_head_shape_and_batch_norm() -> None:
    head = ProjectionHead(16, 32, 8)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.mlp[0].bias is None  # BN's shift replaces it
    assert head(torch.randn(4, 16)).shape == (4, 8)
    plain = ProjectionHead(16, 32, 8, batch_norm=False)
    assert [type(m) for m in plain.mlp] == [nn.Linear, nn.ReLU, nn.Linear]


def test_builder_follows_config() -> None:
    model = build_model(ModelConfig(proj_hidden=64, proj_dim=32, cnn_width=8, channels_last=True))
    assert model.head(torch.randn(2, 64)).shape == (2, 32) and model.proj_dim == 32
    hidden = next(m for m in model.head.modules() if isinstance(m, nn.Linear))
    assert hidden.out_features == 64
    conv1 = _first_conv(model)
    assert conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert out.projections.shape == (2, 2, 32) and out.features.shape == (2, 2, 64)
    out.projections.sum().backward()  # gradients reach the first conv
    assert conv1.weight.grad is not None and conv1.weight.grad.abs().sum() > 0


def test_bad_input_shape_is_named() -> None:
    model = build_model(ModelConfig(cnn_width=4))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
