"""Write a checkpoint's encoder as an export directory (see :mod:`clinfo_ray.export`).

Each file is written to a temporary name and renamed, and preprocess.json is written last (it
is removed first when an export is replaced): a directory with preprocess.json is complete.
The program and the ONNX file (as onnxruntime reads it) are run once on random images against
the checkpoint's encoder before preprocess.json is written; an export whose outputs differ fails
instead. A checkpoint or an export directory named by a URI (``s3://...``) is downloaded to, or
written in, a local temporary folder; the export's files are then uploaded one object each,
preprocess.json last.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clinfo_ray.checkpointing import (
    CheckpointError,
    CheckpointState,
    load_model_from_checkpoint,
    read_checkpoint_state,
)
from clinfo_ray.config import TrainConfig
from clinfo_ray.export.description import (
    CONFIG_DIGEST_RULE,
    EXPORT_FILES,
    FORMAT,
    FORMAT_VERSION,
    HEAD_FILE,
    ONNX_FILE,
    PREPROCESS_FILE,
    PROGRAM_FILE,
    WEIGHTS_FILE,
    ExportError,
    config_digest,
    head_description,
    preprocessing,
    weights_description,
)
from clinfo_ray.model import ResNetEncoder
from clinfo_ray.storage import location as loc

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # the weights of a checkpoint directory (clinfo_ray.checkpointing)
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the `export` extra
CHECK_TOLERANCE = {PROGRAM_FILE: 1e-5, ONNX_FILE: 1e-4}  # max |exported - encoder| on the check


def _check_checkpoint(checkpoint_dir: Path) -> None:
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"checkpoint {checkpoint_dir} does not exist")
    read_checkpoint_state(checkpoint_dir)  # no state.json: incomplete
    if not (checkpoint_dir / MODEL_FILE).is_file():
        raise CheckpointError(f"not a complete checkpoint: {checkpoint_dir} has no {MODEL_FILE}")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} exists and is not a directory")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(
            f"--out {out_dir} exists and is not empty (--overwrite replaces an export there)"
        )


def _clear_out_dir(out_dir: Path) -> None:
    """The directory, made if new; an earlier export's files removed, preprocess.json first
    (any other file is left where it is)."""
    for name in EXPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)


def _check_onnx_available() -> None:
    missing = []
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"--onnx needs {', '.join(missing)}, not installed: pip install 'clinfo-ray[export]'"
        )


def _temporary(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}")  # the suffix kept: exporters may read it


def _save_tensors(module: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    # contiguous copies: safetensors stores dense row-major tensors only (channels-last weights
    # are not); state_dict() already leaves out parameter-free modules (Identity, ReLU). Bytes
    # written here, not by save_file, which makes the file readable by its owner only.
    tensors = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    _temporary(path).write_bytes(save(tensors, metadata=metadata))
    os.replace(_temporary(path), path)


def _max_difference(got: Any, want: torch.Tensor) -> float:
    return float((torch.as_tensor(got).float() - want).abs().max())


def _write_program(encoder: nn.Module, example: torch.Tensor, path: Path) -> Any:
    """torch.export of the encoder with a dynamic batch dimension; the ExportedProgram."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(encoder, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, _temporary(path))
    os.replace(_temporary(path), path)
    return program


def _write_onnx(program: Any, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        torch.onnx.export(
            program,
            f=str(_temporary(path)),
            dynamo=True,
            external_data=False,  # one file (an encoder is far below protobuf's 2 GB)
            input_names=["images"],
            output_names=["features"],
        )
    os.replace(_temporary(path), path)


def _check_outputs(
    program: Any, out_dir: Path, files: list[str], images: torch.Tensor, want: torch.Tensor
) -> dict[str, float]:
    """Max |output - encoder output| of the program (as exported: loading it back from disk
    would double an export's time) and of the ONNX file (as onnxruntime reads it)."""
    found: dict[str, float] = {}
    with torch.inference_mode():
        found[PROGRAM_FILE] = _max_difference(program.module()(images), want)
    if ONNX_FILE in files:
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(out_dir / ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        found[ONNX_FILE] = _max_difference(session.run(None, {"images": images.numpy()})[0], want)
    for name, diff in found.items():
        if not diff <= CHECK_TOLERANCE[name]:
            raise ExportError(
                f"{out_dir / name} differs from the checkpoint's encoder by {diff:.3g} "
                f"(more than {CHECK_TOLERANCE[name]:g}) on random images"
            )
    return found


def _description(
    checkpoint_dir: str,
    state: CheckpointState,
    config: TrainConfig,
    encoder: nn.Module,
    files: list[str],
    checked: dict[str, float],
    head: dict[str, Any] | None,
) -> dict[str, Any]:
    """preprocess.json's contents."""
    cfg, size = config.model, config.data.image_size
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "input_size": size,
        "feature_dim": cfg.feature_dim,
        "backbone": cfg.backbone,
        "small_image_stem": cfg.small_image_stem,
        "files": [*files, PREPROCESS_FILE],
        "program": {
            "file": PROGRAM_FILE,
            "format": "torch.export (torch.export.save)",
            "load": f"torch.export.load('{PROGRAM_FILE}').module()",
            "input": "float32 (B, 3, S, S), values in [0, 1], made as 'preprocess' says",
            "output": "float32 (B, feature_dim): the encoder's pooled features (no head)",
            "inference_only": "BatchNorm uses its running statistics; .eval() is not needed",
        },
        "onnx": {"file": ONNX_FILE, "input": "images", "output": "features"}
        if ONNX_FILE in files
        else None,
        "max_abs_difference_on_random_images": checked,
        "weights": weights_description(cfg, encoder),
        "head": head,
        "preprocess": preprocessing(size),
        "checkpoint": {
            "path": checkpoint_dir,
            "epoch": state.epoch,
            "step": state.step,
            "config_sha256": config_digest(state.config),
            "config_sha256_of": CONFIG_DIGEST_RULE,
            "loss_method": config.loss.method,
        },
        "torch_version": torch.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def export_encoder(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    with_head: bool = False,
    onnx: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the export directory of a checkpoint's encoder; return its preprocess.json.

    ``with_head``: also the projection head (``head.safetensors``). ``onnx``: also
    ``encoder.onnx``, checked with onnxruntime (needs the ``export`` extra). Raises
    CheckpointError (no such or incomplete checkpoint) or ExportError (``out_dir`` not empty
    without ``overwrite``, no onnx packages) before anything is written.
    """
    options = {"with_head": with_head, "onnx": onnx, "overwrite": overwrite}
    if not (loc.is_uri(checkpoint_dir) or loc.is_uri(out_dir)):
        local = Path(checkpoint_dir).resolve()
        return _export(local, Path(out_dir), source=str(local), **options)
    read_checkpoint_state(checkpoint_dir)  # no such or incomplete checkpoint: before any copy
    remote_out = loc.is_uri(out_dir)
    if remote_out and loc.list_names(out_dir) and not overwrite:
        raise ExportError(
            f"--out {out_dir} exists and is not empty (--overwrite replaces an export there)"
        )
    with loc.local_copy(checkpoint_dir) as local, tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "export" if remote_out else Path(out_dir)
        source = loc.absolute(checkpoint_dir)
        description = _export(local, target, source=source, **{**options, "overwrite": True})
        if remote_out:
            for name in EXPORT_FILES:  # preprocess.json first: incomplete until it is back
                loc.remove(loc.join(out_dir, name))
            for name in [*description["files"][:-1], PREPROCESS_FILE]:  # preprocess.json last
                loc.write_bytes(loc.join(out_dir, name), (target / name).read_bytes())
    return description


def _export(
    checkpoint_dir: Path,
    out_dir: Path,
    *,
    source: str,
    with_head: bool,
    onnx: bool,
    overwrite: bool,
) -> dict[str, Any]:
    """:func:`export_encoder` of a local checkpoint into a local folder; ``source``: the
    checkpoint as the user named it (recorded in preprocess.json)."""
    _check_checkpoint(checkpoint_dir)
    if onnx:
        _check_onnx_available()
    _check_out_dir(out_dir, overwrite)
    state = read_checkpoint_state(checkpoint_dir)
    model, config = load_model_from_checkpoint(checkpoint_dir)
    _clear_out_dir(out_dir)
    size = config.data.image_size
    # NCHW weights whatever model.channels_last: the export is for any device, and the same
    # memory format as load_encoder's module from a checkpoint gives identical features.
    encoder = model.encoder.to(memory_format=torch.contiguous_format).eval()
    metadata = {"format": FORMAT, "backbone": config.model.backbone, "input_size": str(size)}
    # a ResNet's keys without our wrapper's "net." prefix: the torchvision model's own
    plain = encoder.net if isinstance(encoder, ResNetEncoder) else encoder
    _save_tensors(plain, out_dir / WEIGHTS_FILE, metadata)
    files = [WEIGHTS_FILE, PROGRAM_FILE]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, size, size, generator=generator)  # (B, 3, S, S) in [0, 1]
    with torch.no_grad():
        want = encoder(images)  # (B, D)
    program = _write_program(encoder, images, out_dir / PROGRAM_FILE)
    if onnx:
        _write_onnx(program, out_dir / ONNX_FILE)
        files.append(ONNX_FILE)
    head = None
    if with_head:
        head = head_description(model.head)
        _save_tensors(model.head.mlp, out_dir / HEAD_FILE, {"format": FORMAT})
        files.append(HEAD_FILE)
    checked = _check_outputs(program, out_dir, files, images, want)
    description = _description(source, state, config, encoder, files, checked, head)
    path = out_dir / PREPROCESS_FILE
    _temporary(path).write_text(json.dumps(description, indent=2) + "\n")
    os.replace(_temporary(path), path)
    log.info(
        "exported %s (epoch %d, step %d) to %s", checkpoint_dir, state.epoch, state.step, out_dir
    )
    return description
