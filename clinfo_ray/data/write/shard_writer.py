"""Read, check and write a source's images as Parquet shards, in parallel with Ray Data.

The source rows are first put in one seeded random order (``row_order.row_permutation``; the
seed is recorded as the manifest's ``row_order.permutation_seed``), so that neighbouring rows,
in a file and across files, are unrelated whatever order the source lists them in. Only the
order changes: which split a row is in was decided by the source.

Each Ray Data task takes one shard's worth of source rows (``shard_size``), reads every image,
decodes it once to prove it is an image, and writes the good rows of each split to its own file
``{split}-{shard:06d}.parquet``. It returns only a small summary (counts and skipped inputs), so
memory stays bounded by one shard per task however many images there are (10^6 is fine).

``out`` is a local path or a URI (``s3://bucket/emoji``). A local dataset is written into a
hidden temporary folder beside ``out`` and renamed to ``out`` only after ``manifest.json`` is
written; on an object store (no rename) each shard is one atomic object written straight into
``out`` and ``manifest.json`` is written last: either way a crash never leaves a folder that
looks complete (a folder without a manifest is not a dataset).
"""

from __future__ import annotations

import io
import logging
import shutil
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clinfo_ray.config import PrepareConfig
from clinfo_ray.data import columns as C
from clinfo_ray.data.manifest import Manifest
from clinfo_ray.data.row_order import row_permutation
from clinfo_ray.data.write.sources.source_table import (
    DATA,
    PATH,
    PrepareError,
    Skipped,
    SourceTable,
)
from clinfo_ray.storage import location as loc

log = logging.getLogger(__name__)

SHARD = "shard"  # int: which shard a source row goes to (a column only inside the writer)
DEFAULT_SHARD_SIZE = PrepareConfig.shard_size  # rows per file, the config's default
# A decompression bomb is an undecodable image here, not a warning.
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000


def check_image(blob: bytes) -> str | None:
    """``None`` when ``blob`` decodes as an image, else the reason it does not.

    JPEGs are decoded at a reduced scale (``draft``): the whole stream is still parsed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(blob)) as img:
                img.draft("RGB", (64, 64))
                img.load()
                if img.width < 1 or img.height < 1:
                    return "undecodable image: empty"
    except Exception as err:  # PIL raises many types for bad data; all mean "not an image"
        return f"undecodable image: {type(err).__name__}: {err}"
    return None


def _read(row: dict[str, Any]) -> tuple[bytes | None, str | None]:
    if row[DATA] is not None:
        return row[DATA], None
    try:
        return Path(row[PATH]).read_bytes(), None
    except OSError as err:
        return None, f"unreadable file: {type(err).__name__}: {err.strerror or err}"


def write_shard(batch: pa.Table, *, folder: str) -> pa.Table:
    """Ray Data task: read and check one shard's images, write one Parquet file per split."""
    rows = batch.to_pylist()
    shard = int(rows[0][SHARD])
    keep: dict[str, list[dict[str, Any]]] = {}
    skipped_source: list[str] = []
    skipped_reason: list[str] = []
    for row in rows:
        blob, reason = _read(row)
        if blob is not None:
            reason = check_image(blob)
        if reason is not None:
            skipped_source.append(row[PATH] or row[C.ID])
            skipped_reason.append(reason)
            continue
        out = {name: row[name] for name in C.SCHEMA.names if name != C.IMAGE}
        keep.setdefault(row[C.SPLIT], []).append({**out, C.IMAGE: blob})
    files, counts = [], []
    for split, good in sorted(keep.items()):
        name = f"{split}-{shard:06d}.parquet"
        table = pa.Table.from_pylist(good, schema=C.SCHEMA)
        # Encoded images do not compress: spend no CPU on them. A row group per stream piece:
        # the stream reads exactly the rows it uses (parquet_pieces).
        codecs = {n: ("none" if n == C.IMAGE else "zstd") for n in C.SCHEMA.names}
        with loc.local_output(loc.join(folder, name)) as partial:  # whole or absent
            pq.write_table(table, partial, compression=codecs, row_group_size=C.PIECE_ROWS)
        files.append(name)
        counts.append(len(good))
    return pa.table(
        {
            "files": [files],
            "counts": [counts],
            "skipped_source": [skipped_source],
            "skipped_reason": [skipped_reason],
        }
    )


def _shards(rows: pa.Table, shard_size: int) -> list[pa.Table]:
    """Slice the source rows into shards (one Ray Data block, hence one task, each)."""
    out = []
    for k, start in enumerate(range(0, rows.num_rows, shard_size)):
        part = rows.slice(start, shard_size)
        out.append(part.append_column(SHARD, pa.array([k] * part.num_rows, pa.int64())))
    return out


def _collect(summaries: list[dict[str, Any]]) -> tuple[dict[str, list[str]], list[Skipped]]:
    files: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    for s in summaries:
        for name in s["files"]:
            files.setdefault(name.split("-", 1)[0], []).append(name)
        skipped += [Skipped(*p) for p in zip(s["skipped_source"], s["skipped_reason"], strict=True)]
    return {k: sorted(v) for k, v in files.items()}, skipped


def write_dataset(
    source: SourceTable,
    out: str | Path,
    *,
    name: str,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    options: dict[str, object] | None = None,
    seed: int = 0,
) -> Manifest:
    """Write ``source`` as a dataset folder ``out`` and return its manifest (needs Ray).

    seed: the rows are written in ``row_permutation(n, seed)`` of the source's order.
    """
    import ray

    out = loc.absolute(out)
    if shard_size < 1:
        raise PrepareError(f"shard_size must be >= 1, got {shard_size}")
    if _taken(out) and not overwrite:
        raise PrepareError(f"{out} exists; pass --overwrite to replace it")
    if source.rows.num_rows == 0:
        raise PrepareError(f"{name}: the source lists no images")
    if loc.is_uri(out):  # no rename on an object store: shards in place, the manifest last
        loc.remove(out)
        tmp = out
    else:
        tmp = loc.join(loc.parent(out), f".{loc.name(out)}.tmp-{uuid.uuid4().hex[:8]}")
        Path(tmp).mkdir(parents=True)
    try:
        shuffled = source.rows.take(pa.array(row_permutation(source.rows.num_rows, seed)))
        shards = ray.data.from_arrow(_shards(shuffled, shard_size))
        written_ds = shards.map_batches(
            write_shard,  # type: ignore[arg-type]
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={"folder": tmp},
        )
        files, bad = _collect(written_ds.take_all())
        skipped = source.skipped + bad
        written = _written_rows(tmp, files)
        if not written:
            raise PrepareError(f"{name}: none of {source.rows.num_rows} images could be read")
        manifest = Manifest(
            source=name,
            rows={split: written.get(split, 0) for split in C.SPLITS},
            class_names=source.class_names,
            coarse_class_names=source.coarse_class_names,
            tag_vocabulary_size=_vocabulary_size(source, {s.source for s in bad}),
            skipped=[s.as_dict() for s in skipped],
            files=files,
            options=dict(options or {}),
            row_order={"permutation_seed": seed},
            val_group=source.val_group,
        )
        manifest.write(tmp)
        if tmp != out:
            if Path(out).exists():
                shutil.rmtree(out)
            Path(tmp).rename(out)
    except BaseException:
        if tmp == out:  # an object store: the shards of a failed write go too
            loc.remove(out)
        raise
    finally:
        if tmp != out and Path(tmp).exists():
            shutil.rmtree(tmp)
    log.info("%s: wrote %s to %s; skipped %d", name, manifest.rows, out, len(skipped))
    return manifest


def _taken(out: str) -> bool:
    """Whether ``out`` holds anything (on an object store an empty folder marker does not)."""
    if loc.is_uri(out):
        return loc.is_file(out) or bool(loc.list_names(out))
    return loc.exists(out)


def _written_rows(folder: str, files: dict[str, list[str]]) -> dict[str, int]:
    return {
        split: sum(loc.open_parquet(loc.join(folder, f)).metadata.num_rows for f in names)
        for split, names in files.items()
    }


def _vocabulary_size(source: SourceTable, bad: set[str]) -> int:
    rows = source.rows.select([C.ID, PATH, C.TAGS]).to_pylist()
    vocab: Counter[str] = Counter()
    for row in rows:
        if (row[PATH] or row[C.ID]) not in bad:
            vocab.update(row[C.TAGS] or [])
    return len(vocab)
