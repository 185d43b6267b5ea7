"""Safe defaults: checkpoints load tensors and plain data only, run names stay inside
run.output_dir, and a Ray cluster a command starts requires Ray's token and serves its dashboard
(and job API) on loopback only."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clinfo_ray.checkpointing import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from clinfo_ray.commands.common import AUTH_MODE_VAR, require_token_auth
from clinfo_ray.config import ConfigError, RunConfig, TrainConfig, apply_overrides, load_config
from clinfo_ray.model import build_model
from clinfo_ray.optim import build_optimizer

REPO = Path(__file__).resolve().parents[1]
SMALL = apply_overrides(TrainConfig(), {"model.cnn_width": 4, "model.proj_dim": 8})


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: the file's existence shows the code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def _checkpoint(directory: Path) -> Path:
    model = build_model(SMALL.model)
    optimizer, _ = build_optimizer(model, SMALL.optim, steps_per_epoch=2)
    return save_checkpoint(
        directory, model=model, epoch=1, step=2, config=SMALL, optimizer=optimizer
    )


@pytest.mark.parametrize("part", ["model.pt", "optimizer.pt"])
def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path: Path, part: str) -> None:
    directory = _checkpoint(tmp_path / "ckpt")
    ran = tmp_path / "code-ran"
    saved = torch.load(directory / part, weights_only=True)
    torch.save({**saved, "payload": _OpensAFile(ran)}, directory / part)
    model = build_model(SMALL.model)
    optimizer, _ = build_optimizer(model, SMALL.optim, steps_per_epoch=2)

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(directory, model=model, optimizer=optimizer)
    if part == "model.pt":
        with pytest.raises(pickle.UnpicklingError):
            load_model_from_checkpoint(directory)
    assert not ran.exists()
    # the same bytes through an unrestricted pickle would have run it: the payload is real
    torch.load(directory / part, weights_only=False)
    assert ran.exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "../up", "a/../..", ""])
def test_run_name_that_would_leave_output_dir_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.name: ") as err:
        RunConfig(name=name, output_dir=str(tmp_path))
    assert err.value.key == "run.name"
    # the way a user gives it: a --set / YAML override of a bundled config
    with pytest.raises(ConfigError, match=r"^run\.name: "):
        load_config("quickstart", [f"run.name={name}"])


@pytest.mark.parametrize("name", ["x", "...", "..x", "x..", ".hidden", "a b", "2024", "ü"])
def test_accepted_run_names_stay_inside_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The run folder is ``Path(run.output_dir).resolve() / run.name`` (training.launch); for
    every name the config accepts it is a direct child of the output folder, a relative
    output_dir included."""
    monkeypatch.chdir(tmp_path)
    run = load_config("quickstart", [f"run.name={name}", "run.output_dir=out/../runs"]).run
    storage = Path(run.output_dir).resolve()
    run_dir = storage / run.name
    assert run_dir.resolve().parent == storage == (tmp_path / "runs").resolve()


def test_an_auth_mode_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(AUTH_MODE_VAR, "disabled")
    assert require_token_auth() is False
    assert os.environ[AUTH_MODE_VAR] == "disabled"
    monkeypatch.setenv(AUTH_MODE_VAR, "token")
    assert require_token_auth() is True


# Run in a child process with RAY_AUTH_MODE unset: start a local cluster as every command does,
# then ask its job API with and without the token while it is up.
_START_LOCAL = """
import json, os, urllib.error, urllib.request
import ray  # imported first, as the commands do: Ray has read the (unset) mode already
from ray._private.worker import get_dashboard_url
from clinfo_ray.commands.common import connect_ray, setup_logging

def status(url, token=None):
    headers = {"Authorization": "Bearer " + token} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10):
            return 200
    except urllib.error.HTTPError as err:
        return err.code

setup_logging()
connect_ray()
dashboard = get_dashboard_url()
token = open(os.path.expanduser("~/.ray/auth_token")).read().strip()
jobs = "http://" + dashboard + "/api/jobs/"
print(json.dumps({
    "mode": os.environ.get("RAY_AUTH_MODE"),
    "dashboard": dashboard,
    "without_token": status(jobs),
    "with_token": status(jobs, token),
    "token_chars": len(token),
}))
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_local_cluster_requires_a_token_by_default(tmp_path: Path) -> None:
    """``connect_ray`` with RAY_AUTH_MODE unset and no token anywhere: Ray's token mode, a new
    token in ~/.ray/auth_token (here a HOME of the test's own), the dashboard on 127.0.0.1,
    and its job API refuses a request without the token."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(
        [sys.executable, "-c", _START_LOCAL],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mode"] == "token"
    assert report["dashboard"].startswith("127.0.0.1:")
    assert (report["without_token"], report["with_token"]) == (401, 200)
    assert report["token_chars"] >= 32  # written by ray.init into this HOME, not the real one
    assert "token authentication on" in done.stderr


def test_the_session_cluster_requires_a_token(ray_session: None) -> None:
    """The suite's own cluster (conftest.py) runs in token mode, with a token of its own."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
