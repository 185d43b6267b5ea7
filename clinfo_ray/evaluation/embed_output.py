"""``clinfo-ray embed``'s output: the embedding rows as Parquet shards, and a manifest beside them.

    OUT/*.parquet     id string, split string, label int32 (null: none), embedding
                      fixed_size_list<float32>[D]; rows in no particular order
    OUT/manifest.json the encoder's identity, input size, D, normalize, rows per split, the
                      undecodable images skipped, the columns, the command; written last

The shards are written by Ray Data's ``write_parquet`` from the stream of
:func:`clinfo_ray.evaluation.embed.embedding_dataset` (write tasks take the actors' blocks from
the object store); nothing passes through the driver, whose memory stays flat in the number of
images. The counts are then read back from the shards (one file's ``split`` column at a time):
the rows written, and the source's rows minus those, the images that failed to decode. Exact:
a decode task retried by Ray is not counted twice, as a counter kept by the tasks would be.
The manifest is written last and atomically (renamed into place, or one object in a bucket):
an OUT with a manifest is complete. OUT may be a local folder or a URI (``s3://...``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clinfo_ray.config import EvalConfig
from clinfo_ray.data import columns as C
from clinfo_ray.evaluation.embed import (
    EMBEDDING,
    ImageSource,
    embedding_dataset,
    location,
)
from clinfo_ray.evaluation.encoder_source import EncoderSource
from clinfo_ray.storage import location as loc

MANIFEST = "manifest.json"
FORMAT = "clinfo-ray embeddings"
FORMAT_VERSION = 1
# Rows per Parquet file (Ray Data bundles the actors' batches up to this before a write task).
ROWS_PER_FILE = 50_000
_OURS = (".parquet", MANIFEST, f".{MANIFEST}.tmp")  # what an earlier embed leaves in OUT


class EmbedOutputError(ValueError):
    """OUT cannot take the embeddings (not empty, and not to be overwritten)."""


def check_out(out: str, *, overwrite: bool = False) -> list[str]:
    """Check that OUT can take the embeddings; the files to remove first (an earlier output's,
    the manifest first). OUT must be absent or empty; with ``overwrite``, it may hold an earlier
    embed output (its Parquet files and manifest). Anything else in it fails: ``--overwrite``
    never deletes files embed did not write."""
    fs, root = location(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type != pafs.FileType.Directory:
        raise EmbedOutputError(f"--out {out}: exists and is not a folder")
    entries = fs.get_file_info(pafs.FileSelector(root))
    if entries and not overwrite:
        raise EmbedOutputError(f"--out {out}: not empty (--overwrite replaces an earlier embed)")
    foreign = [
        e.base_name
        for e in entries
        if e.type != pafs.FileType.File or not e.base_name.endswith(_OURS)
    ]
    if foreign:
        raise EmbedOutputError(
            f"--out {out}: holds {foreign[0]!r}, which embed did not write; not overwriting"
        )
    return [e.path for e in sorted(entries, key=lambda e: e.base_name != MANIFEST)]


def _read_back(out: str) -> tuple[Counter[str], pa.Schema | None, list[str]]:
    """Rows per split, the schema (None: no shards) and the file names of the shards."""
    fs, root = location(out)
    entries = fs.get_file_info(pafs.FileSelector(root))
    files = sorted(e.path for e in entries if e.base_name.endswith(".parquet"))
    rows: Counter[str] = Counter()
    schema = None
    for path in files:  # one file at a time: the driver holds one split column at most
        with fs.open_input_file(path) as handle:
            shard = pq.ParquetFile(handle)
            schema = shard.schema_arrow
            counts = pc.value_counts(shard.read(columns=[C.SPLIT]).column(C.SPLIT))
            for item in counts.to_pylist():
                rows[item["values"]] += item["counts"]
    return rows, schema, [path.rsplit("/", 1)[-1] for path in files]


def _write_manifest(out: str, manifest: dict[str, Any]) -> None:
    # renamed into place on a local disk, one object in a bucket: whole or not at all
    loc.write_text(loc.join(out, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def write_embeddings(
    images: ImageSource,
    encoder: EncoderSource,
    settings: EvalConfig,
    out: str,
    *,
    normalize: bool = False,
    command: str = "",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every image of ``images`` with ``encoder`` into Parquet shards in ``out`` and write
    its manifest (see the module's docstring); returns the manifest. ``settings``: the actors'
    ``batch_size``, ``device``, ``num_actors``. Needs a running Ray."""
    fs, root = location(out)
    for path in check_out(out, overwrite=overwrite):  # the manifest first: OUT is incomplete
        fs.delete_file(path)
    inputs = images.input_rows()
    started = time.perf_counter()
    dataset = embedding_dataset(images, encoder, settings, normalize=normalize)
    dataset.write_parquet(root, filesystem=fs, min_rows_per_file=ROWS_PER_FILE)
    seconds = time.perf_counter() - started
    rows, schema, files = _read_back(out)
    skipped = {split: inputs[split] - rows.get(split, 0) for split in inputs}
    if any(n < 0 for n in skipped.values()) or set(rows) - set(inputs):
        raise RuntimeError(f"{out}: rows written {dict(rows)} exceed the source's {inputs}")
    if schema is None or not sum(rows.values()):
        raise ValueError(f"no decodable images in {images.describe()}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": encoder.identity(),
        "input_size": encoder.input_size,
        "dimension": schema.field(EMBEDDING).type.list_size,
        "normalize": normalize,
        "source": images.describe(),
        "rows": {split: rows.get(split, 0) for split in inputs},
        "skipped_undecodable": sum(skipped.values()),
        "skipped_by_split": skipped,
        "columns": [{"name": field.name, "type": str(field.type)} for field in schema],
        "files": files,
        "command": command,
        "seconds": round(seconds, 3),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_manifest(out, manifest)
    return manifest
