"""The one path from images to embeddings, over Ray Data: ``embed``, ``eval``, a study's
evaluation and clusters-from-checkpoint all build their rows here.

    images (dataset Parquet, or a folder of files)
      -> DecodeImages / DecodeFiles      CPU tasks: (id, split, label, image_u8 (B, 3, S, S))
      -> EncodeImages                    actor pool, one model load per actor: Arrow rows
      -> (id string, split string, label int32 or null, embedding fixed_size_list<float32>[D])

Decoding runs in its own CPU tasks so that GPU actors are not left waiting on PIL; the actors
are one per GPU on a GPU cluster, else half the CPUs (:func:`default_num_actors`). Images are
decoded at the encoder's input size (shorter side resized, centre square: the training stream's
decode without augmentation) and scaled to [0, 1] as training feeds them. A row that fails to
decode is dropped in its task (and logged there): its count is the source's rows minus the rows
that come out. The result is a lazy Dataset: :func:`clinfo_ray.evaluation.embed_output.
write_embeddings` writes it with ``write_parquet`` (nothing passes through the driver) and
:func:`clinfo_ray.evaluation.features.extract_split_features` gathers it for the probe.

The checkpoint, the dataset and the folder must be readable on every node (shared storage).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import torch
import torch.nn.functional as F

from clinfo_ray.config import EvalConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import read_manifest
from clinfo_ray.devices import ray_uses_gpu
from clinfo_ray.evaluation.decode_rows import FOLDER_SPLIT, IMAGE_U8, DecodeFiles, DecodeImages
from clinfo_ray.evaluation.encoder_source import EncoderSource
from clinfo_ray.storage import location as loc

EMBEDDING = "embedding"  # fixed_size_list<float32>[D]
# What a decode task reserves besides its batch: a Ray Data task worker with pyarrow and PIL
# (0.45 GiB resident when it starts; up to 0.75 GiB measured on Fashion-MNIST). See _decode.
DECODE_WORKER_MEMORY = 2**30
# What a folder's image files end with (lower case); other files (annotations, notes) are left.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def embedding_schema(dimension: int) -> pa.Schema:
    """The rows' schema: ``label`` is null where the image has none."""
    return pa.schema(
        [
            pa.field(C.ID, pa.string(), nullable=False),
            pa.field(C.SPLIT, pa.string(), nullable=False),
            pa.field(C.LABEL, pa.int32()),
            pa.field(EMBEDDING, pa.list_(pa.float32(), dimension), nullable=False),
        ]
    )


def location(path: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a local path (made absolute) or a URI (``s3://...``)."""
    return loc.resolve(path)


def _decode(ds: ray.data.Dataset, decode: Any, size: int, batch_size: int) -> ray.data.Dataset:
    """``decode`` over ``ds`` in CPU tasks, each reserving the memory it uses: the worker (no
    torch: :mod:`clinfo_ray.evaluation.decode_rows`), then the batch, decoded, and PIL's working
    copies. Asking for memory also keeps these tasks apart from the encoder actors, which ask
    for none: Ray Data fuses a task map into the next actor map when their resource requests
    agree, as they would on CPUs, and decoding would then share the actors' CPUs instead of
    taking those the actors leave free."""
    memory = DECODE_WORKER_MEMORY + 4 * batch_size * 3 * size * size
    return ds.map_batches(decode, batch_size=batch_size, batch_format="pyarrow", memory=memory)


@dataclass(frozen=True)
class DatasetImages:
    """The images of some splits of a prepared dataset, labelled by ``label_column``."""

    data_dir: str
    splits: tuple[str, ...]
    label_column: str = C.LABEL

    @classmethod
    def checked(
        cls, data_dir: str | Path, splits: Sequence[str] | None = None, label_column: str = C.LABEL
    ) -> DatasetImages:
        """Every split of the dataset by default; an unknown split fails naming the known ones
        (and a folder without a manifest, :class:`FileNotFoundError`)."""
        manifest = read_manifest(data_dir)
        for split in splits or ():
            if split not in manifest.files:
                raise ValueError(f"split: {split!r} is not in {sorted(manifest.files)}")
        return cls(str(data_dir), tuple(splits or manifest.files), label_column)

    def _files(self) -> dict[str, list[str]]:
        files = read_manifest(self.data_dir).files
        return {split: [loc.join(self.data_dir, f) for f in files[split]] for split in self.splits}

    def input_rows(self) -> dict[str, int]:
        """Rows of each split before decoding, from the Parquet footers."""
        return {
            split: sum(loc.open_parquet(f).metadata.num_rows for f in files)
            for split, files in self._files().items()
        }

    def describe(self) -> dict[str, Any]:
        return {"data": loc.absolute(self.data_dir), "label_column": self.label_column}

    def decoded(self, size: int, batch_size: int) -> ray.data.Dataset:
        files = [f for names in self._files().values() for f in names]
        if not files:
            raise ValueError(f"{self.data_dir}: no Parquet files in split(s) {list(self.splits)}")
        columns = [C.ID, C.IMAGE, self.label_column, C.SPLIT]
        fs, paths = loc.resolve_files(files)  # a local folder or a bucket
        ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(columns)  # pushed down
        return _decode(ds, DecodeImages(size, self.label_column), size, batch_size)


@dataclass(frozen=True)
class FolderImages:
    """Every image file under ``folder`` (recursively), with no annotations: id = relative
    path, split :data:`FOLDER_SPLIT`, no label."""

    folder: str

    @classmethod
    def checked(cls, folder: str | Path) -> FolderImages:
        images = cls(str(folder))
        if not images.paths:
            raise FileNotFoundError(
                f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it"
            )
        return images

    @functools.cached_property
    def paths(self) -> list[str]:
        """The image files, sorted, listed once (a missing folder: :class:`FileNotFoundError`)."""
        fs, root = location(self.folder)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{self.folder}: not a folder")
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_SUFFIXES)
        )

    def input_rows(self) -> dict[str, int]:
        return {FOLDER_SPLIT: len(self.paths)}

    def describe(self) -> dict[str, Any]:
        return {"images": location(self.folder)[1]}

    def decoded(self, size: int, batch_size: int) -> ray.data.Dataset:
        fs, root = location(self.folder)
        ds = ray.data.read_binary_files(self.paths, include_paths=True, filesystem=fs)
        return _decode(ds, DecodeFiles(size, root), size, batch_size)


ImageSource = DatasetImages | FolderImages


def embedding_table(batch: dict[str, np.ndarray], vectors: np.ndarray) -> pa.Table:
    """Arrow rows of a decoded batch and its (B, D) float32 vectors; label -1 becomes null."""
    dimension = vectors.shape[1]
    labels = np.asarray(batch[C.LABEL], dtype=np.int64)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    columns = [
        pa.array(np.asarray(batch[C.ID]).tolist(), pa.string()),
        pa.array(np.asarray(batch[C.SPLIT]).tolist(), pa.string()),
        pa.array(labels.astype(np.int32), pa.int32(), mask=labels < 0),
        pa.FixedSizeListArray.from_arrays(flat, dimension),
    ]
    return pa.Table.from_arrays(columns, schema=embedding_schema(dimension))


class EncodeImages:
    """Ray Data actor: decoded images -> embedding rows (:func:`embedding_table`), L2-normalised
    with ``normalize``. The encoder is loaded once, when the actor starts."""

    def __init__(
        self, encoder: EncoderSource, use_gpu: bool, threads: int, normalize: bool = False
    ) -> None:
        if not use_gpu:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.size, self.normalize = encoder.input_size, normalize
        self.encode = encoder.load(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        images = torch.from_numpy(np.ascontiguousarray(batch[IMAGE_U8]))
        if len(images) == 0:  # every image of the block undecodable: D from one blank image
            images = torch.zeros((1, 3, self.size, self.size), dtype=torch.uint8)
        with torch.inference_mode():
            x = images.to(self.device, non_blocking=True).float().div_(255.0)  # (B, 3, S, S)
            vectors = self.encode(x)  # (B, D)
            if self.normalize:
                vectors = F.normalize(vectors, dim=-1)
        return embedding_table(batch, vectors[: len(batch[C.ID])].cpu().numpy())


def default_num_actors(use_gpu: bool) -> int:
    """One actor per GPU of the cluster; on CPUs, half the cluster's CPUs (decoding gets the
    rest), at least one."""
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // 2)


def embedding_dataset(
    images: ImageSource,
    encoder: EncoderSource,
    settings: EvalConfig,
    *,
    normalize: bool = False,
    cpus_per_actor: float = 1.0,
) -> ray.data.Dataset:
    """The lazy Dataset of embedding rows of ``images``. From ``settings``: ``batch_size``
    images per encoder call, ``device`` of the actors, ``num_actors`` (default
    :func:`default_num_actors`; on GPUs one GPU each). Needs a running Ray."""
    use_gpu = ray_uses_gpu(settings.device)
    num_actors = settings.num_actors or default_num_actors(use_gpu)
    decoded = images.decoded(encoder.input_size, settings.batch_size)
    return decoded.map_batches(
        EncodeImages,
        fn_constructor_kwargs={
            "encoder": encoder,
            "use_gpu": use_gpu,
            "threads": max(1, int(cpus_per_actor)),
            "normalize": normalize,
        },
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=cpus_per_actor,
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(n, D) float32 of an ``embedding`` column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dimension = array.type.list_size
    return array.flatten().to_numpy().reshape(-1, dimension)
