"""A location is a local path or a filesystem URI (``s3://bucket/key``, ``gs://``, ``hdfs://``,
any URI ``pyarrow.fs.FileSystem.from_uri`` knows); this module is the one place that turns it
into a pyarrow filesystem and a path on it, and reads, lists and writes there.

S3 takes its endpoint and region from the standard environment, as the AWS SDKs do:
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (an S3-compatible server: MinIO, Ceph, moto),
``AWS_REGION`` or ``AWS_DEFAULT_REGION``; credentials come from the SDK's default chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, a web identity, the instance
metadata). With neither an endpoint nor a region set, pyarrow asks S3 for the bucket's region.
A URI with a query (``s3://bucket/key?endpoint_override=...&scheme=http``) is handed to pyarrow
as it is: the explicit settings win over the environment. Nothing is hard-wired to a provider.

Writes are atomic: a file is whole or absent. Locally it is written under a temporary name
beside it and renamed; on an object store a single PUT (or a completed multipart upload) is
atomic per object, so a folder that must look finished only when it is (a dataset) writes its
marker file (``manifest.json``) last.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

Location = str | Path

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
LOCAL = pafs.LocalFileSystem()
# Filesystems without folders of their own: a key's prefix is its folder, and pyarrow's
# create_dir would only write an empty marker object.
_OBJECT_STORES = ("s3", "gcs")


def scheme(location: Location) -> str:
    """The URI scheme, lower case (``"s3"``); ``""`` for a local path (``file://`` included)."""
    match = _SCHEME.match(str(location))
    name = match.group(1).lower() if match else ""
    return "" if name == "file" else name


def is_uri(location: Location) -> bool:
    """Whether ``location`` names a remote filesystem (any scheme but ``file://``)."""
    return bool(scheme(location))


def env_value(names: tuple[str, ...]) -> str | None:
    """The first of the environment variables ``names`` that is set and not empty."""
    return next((os.environ[n] for n in names if os.environ.get(n, "").strip()), None)


def _local_path(location: Location) -> str:
    text = str(location)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return os.path.abspath(os.path.expanduser(text))


def absolute(location: Location) -> str:
    """The location as one string that means the same on every node: a URI as given (without
    a trailing ``/``), a local path made absolute."""
    if is_uri(location):
        return str(location).rstrip("/")
    return _local_path(location)


def join(location: Location, *parts: str) -> str:
    """``location/part/...``: a URI stays a URI (``/`` joins, its query kept at the end)."""
    if not is_uri(location):
        return os.path.join(_local_path(location), *parts)
    base, sep, query = str(location).partition("?")
    joined = posixpath.join(base.rstrip("/"), *(p.strip("/") for p in parts))
    return joined + sep + query


def name(location: Location) -> str:
    """The last component (``shard.parquet`` of ``s3://b/data/shard.parquet``)."""
    return posixpath.basename(str(location).partition("?")[0].rstrip("/"))


def parent(location: Location) -> str:
    """The folder holding ``location``; a URI's parent keeps its scheme, bucket and query."""
    if not is_uri(location):
        return os.path.dirname(_local_path(location))
    base, sep, query = str(location).partition("?")
    return posixpath.dirname(base.rstrip("/")) + sep + query


def with_suffix(location: Location, suffix: str) -> str:
    """``t.parquet`` -> ``t.stats.json`` for ``suffix=".stats.json"``: the last component's
    extension replaced, a URI kept a URI."""
    text = str(location) if is_uri(location) else _local_path(location)
    base, sep, query = text.partition("?")
    stem, ext = posixpath.splitext(base)
    return (stem if ext else base) + suffix + sep + query


@functools.lru_cache(maxsize=16)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    # A region must be known when the endpoint is not AWS's: an S3-compatible server ignores it
    # but the SDK signs with one (us-east-1, as boto3 does) and never asks AWS for it.
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region or "us-east-1")


def resolve(location: Location) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) of a location: the path has no scheme (``bucket/key`` on S3,
    an absolute path locally); hand both to pyarrow, Ray Data or Ray Train."""
    text = str(location)
    if not is_uri(text):
        return LOCAL, _local_path(text)
    netloc = text.split("://", 1)[1].split("/", 1)[0]
    if scheme(text) == "s3" and "?" not in text and "@" not in netloc:
        endpoint, region = env_value(ENDPOINT_VARS), env_value(REGION_VARS)
        if endpoint or region:
            return _s3(endpoint, region), text.split("://", 1)[1].strip("/")
    filesystem, path = pafs.FileSystem.from_uri(text)
    return filesystem, path.rstrip("/")


def filesystem(location: Location) -> pafs.FileSystem:
    return resolve(location)[0]


def info(location: Location) -> pafs.FileInfo:
    fs, path = resolve(location)
    return fs.get_file_info(path)


def exists(location: Location) -> bool:
    return info(location).type != pafs.FileType.NotFound


def is_file(location: Location) -> bool:
    return info(location).type == pafs.FileType.File


def is_dir(location: Location) -> bool:
    return info(location).type == pafs.FileType.Directory


def list_names(location: Location) -> list[str]:
    """The sorted names of the entries directly inside a folder ([] when there is none)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(posixpath.basename(entry.path.rstrip("/")) for entry in found)


def list_files(location: Location, suffix: str = "") -> list[str]:
    """Every file under a folder (recursively) whose name ends with ``suffix``, sorted, as
    locations of the same kind; names under a hidden or ``_`` folder, or hidden or ``_``
    themselves (temporary and marker files), are left out."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    out = []
    for entry in found:
        relative = posixpath.relpath(entry.path, path).split("/")
        hidden = any(part.startswith((".", "_")) for part in relative)
        if entry.type == pafs.FileType.File and entry.path.endswith(suffix) and not hidden:
            out.append(join(location, *relative))
    return sorted(out)


def read_bytes(location: Location) -> bytes:
    """A whole file; FileNotFoundError when there is none (a file where a folder of its path
    should be included)."""
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except NotADirectoryError as err:
        raise FileNotFoundError(str(err)) from None


def read_text(location: Location) -> str:
    return read_bytes(location).decode("utf-8")


def open_input(location: Location) -> pa.NativeFile:
    """A random-access file (what ``pq.ParquetFile`` takes); the caller closes it."""
    fs, path = resolve(location)
    return fs.open_input_file(path)


def _make_parents(fs: pafs.FileSystem, path: str) -> None:
    if fs.type_name not in _OBJECT_STORES:
        fs.create_dir(path, recursive=True)


def resolve_files(locations: Sequence[Location]) -> tuple[pafs.FileSystem, list[str]]:
    """One filesystem and the paths on it of files that share it (a split's shards): what
    ``pq.read_table``, ``pyarrow.dataset`` and ``ray.data.read_parquet`` take."""
    if not locations:
        return LOCAL, []
    resolved = [resolve(location) for location in locations]
    kinds = {type(fs) for fs, _ in resolved}
    if len(kinds) > 1:
        raise ValueError(f"files on different filesystems: {locations[0]} ... {locations[-1]}")
    return resolved[0][0], [path for _, path in resolved]


def open_parquet(location: Location) -> pq.ParquetFile:
    """A Parquet file's reader (footer read, no data yet); use it as a context manager."""
    fs, path = resolve(location)
    return pq.ParquetFile(path, filesystem=fs)


def makedirs(location: Location) -> None:
    """Create the folder and its parents (nothing on an object store: a prefix needs no
    object)."""
    fs, path = resolve(location)
    _make_parents(fs, path)


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole file atomically: readers see the old file, the new one, or none."""
    fs, path = resolve(location)
    if fs is LOCAL or isinstance(fs, pafs.LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    _make_parents(fs, posixpath.dirname(path))
    with fs.open_output_stream(path) as out:  # one PUT (multipart when large): atomic
        out.write(data)


def write_text(location: Location, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


@contextlib.contextmanager
def local_output(location: Location) -> Iterator[Path]:
    """A local path to write a file at (by any library that wants a path; not created yet);
    when the block ends without error the file becomes ``location`` atomically (renamed, or
    uploaded as one object), and otherwise it is deleted. Local disk use: that one file."""
    fs, path = resolve(location)
    local = isinstance(fs, pafs.LocalFileSystem)
    scratch = None if local else tempfile.mkdtemp(prefix="clinfo-ray-")
    if local:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}"
        )
    else:
        tmp = os.path.join(str(scratch), posixpath.basename(path) or "file")
    try:
        yield Path(tmp)
        if local:
            os.replace(tmp, path)
        else:
            _make_parents(fs, posixpath.dirname(path))
            pafs.copy_files(tmp, path, source_filesystem=LOCAL, destination_filesystem=fs)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def remove(location: Location) -> None:
    """Delete a file or a whole folder; nothing when there is none."""
    fs, path = resolve(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def upload_dir(local_dir: str | Path, location: Location) -> None:
    """Copy a local folder's files to ``location`` (each file one atomic object)."""
    fs, path = resolve(location)
    _make_parents(fs, path)
    pafs.copy_files(
        _local_path(local_dir), path, source_filesystem=LOCAL, destination_filesystem=fs
    )


def download_dir(location: Location, local_dir: str | Path) -> Path:
    """Copy the folder at ``location`` into the local folder ``local_dir`` (made if missing)."""
    fs, path = resolve(location)
    target = _local_path(local_dir)
    os.makedirs(target, exist_ok=True)
    pafs.copy_files(path, target, source_filesystem=fs, destination_filesystem=LOCAL)
    return Path(target)


@contextlib.contextmanager
def local_copy(location: Location) -> Iterator[Path]:
    """A local folder holding the folder at ``location``: the folder itself when it is local,
    else a temporary download deleted when the block ends."""
    if not is_uri(location):
        yield Path(_local_path(location))
        return
    with tempfile.TemporaryDirectory(prefix="clinfo-ray-") as tmp:
        yield download_dir(location, tmp)
