"""The one reading of a ``Device`` choice (``"auto"``, ``"cpu"``, ``"gpu"``): for faiss
(k-means, kNN) and for what Ray schedules (Train workers, encoder actors); and the memory of
this machine's GPUs. Imports faiss; Ray only when asked about it."""

from __future__ import annotations

import os
import shutil
import subprocess
import typing

import faiss

from clinfo_ray.config.sections import Device


def faiss_gpu_count() -> int:
    """GPUs faiss can use: 0 with the faiss-cpu wheel (no ``get_num_gpus``, or it says 0)."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def faiss_uses_gpu(device: Device) -> bool:
    """True when faiss should run on a GPU: "auto" when faiss sees one, "gpu" always (an error
    when it sees none, rather than a silent CPU run), "cpu" never."""
    if device == "auto":
        return faiss_gpu_count() > 0
    if device == "gpu":
        if faiss_gpu_count() == 0:
            raise RuntimeError(
                "faiss on the GPU was asked for (device 'gpu'), but faiss sees no GPU (faiss-cpu "
                "installed, or no CUDA device); install faiss-gpu or use device 'auto'"
            )
        return True
    if device == "cpu":
        return False
    choices = ", ".join(repr(d) for d in typing.get_args(Device))
    raise ValueError(f"device must be one of {choices}; got {device!r}")


def ray_uses_gpu(device: Device) -> bool:
    """True when Ray tasks or workers should ask for GPUs: "auto" when the connected Ray
    cluster offers one (a local Ray is started when none is connected), "gpu" always (an
    autoscaling cluster may add GPU nodes on demand), "cpu" never."""
    if device == "auto":
        import ray

        if not ray.is_initialized():
            ray.init()
        return ray.cluster_resources().get("GPU", 0) >= 1
    if device in ("gpu", "cpu"):
        return device == "gpu"
    choices = ", ".join(repr(d) for d in typing.get_args(Device))
    raise ValueError(f"device must be one of {choices}; got {device!r}")


def local_gpu_memory() -> list[int] | None:
    """Total memory in bytes of each GPU of this machine that CUDA_VISIBLE_DEVICES leaves
    visible, as nvidia-smi reports it (which, unlike asking torch, creates no CUDA context in
    the caller); None without nvidia-smi, when it fails (no NVIDIA driver) or lists none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    command = [exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        if not visible.strip():
            return None
        command.append(f"--id={visible.strip()}")  # indices or UUIDs, as CUDA takes them
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    mib = [int(line) for line in done.stdout.split() if line.strip().isdigit()]
    return [m * 2**20 for m in mib] or None
