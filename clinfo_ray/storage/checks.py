"""The checks a command runs on the locations it names before Ray starts, and the one-line
reason an object store gives for refusing (a missing bucket, no credentials, access denied, an
endpoint that does not answer).

Every failure is a :class:`LocationError` whose text names the config key and the location:
``data.dataset_dir: s3://bucket/emoji: no bucket 'bucket'``.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Literal

import pyarrow.fs as pafs

from clinfo_ray.storage import location as loc

# Where the AWS SDK's default chain finds credentials, short of the instance metadata service.
_CREDENTIAL_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_BUCKET_MISSING = re.compile(r"Bucket '([^']*)' not found|NoSuchBucket|NO_SUCH_BUCKET")
_DENIED = re.compile(r"ACCESS_DENIED|AccessDenied|Forbidden|HTTP response code: 403")
_REFUSED = re.compile(
    r"InvalidAccessKeyId|SignatureDoesNotMatch|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH"
)
_UNREACHABLE = re.compile(
    r"NETWORK_CONNECTION|Could not connect|Could not resolve|Couldn't connect|curlCode|timed out"
)


class LocationError(ValueError):
    """A location a command needs is missing or cannot be used; the text is one line naming
    the config key (``.key``) and the location."""

    def __init__(self, key: str, location: object, reason: str) -> None:
        super().__init__(f"{key}: {location}: {reason}")
        self.key = key
        self.location = str(location)


def bucket_of(location: loc.Location) -> str:
    """``s3://bucket`` of ``s3://bucket/a/b`` (the root of any URI); ``""`` for a local path."""
    if not loc.is_uri(location):
        return ""
    text = str(location).partition("?")[0]
    head, _, rest = text.partition("://")
    return f"{head}://{rest.split('/', 1)[0]}"


def reason(err: BaseException, location: loc.Location = "") -> str:
    """One line saying why a filesystem call on ``location`` failed."""
    text = " ".join(str(err).split())
    missing = _BUCKET_MISSING.search(text)
    if missing:
        bucket = missing.group(1) or bucket_of(location).partition("://")[2]
        return f"no bucket {bucket!r}"
    if _DENIED.search(text):
        return "access denied (check the credentials and the bucket's permissions)"
    if _REFUSED.search(text):
        return "the credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
    if _UNREACHABLE.search(text):
        endpoint = loc.env_value(loc.ENDPOINT_VARS) if loc.scheme(location) == "s3" else None
        where = f" {endpoint}" if endpoint else ""
        return f"cannot reach the storage endpoint{where}"
    if isinstance(err, FileNotFoundError):
        return "does not exist"
    return text or type(err).__name__


def credentials_source() -> str | None:
    """Where S3 credentials will come from, or None when the SDK has nowhere to look (no
    credential variable, no shared credentials file, instance metadata turned off)."""
    for name in _CREDENTIAL_VARS:
        if os.environ.get(name, "").strip():
            return name
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    if os.path.isfile(os.path.expanduser(shared)):
        return shared
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() != "true":
        return "the instance metadata service"
    return None


def check_credentials(key: str, location: loc.Location) -> None:
    """An ``s3://`` location needs credentials (unless its URI says ``anonymous=true``)."""
    if loc.scheme(location) != "s3" or "anonymous=true" in str(location).lower():
        return
    netloc = str(location).split("://", 1)[1].split("/", 1)[0]
    if "@" not in netloc and credentials_source() is None:
        raise LocationError(
            key,
            location,
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "AWS_PROFILE, or a web identity)",
        )


def _info(key: str, location: loc.Location) -> pafs.FileInfo:
    check_credentials(key, location)
    try:
        found = loc.info(location)
        if found.type == pafs.FileType.NotFound and loc.is_uri(location):
            root = bucket_of(location)
            if root and loc.info(root).type == pafs.FileType.NotFound:
                raise LocationError(key, location, f"no bucket {root.partition('://')[2]!r}")
        return found
    except (OSError, ValueError) as err:
        if isinstance(err, LocationError):
            raise
        raise LocationError(key, location, reason(err, location)) from None


def check_file(key: str, location: loc.Location) -> None:
    """``location`` must be a readable file."""
    if _info(key, location).type != pafs.FileType.File:
        raise LocationError(key, location, "no such file")


def check_folder(key: str, location: loc.Location, marker: str | None = None) -> None:
    """``location`` must be a folder, holding ``marker`` when given (``manifest.json``: a
    finished dataset), and readable."""
    found = _info(key, location).type
    if found != pafs.FileType.Directory:
        raise LocationError(key, location, "no such folder")
    if marker is not None:
        try:
            has_marker = loc.is_file(loc.join(location, marker))
            if has_marker:
                loc.read_bytes(loc.join(location, marker))  # readable, not only listable
        except OSError as err:
            raise LocationError(key, location, reason(err, location)) from None
        if not has_marker:
            raise LocationError(key, location, f"no {marker}; not a prepared clinfo-ray dataset")


def check_writable(key: str, location: loc.Location) -> None:
    """``location`` (a folder, which may not exist yet) can be written: on an object store a
    small probe object is written under it and deleted again; locally its folder is made."""
    if not loc.is_uri(location):
        try:
            os.makedirs(loc.absolute(location), exist_ok=True)
        except OSError as err:
            raise LocationError(key, location, err.strerror or str(err)) from None
        return
    _info(key, location)  # credentials, bucket, endpoint
    probe = loc.join(location, f".clinfo-ray-write-check-{uuid.uuid4().hex[:8]}")
    try:
        loc.write_bytes(probe, b"")
        loc.remove(probe)
    except OSError as err:
        raise LocationError(key, location, reason(err, location)) from None


Need = Literal["folder", "file", "output"]


def check_remote(key: str, location: loc.Location | None, need: Need, marker: str = "") -> None:
    """The checks of a URI before Ray starts: ``folder`` (holding ``marker`` when given),
    ``file``, or ``output`` (writable). Nothing for a local path or None: the local readers
    and writers already fail in one line naming what is missing."""
    if location is None or not loc.is_uri(location):
        return
    if need == "folder":
        check_folder(key, location, marker or None)
    elif need == "file":
        check_file(key, location)
    else:
        check_writable(key, location)
