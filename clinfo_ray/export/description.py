"""What an export directory's ``preprocess.json`` says, written and checked by one module.

The preprocessing block states, step by step, how an image file becomes the encoder's input
as ``clinfo_ray.data.read.decode`` does it (the decode of training and evaluation), with the
numbers in fields and the exact Pillow calls in ``rule`` strings, so that code outside
clinfo-ray can reproduce the tensor. ``S`` in a rule is ``input_size``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from clinfo_ray.config import ModelConfig
from clinfo_ray.model import ProjectionHead, ResNetEncoder

FORMAT = "clinfo-ray-encoder"
FORMAT_VERSION = 1
PREPROCESS_FILE = "preprocess.json"
WEIGHTS_FILE = "encoder.safetensors"
PROGRAM_FILE = "encoder.pt2"
ONNX_FILE = "encoder.onnx"
HEAD_FILE = "head.safetensors"
# Every file an export may hold; --overwrite removes these (and nothing else) first.
EXPORT_FILES = (PREPROCESS_FILE, WEIGHTS_FILE, PROGRAM_FILE, ONNX_FILE, HEAD_FILE)
WHITE = (255, 255, 255)  # clinfo_ray.data.read.decode.WHITE: transparent pixels become white


class ExportError(RuntimeError):
    """An export cannot be written or read (bad output directory, missing extra, wrong file)."""


def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of a training config (a checkpoint state.json's ``config``) as canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


CONFIG_DIGEST_RULE = (
    "sha256 of the checkpoint's state.json 'config' as json.dumps(config, sort_keys=True, "
    "separators=(',', ':'), ensure_ascii=True), UTF-8"
)


def preprocessing(size: int) -> dict[str, Any]:
    """How an image file becomes the (3, S, S) float32 input, S = ``size``: each step's
    parameters and its rule, in order (open, draft, convert, resize, crop, to_tensor)."""
    return {
        "library": "Pillow",
        "open": {"rule": "image = PIL.Image.open(file)"},
        "draft": {
            "mode": "RGB",
            "size": [size, size],
            "rule": (
                "image.draft('RGB', (S, S)) before the image is loaded. JPEG only (other formats "
                "ignore it): libjpeg decodes at scale 1/s, s the largest of 8, 4, 2, 1 with "
                "s <= min(width // S, height // S), to (ceil(width / s), ceil(height / s)) pixels"
            ),
        },
        "convert": {
            "mode": "RGB",
            "alpha_modes": ["RGBA", "LA", "PA", "P with a 'transparency' entry in image.info"],
            "background": list(WHITE),
            "rule": (
                "an image of an alpha mode is converted to RGBA (P with transparency: its "
                "transparent palette entries get their tRNS alpha) and composited over an "
                "opaque white canvas, per channel out = (c * a + 255 * (255 - a) + 127) // 255 "
                "in integers (the rounded c * a/255 + 255 * (1 - a/255)), c the straight "
                "(not premultiplied) colour and a the alpha: Pillow's canvas = "
                "PIL.Image.new('RGB', image.size, (255, 255, 255)); canvas.paste(image, "
                "mask=image.getchannel('A')). Every other mode: image.convert('RGB') (L "
                "greyscale copied to the three channels; a tRNS colour key of an RGB or L "
                "image is ignored)"
            ),
        },
        "resize": {
            "shorter_side": size,
            "filter": "bilinear",
            "reducing_gap": 2.0,
            "rule": (
                "skipped when the image is S x S already; else scale = S / min(width, height), "
                "new_size = (max(S, round(width * scale)), max(S, round(height * scale))) "
                "(Python floats, round half to even), image = image.resize(new_size, "
                "PIL.Image.Resampling.BILINEAR, reducing_gap=2.0): Pillow's bilinear filter "
                "widens with the downscaling factor (antialiased), and a downscale by 4 or more "
                "first averages boxes of int(factor / 2) pixels (image.reduce)"
            ),
        },
        "crop": {
            "size": [size, size],
            "rule": (
                "the centre square: left = (new_width - S) // 2, top = (new_height - S) // 2, "
                "image.crop((left, top, left + S, top + S)); skipped with the resize"
            ),
        },
        "to_tensor": {
            "layout": "CHW",
            "dtype": "float32",
            "divide_by": 255.0,
            "mean": None,
            "std": None,
            "rule": (
                "numpy.asarray(image, dtype=uint8) (S, S, 3), transposed to (3, S, S), as "
                "float32 divided by 255.0: values in [0, 1], no mean/std normalisation"
            ),
        },
    }


def torchvision_recipe(backbone: str, encoder: nn.Module) -> dict[str, Any] | None:
    """The plain torchvision model whose state dict ``encoder.safetensors`` (``encoder.net``'s)
    fits exactly (strict load), as code; None for an encoder of ours alone (``small_cnn``)."""
    if not isinstance(encoder, ResNetEncoder):
        return None
    net = encoder.net
    lines = ["import torch, torchvision", f"model = torchvision.models.{backbone}(weights=None)"]
    if isinstance(net.maxpool, nn.Identity):  # the small-image stem
        c = net.conv1.out_channels
        lines += [
            f"model.conv1 = torch.nn.Conv2d(3, {c}, kernel_size=3, stride=1, padding=1, "
            "bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    lines.append("model.fc = torch.nn.Identity()")
    return {"constructor": f"torchvision.models.{backbone}(weights=None)", "code": "\n".join(lines)}


def weights_description(cfg: ModelConfig, encoder: nn.Module) -> dict[str, Any]:
    recipe = torchvision_recipe(cfg.backbone, encoder)
    if recipe is not None:
        keys = "torchvision's: load_state_dict(strict=True) into the model 'torchvision' builds"
    else:
        keys = (
            f"clinfo_ray.model.encoders.SmallCNN(width={cfg.cnn_width}, small_image_stem="
            f"{cfg.small_image_stem}): no torchvision model has these layers; {PROGRAM_FILE} "
            "is the portable form"
        )
    return {"file": WEIGHTS_FILE, "keys": keys, "torchvision": recipe}


def head_description(head: ProjectionHead) -> dict[str, Any]:
    """``head.safetensors``: the projection head (``head.mlp``'s keys) as a plain
    ``torch.nn.Sequential``."""
    first = head.mlp[0]
    assert isinstance(first, nn.Linear)
    batch_norm = any(isinstance(m, nn.BatchNorm1d) for m in head.mlp)
    hidden = first.out_features
    code = [f"torch.nn.Linear({head.in_dim}, {hidden}, bias={not batch_norm})"]
    code += [f"torch.nn.BatchNorm1d({hidden})"] if batch_norm else []
    code += ["torch.nn.ReLU()", f"torch.nn.Linear({hidden}, {head.out_dim})"]
    return {
        "file": HEAD_FILE,
        "proj_dim": head.out_dim,
        "code": "head = torch.nn.Sequential(" + ", ".join(code) + ")",
        "rule": "features (B, D) -> projections (B, proj_dim), not normalised (the loss "
        "normalises them); in eval mode (head.eval()) BatchNorm uses its running statistics",
    }
