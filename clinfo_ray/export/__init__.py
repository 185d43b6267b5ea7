"""A checkpoint's encoder for use without clinfo-ray: ``clinfo-ray export``, ``load_encoder``.

An export directory holds::

    encoder.safetensors  the encoder's weights (no projection head); for a ResNet the keys load
                         strictly into the torchvision model preprocess.json's
                         weights.torchvision.code builds (resnet18(weights=None) with
                         fc = Identity(), and the small-image stem's conv1 and maxpool)
    encoder.pt2          a torch.export program: float32 images (B, 3, S, S) in [0, 1] ->
                         features (B, D); torch.export.load(path).module(), plain torch
    preprocess.json      how an image file becomes that input (Pillow calls, step by step),
                         input_size S, feature_dim D, the backbone, the checkpoint's epoch,
                         step and config digest, what each file holds
    encoder.onnx         (--onnx) the same program as ONNX, checked with onnxruntime
    head.safetensors     (--with-head) the projection head as a plain torch.nn.Sequential
"""

from clinfo_ray.export.description import ExportError, config_digest
from clinfo_ray.export.load import LoadedEncoder, LoadedProgram, Preprocess, load_encoder
from clinfo_ray.export.write import export_encoder

__all__ = [
    "ExportError",
    "LoadedEncoder",
    "LoadedProgram",
    "Preprocess",
    "config_digest",
    "export_encoder",
    "load_encoder",
]
