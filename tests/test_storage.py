"""clinfo_ray.storage: one set of operations on a local folder and on a bucket of the session's
S3 server on loopback (moto), and the one-line errors of the checks run before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from clinfo_ray.storage import checks
from clinfo_ray.storage import location as loc
from tests import s3_server


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "place")
    return str(request.getfixturevalue("s3_prefix"))


def test_paths_and_uris_join_the_same_way(tmp_path: Path) -> None:
    assert loc.join("s3://b/runs/", "x", "m.json") == "s3://b/runs/x/m.json"
    assert loc.join("s3://b/d?scheme=http", "m.json") == "s3://b/d/m.json?scheme=http"
    assert loc.parent("s3://b/d/m.json") == "s3://b/d" and loc.name("s3://b/d/m.json") == "m.json"
    assert loc.join(tmp_path, "a") == str(tmp_path / "a")
    assert loc.absolute("file://" + str(tmp_path)) == str(tmp_path)
    assert loc.is_uri("gs://b/x") and not loc.is_uri("relative/dir") and not loc.is_uri("file:///x")
    assert checks.bucket_of("s3://b/d/m.json") == "s3://b" and checks.bucket_of("/x") == ""


def test_s3_resolves_to_the_endpoint_of_the_environment(s3_bucket: str) -> None:
    fs, path = loc.resolve(f"{s3_bucket}/a/b/")
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_server.BUCKET}/a/b"
    local_fs, local_path = loc.resolve("rel")
    assert isinstance(local_fs, pafs.LocalFileSystem) and Path(local_path).is_absolute()


def test_write_read_list_and_remove(folder: str) -> None:
    assert not loc.exists(folder) and loc.list_names(folder) == []
    loc.write_text(loc.join(folder, "sub", "a.txt"), "first")
    loc.write_bytes(loc.join(folder, "b.bin"), b"\x00\x01")
    loc.write_text(loc.join(folder, "sub", "a.txt"), "second")  # replaced whole
    assert loc.read_text(loc.join(folder, "sub", "a.txt")) == "second"
    assert loc.read_bytes(loc.join(folder, "b.bin")) == b"\x00\x01"
    assert loc.list_names(folder) == ["b.bin", "sub"]  # no temporary file left beside them
    assert loc.is_dir(folder) and loc.is_file(loc.join(folder, "b.bin"))
    with loc.open_input(loc.join(folder, "b.bin")) as f:
        assert f.size() == 2
    loc.remove(loc.join(folder, "sub"))
    assert loc.list_names(folder) == ["b.bin"]
    with pytest.raises(FileNotFoundError):
        loc.read_bytes(loc.join(folder, "none"))


def test_local_output_is_whole_or_absent(folder: str) -> None:
    target = loc.join(folder, "t.bin")
    with pytest.raises(RuntimeError), loc.local_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not loc.exists(target)
    with loc.local_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert loc.read_bytes(target) == b"whole" and loc.list_names(folder) == ["t.bin"]


def test_folders_go_up_and_down(folder: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "x.txt").write_text("x")
    (src / "inner" / "y.txt").write_text("y")
    loc.upload_dir(src, loc.join(folder, "copy"))
    assert loc.read_text(loc.join(folder, "copy", "inner", "y.txt")) == "y"
    with loc.local_copy(loc.join(folder, "copy")) as local:
        assert (local / "x.txt").read_text() == "x" and (local / "inner" / "y.txt").is_file()


def test_checks_name_the_key_and_the_uri(s3_prefix: str) -> None:
    loc.write_text(loc.join(s3_prefix, "data", "manifest.json"), "{}")
    loc.write_text(loc.join(s3_prefix, "other", "x.parquet"), "")
    checks.check_folder("data.dataset_dir", loc.join(s3_prefix, "data"), "manifest.json")
    checks.check_writable("run.output_dir", loc.join(s3_prefix, "runs"))
    assert loc.list_names(loc.join(s3_prefix, "runs")) == []  # the write probe is gone
    cases = {
        "s3://no-such-bucket/d": "no bucket 'no-such-bucket'",
        loc.join(s3_prefix, "other"): "no manifest.json; not a prepared clinfo-ray dataset",
        loc.join(s3_prefix, "none"): "no such folder",
    }
    for uri, why in cases.items():
        with pytest.raises(checks.LocationError) as err:
            checks.check_folder("data.dataset_dir", uri, "manifest.json")
        assert str(err.value) == f"data.dataset_dir: {uri}: {why}"
    with pytest.raises(checks.LocationError, match=r"^run.output_dir: s3://no-such-bucket/r: no"):
        checks.check_writable("run.output_dir", "s3://no-such-bucket/r")


def test_no_credentials_and_an_unreachable_endpoint(
    s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as env:
        env.delenv("AWS_ACCESS_KEY_ID")
        with pytest.raises(checks.LocationError, match="no S3 credentials: set AWS_ACCESS_KEY_ID"):
            checks.check_writable("run.output_dir", s3_prefix)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    with pytest.raises(checks.LocationError) as err:
        checks.check_file("clusters.table_path", f"{s3_prefix}/t.parquet")
    assert str(err.value) == (
        f"clusters.table_path: {s3_prefix}/t.parquet: cannot reach the storage endpoint "
        "http://127.0.0.1:9"
    )


def test_access_denied(s3_prefix: str, authentication_on: None) -> None:
    with pytest.raises(checks.LocationError) as err:
        checks.check_folder("data.dataset_dir", s3_prefix, "manifest.json")
    assert str(err.value).startswith(f"data.dataset_dir: {s3_prefix}: access denied")
