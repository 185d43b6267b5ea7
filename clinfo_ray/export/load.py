"""``load_encoder(path)``: the encoder of an export directory or a checkpoint, and its
preprocessing, in one call."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import torch
from PIL import Image
from torch import nn

from clinfo_ray.checkpointing import STATE_FILE, load_model_from_checkpoint
from clinfo_ray.data.read.decode import image_array
from clinfo_ray.export.description import (
    FORMAT,
    FORMAT_VERSION,
    PREPROCESS_FILE,
    PROGRAM_FILE,
    ExportError,
    preprocessing,
)
from clinfo_ray.storage import location as loc


class Preprocess:
    """PIL image -> (3, S, S) float32 in [0, 1]: preprocess.json's steps, by the code that
    decodes every image of training and evaluation (``clinfo_ray.data.read.decode``).

    Pass the image as ``PIL.Image.open`` returns it, not loaded yet: a JPEG is then decoded at
    a reduced scale where that is enough, as the data path does (``image.draft``, which changes
    the image object); a JPEG loaded already is taken at full size, which can differ slightly.
    """

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.ascontiguousarray(image_array(image, self.input_size))  # (3, S, S) uint8
        return torch.from_numpy(pixels).float().div_(255.0)

    def __repr__(self) -> str:
        return f"Preprocess(input_size={self.input_size})"


class LoadedProgram(nn.Module):
    """The program of ``encoder.pt2`` as a module: images (B, 3, S, S) -> features (B, D).

    Inference only: the program's BatchNorm uses its running statistics, so ``train()`` and
    ``eval()`` change nothing (on the bare program torch.export refuses them).
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program
        self.training = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.program(images)

    def train(self, mode: bool = True) -> Self:
        return self


class LoadedEncoder(NamedTuple):
    """What :func:`load_encoder` returns: ``module, preprocess = load_encoder(path)``."""

    module: nn.Module  # images (B, 3, S, S) float32 in [0, 1] -> features (B, D) float32
    preprocess: Preprocess  # PIL image -> (3, S, S)


def read_description(export_dir: str | Path) -> dict[str, Any]:
    """preprocess.json of an export directory (a local folder or a URI), checked against what
    this code writes."""
    path = loc.join(export_dir, PREPROCESS_FILE)
    try:
        description: dict[str, Any] = json.loads(loc.read_text(path))
    except (FileNotFoundError, IsADirectoryError):
        raise ExportError(
            f"not an export directory: {export_dir} has no {PREPROCESS_FILE}"
        ) from None
    found = (description.get("format"), description.get("format_version"))
    if found != (FORMAT, FORMAT_VERSION):
        raise ExportError(f"{path}: format {found}; this code reads {(FORMAT, FORMAT_VERSION)}")
    if description["preprocess"] != preprocessing(description["input_size"]):
        raise ExportError(
            f"{path}: its preprocessing is not the one this version of clinfo-ray implements"
        )
    return description


def load_encoder(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedEncoder:
    """The encoder and preprocessing of an export directory (``clinfo-ray export``) or of a
    checkpoint directory (a local folder or a URI: ``s3://...``), on ``device``.

    The module maps images (B, 3, S, S) float32 in [0, 1] to the encoder's features (B, D),
    before the projection head, in inference mode; from an export it runs ``encoder.pt2``,
    from a checkpoint the encoder itself (the same features). ``preprocess`` turns a PIL image
    into the (3, S, S) input as preprocess.json describes.
    """
    path, device = str(path), torch.device(device)
    if loc.is_file(loc.join(path, PREPROCESS_FILE)):
        description = read_description(path)
        program_file = loc.join(path, PROGRAM_FILE)
        remote = loc.is_uri(program_file)
        program = torch.export.load(
            io.BytesIO(loc.read_bytes(program_file)) if remote else program_file
        )
        if device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        return LoadedEncoder(
            LoadedProgram(program.module()), Preprocess(int(description["input_size"]))
        )
    if loc.is_file(loc.join(path, STATE_FILE)):
        model, config = load_model_from_checkpoint(path, map_location=device)
        # NCHW weights, as in the export: identical features from both
        encoder = model.encoder.to(memory_format=torch.contiguous_format).eval()
        return LoadedEncoder(encoder, Preprocess(config.data.image_size))
    raise ExportError(
        f"{path} is neither an export directory (no {PREPROCESS_FILE}) nor a checkpoint "
        f"(no {STATE_FILE})"
    )
