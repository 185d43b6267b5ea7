"""The cluster manifests of deploy/: valid YAML with the keys their tools require, and consistent
with this repository (a real job script, a bundled config whose overrides load, the pinned Ray
version, enough GPUs and CPUs for the run they start, the shared folder mounted where the run
reads and writes). Nothing here talks to Kubernetes or a cloud: the manifests were never run.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinfo_ray.commands import train as train_command
from clinfo_ray.commands.flags import flag_overrides
from clinfo_ray.config import TrainConfig, bundled_configs, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAYJOB = DEPLOY / "kuberay-rayjob.yaml"
CLUSTER = DEPLOY / "cluster-aws.yaml"
RAYJOB_S3 = DEPLOY / "kuberay-rayjob-s3.yaml"  # the bucket instead of a volume
DOCKERFILE = DEPLOY / "Dockerfile"
DOC = ROOT / "docs" / "multinode.md"


def _pinned_ray() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ray version"
    return match.group(1)


def _image_workdir() -> str:
    """The folder the image installs the project in (the Dockerfile's WORKDIR)."""
    match = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert match, "deploy/Dockerfile has no WORKDIR"
    return match.group(1).rstrip("/")


def _train_config(command: list[str]) -> TrainConfig:
    """The config a ``python .../jobs/train.py ARGS`` command trains: parsed by the command's
    own parser and loaded as it loads it (every --set key and value checked)."""
    assert command[0] == "python", command
    script = command[1]
    workdir = _image_workdir()
    relative = script.removeprefix(workdir + "/") if script.startswith("/") else script
    assert relative == "jobs/train.py", f"{script}: not the image's jobs/train.py"
    assert (ROOT / relative).is_file()
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(command[2:])
    assert args.config in bundled_configs(), f"--config {args.config}: not a bundled config"
    return load_config(args.config, flag_overrides(args))


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_template["spec"]["containers"]
    assert containers, "a pod template without containers"
    return containers


def _mounts(pod_template: dict[str, Any]) -> dict[str, str]:
    """mountPath -> the persistentVolumeClaim's claimName, for the pod's PVC mounts."""
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_template["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for c in _containers(pod_template)
        for m in c.get("volumeMounts", [])
        if m["name"] in claims
    }


def _under(path: str, folders: set[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


# -- KubeRay RayJob --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    return yaml.safe_load(RAYJOB.read_text())


def test_rayjob_has_the_keys_kuberay_requires(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["name"]
    spec = rayjob["spec"]
    assert spec["entrypoint"].strip()
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and _containers(head["template"])
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert _containers(group["template"])
    # rayStartParams values are strings in the CRD
    for params in [
        head["rayStartParams"],
        *(g["rayStartParams"] for g in cluster["workerGroupSpecs"]),
    ]:
        assert all(isinstance(v, str) for v in params.values()), params


def test_rayjob_runs_the_pinned_ray_with_token_auth(rayjob: dict[str, Any]) -> None:
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pinned_ray()
    assert cluster["authOptions"]["mode"] == "token"
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for t in templates for c in _containers(t)}
    assert len(images) == 1, f"head and workers must run one image: {images}"


def test_rayjob_entrypoint_trains_a_bundled_config_on_its_gpus(rayjob: dict[str, Any]) -> None:
    spec = rayjob["spec"]
    cfg = _train_config(shlex.split(spec["entrypoint"]))
    assert cfg.run.device == "gpu"
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"  # driver only
    gpus = cpus = 0.0
    for group in cluster["workerGroupSpecs"]:
        limits = _containers(group["template"])[0]["resources"]["limits"]
        pod_gpus, pod_cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
        # a pod's Train workers (one per GPU) leave CPUs for Ray Data's tasks
        assert pod_cpus > pod_gpus * cfg.run.cpus_per_worker, group["groupName"]
        gpus += group["replicas"] * pod_gpus
        cpus += group["replicas"] * pod_cpus
    assert gpus == cfg.run.num_workers, "one GPU per Train worker, none idle"
    # the dataset and the runs live on the shared volume, mounted alike on every pod
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    mounts = [_mounts(t) for t in templates]
    assert all(m == mounts[0] for m in mounts) and mounts[0], mounts
    shared = set(mounts[0])
    assert _under(cfg.data.dataset_dir, shared) and _under(cfg.run.output_dir, shared)


def test_rayjob_learning_rate_follows_the_linear_rule(rayjob: dict[str, Any]) -> None:
    """The manifest's optim.lr is SimCLR's LARS rule for its global batch, as its comment says."""
    cfg = _train_config(shlex.split(rayjob["spec"]["entrypoint"]))
    assert cfg.optim.name == "lars"
    assert cfg.optim.lr == pytest.approx(0.3 * cfg.global_batch_size / 256)


def test_the_bucket_rayjob_shares_nothing_but_the_bucket(rayjob: dict[str, Any]) -> None:
    """The S3 variant: the dataset and the run are s3:// URIs, no pod mounts a persistent
    volume, and every Ray container takes the credentials from one Kubernetes Secret; the
    rest (image, token auth, GPUs per Train worker) as the volume manifest."""
    job = yaml.safe_load(RAYJOB_S3.read_text())
    cfg = _train_config(shlex.split(job["spec"]["entrypoint"]))
    assert cfg.run.device == "gpu" and cfg.run.max_failures > 0
    assert cfg.data.dataset_dir.startswith("s3://") and cfg.run.output_dir.startswith("s3://")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["rayVersion"] == _pinned_ray()
    groups = cluster["workerGroupSpecs"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in groups)]
    assert not any(_mounts(t) for t in templates), "a persistent volume in the bucket manifest"
    volume_job = rayjob["spec"]["rayClusterSpec"]
    assert [c["image"] for t in templates for c in _containers(t)] == [
        _containers(volume_job["headGroupSpec"]["template"])[0]["image"]
    ] * len(templates)
    for container in (c for t in templates for c in _containers(t)):
        secrets = {e["secretRef"]["name"] for e in container.get("envFrom", [])}
        assert len(secrets) == 1, container["name"]  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
        assert {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"} in container["env"]
    secret = secrets.pop()
    header = RAYJOB_S3.read_text().split("apiVersion:")[0]
    assert f"kubectl create secret generic {secret}" in header
    assert "AWS_ACCESS_KEY_ID" in header and "AWS_SECRET_ACCESS_KEY" in header
    gpus = sum(
        g["replicas"] * int(_containers(g["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in groups
    )
    assert gpus == cfg.run.num_workers
    assert cfg.optim.lr == pytest.approx(0.3 * cfg.global_batch_size / 256)


# -- Ray cluster launcher ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_config_passes_rays_schema(cluster: dict[str, Any]) -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)
    assert cluster["provider"]["type"] == "aws"
    assert cluster["head_node_type"] in cluster["available_node_types"]
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}


def test_cluster_runs_the_project_image_with_token_auth_and_shared_storage(
    cluster: dict[str, Any], rayjob: dict[str, Any]
) -> None:
    job_image = _containers(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])[0]
    assert cluster["docker"]["image"] == job_image["image"]
    starts = cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in ray_starts)
    assert "-e RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert "~/.ray/auth_token" in cluster["file_mounts"]  # the token, on every node
    assert "-v /mnt/shared:/mnt/shared" in cluster["docker"]["run_options"]
    assert any("/mnt/shared" in c for c in cluster["initialization_commands"])
    gpu_nodes = [t for n, t in cluster["available_node_types"].items() if n != "head"]
    assert sum(t["max_workers"] for t in gpu_nodes) * 8 >= 64  # p5.48xlarge: 8 GPUs a node


def test_cluster_header_submits_a_valid_training_command() -> None:
    """The `ray job submit` example in the config's header trains a bundled config."""
    header = " ".join(
        line.lstrip("# ").rstrip("\\").strip()
        for line in CLUSTER.read_text().splitlines()
        if line.startswith("#")
    )
    submit = header[header.index("ray job submit") :]
    command = shlex.split(submit.split(" -- ", 1)[1].split(" ray down")[0])
    cfg = _train_config(command)
    assert cfg.run.device == "gpu" and _under(cfg.data.dataset_dir, {"/mnt/shared"})


# -- the image and the doc -------------------------------------------------------------------


def test_dockerfile_builds_on_the_pinned_ray_and_ships_the_jobs() -> None:
    from clinfo_ray.tuning.space import SPACES_DIR

    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M)
    assert base and base.group(1) == f"rayproject/ray:{_pinned_ray()}-py311-gpu"
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", text, re.M))
    # the search spaces `tune --space NAME` reads from the checkout, beside the package
    spaces = SPACES_DIR.relative_to(ROOT).as_posix()
    assert {"clinfo_ray", "jobs", "pyproject.toml", spaces} <= copied
    # `prepare emoji` (docs/multinode.md: in a pod of this image) fetches npm packages
    joined = text.replace("\\\n", " ")  # continuation lines
    install = " ".join(re.findall(r"^RUN\s+(.*)", joined, re.M))
    assert re.search(r"apt-get install [^&]*\bnpm\b", install), install


def test_doc_commands_name_real_jobs_and_bundled_configs() -> None:
    text = DOC.read_text()
    scripts = set(re.findall(r"jobs/([a-z_]+)\.py", text))
    assert "train" in scripts
    assert all((ROOT / "jobs" / f"{s}.py").is_file() for s in scripts), scripts
    configs = set(re.findall(r"--config\s+([A-Za-z0-9_]+)\b", text))
    assert configs and configs <= set(bundled_configs()), configs
    for path in re.findall(r"deploy/[A-Za-z0-9_.-]+", text):
        assert (ROOT / path).is_file(), path
