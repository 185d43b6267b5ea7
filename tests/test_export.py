"""``clinfo-ray export`` and ``load_encoder`` on tiny checkpoints and real image files: the
program run without clinfo-ray on images prepared from preprocess.json's words gives the
evaluation path's features, the safetensors load into plain torchvision, and bad inputs end
in one line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import clinfo_ray
from clinfo_ray.checkpointing import (
    load_model_from_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from clinfo_ray.commands.main import main
from clinfo_ray.config import DataConfig, ModelConfig, TrainConfig
from clinfo_ray.data.read.decode import decode_batch, decode_image
from clinfo_ray.export import export_encoder, load_encoder
from clinfo_ray.model import SmallCNN, build_model

ROOT = Path(__file__).resolve().parent.parent
SIZE = 16  # the checkpoints' data.image_size; every image file is of another size


def make_checkpoint(directory: Path, backbone: str, small_image_stem: bool = True) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig(
        data=DataConfig(image_size=SIZE),
        model=ModelConfig(backbone=backbone, cnn_width=4, small_image_stem=small_image_stem),
    )
    model = build_model(cfg.model)
    with torch.no_grad():  # running statistics other than 0 / 1, so eval mode is visible
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return save_checkpoint(directory, model=model, epoch=3, step=30, config=cfg)


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, export through the command, with the head)."""
    root = tmp_path_factory.mktemp("small_cnn")
    checkpoint = make_checkpoint(root / "checkpoint_000003", "small_cnn")
    out = root / "export"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--with-head"]) == 0
    return checkpoint, out


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, tuple[Path, Path]]:
    """small_image_stem -> (checkpoint, export) of a resnet18 with that stem."""
    found = {}
    for small_stem in (True, False):
        root = tmp_path_factory.mktemp("resnet18")
        checkpoint = make_checkpoint(root / "checkpoint_000003", "resnet18", small_stem)
        export_encoder(checkpoint, root / "export")
        found[small_stem] = (checkpoint, root / "export")
    return found


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """RGB, RGBA (alpha 0 to 255), greyscale, LA and transparent-palette PNGs of odd sizes,
    one already S x S, one shrunk by more than 4 (Pillow's reduce step), a non-square JPEG
    (decoded by libjpeg at 1/8 scale)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)

    def noise(h: int, w: int, c: int) -> np.ndarray:
        smooth = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, c)).repeat(4, 0).repeat(4, 1)
        return np.clip(smooth[:h, :w] + rng.integers(-30, 31, (h, w, c)), 0, 255).astype("uint8")

    rgba = noise(20, 30, 4)
    rgba[..., 3] = np.linspace(0, 255, 30).astype("uint8")[None, :]  # transparent to opaque
    palette = Image.fromarray(noise(21, 18, 3)).quantize(16)
    palette.info["transparency"] = 3
    images = {
        "rgb.png": Image.fromarray(noise(17, 23, 3)),
        "rgba.png": Image.fromarray(rgba, "RGBA"),
        "grey.png": Image.fromarray(noise(40, 19, 1)[..., 0], "L"),
        "grey_alpha.png": Image.fromarray(noise(18, 18, 2), "LA"),
        "palette.png": palette,
        "exact.png": Image.fromarray(noise(SIZE, SIZE, 3)),
        "big.png": Image.fromarray(noise(70, 120, 3)),
        "photo.jpg": Image.fromarray(noise(130, 200, 3)),
    }
    paths = []
    for name, image in images.items():
        image.save(root / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths.append(root / name)
    with Image.open(root / "rgba.png") as check, Image.open(root / "palette.png") as pal:
        assert check.mode == "RGBA" and pal.mode == "P" and "transparency" in pal.info
    return paths


def decode_path_inputs(files: list[Path]) -> torch.Tensor:
    """(N, 3, S, S): decode.py's arrays as evaluation scales them."""
    arrays = np.stack([decode_image(f.read_bytes(), SIZE) for f in files])
    return torch.from_numpy(arrays).float().div_(255.0)


def evaluation_features(checkpoint: Path, files: list[Path]) -> np.ndarray:
    """(N, D): what evaluation computes (tests/test_eval_features.py checks the Ray path against
    the same): decode.py's batch decode, scaled to [0, 1], through ``model.encode`` in eval
    mode."""
    images, ok, _ = decode_batch([f.read_bytes() for f in files], SIZE)
    assert ok.all()
    model, _ = load_model_from_checkpoint(checkpoint)
    with torch.inference_mode():
        return model.encode(torch.from_numpy(images).float().div_(255.0)).numpy()


# Preprocessing written from preprocess.json's words alone, then the program: run in a process
# where clinfo_ray cannot be imported.
WITHOUT_CLINFO_RAY = r"""
import json, sys
sys.modules["clinfo_ray"] = None  # any `import clinfo_ray...` now raises ImportError
try:
    import clinfo_ray
    raise SystemExit("clinfo_ray is importable")
except ImportError:
    pass
import numpy as np
import torch
from PIL import Image

alpha_modes = ("RGBA", "LA", "PA")


def prepare(path, S, steps):
    image = Image.open(path)
    image.draft(steps["draft"]["mode"], tuple(steps["draft"]["size"]))
    if image.mode in alpha_modes or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
        c, a = rgba[..., :3], rgba[..., 3:]
        bg = np.array(steps["convert"]["background"], dtype=np.int64)
        image = Image.fromarray(((c * a + bg * (255 - a) + 127) // 255).astype(np.uint8))
    else:
        image = image.convert(steps["convert"]["mode"])
    w, h = image.size
    if (w, h) != (S, S):
        scale = S / min(w, h)
        nw, nh = max(S, round(w * scale)), max(S, round(h * scale))
        image = image.resize(
            (nw, nh),
            Image.Resampling[steps["resize"]["filter"].upper()],
            reducing_gap=steps["resize"]["reducing_gap"],
        )
        left, top = (nw - S) // 2, (nh - S) // 2
        image = image.crop((left, top, left + S, top + S))
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    return pixels / np.float32(steps["to_tensor"]["divide_by"])


files = sys.argv[2:]
for i, export_dir in enumerate(sys.argv[1].split(",")):
    desc = json.load(open(f"{export_dir}/preprocess.json"))
    S, steps = desc["input_size"], desc["preprocess"]
    images = torch.from_numpy(np.stack([prepare(f, S, steps) for f in files]))
    program = torch.export.load(f"{export_dir}/{desc['program']['file']}").module()
    with torch.no_grad():
        features = program(images)
    np.savez(f"result{i}.npz", images=images.numpy(), features=features.numpy())
loaded = [m for m, mod in sys.modules.items() if m.startswith("clinfo_ray") and mod is not None]
assert not loaded, loaded
"""


def run_without_clinfo_ray(
    export_dirs: list[Path], files: list[Path], tmp_path: Path
) -> list[dict[str, np.ndarray]]:
    """Each export's (prepared images, features), from one process without clinfo_ray."""
    script = tmp_path / "standalone.py"
    script.write_text(WITHOUT_CLINFO_RAY)
    dirs = ",".join(map(str, export_dirs))
    subprocess.run(
        [sys.executable, "-I", str(script), dirs, *map(str, files)],
        cwd=tmp_path,
        check=True,
        timeout=300,
    )
    results = []
    for i in range(len(export_dirs)):
        with np.load(tmp_path / f"result{i}.npz") as result:
            results.append(dict(result))
    return results


def test_programs_without_clinfo_ray_give_the_evaluation_features(
    small_cnn: tuple[Path, Path],
    resnet18: dict[bool, tuple[Path, Path]],
    image_files: list[Path],
    tmp_path: Path,
) -> None:
    """small_cnn and resnet18 (small-image stem; the other stem's features are checked through
    torchvision below): inputs prepared in the test's own code from preprocess.json equal
    decode.py's exactly, and the program's features the evaluation's."""
    exports = [small_cnn, resnet18[True]]
    results = run_without_clinfo_ray([e for _, e in exports], image_files, tmp_path)
    inputs = decode_path_inputs(image_files)
    for (checkpoint, _), result, dim in zip(exports, results, (32, 512), strict=True):
        assert torch.equal(torch.from_numpy(result["images"]), inputs)
        want = evaluation_features(checkpoint, image_files)
        assert result["features"].shape == want.shape == (len(image_files), dim)
        np.testing.assert_allclose(result["features"], want, rtol=0, atol=1e-5)
        assert np.abs(want).max() > 0.01  # a real signal


@pytest.mark.parametrize("small_stem", [True, False], ids=["small-stem", "imagenet-stem"])
def test_resnet_weights_load_strictly_into_torchvision(
    resnet18: dict[bool, tuple[Path, Path]], image_files: list[Path], small_stem: bool
) -> None:
    checkpoint, export_dir = resnet18[small_stem]
    recipe = json.loads((export_dir / "preprocess.json").read_text())["weights"]["torchvision"]
    # the model, as written here, and as preprocess.json states it
    model = torchvision.models.resnet18(weights=None)
    code = ["import torch, torchvision", "model = torchvision.models.resnet18(weights=None)"]
    if small_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        code += [
            "model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)",
            "model.maxpool = torch.nn.Identity()",
        ]
    model.fc = nn.Identity()
    code.append("model.fc = torch.nn.Identity()")
    assert recipe == {
        "constructor": "torchvision.models.resnet18(weights=None)",
        "code": "\n".join(code),
    }
    weights = load_file(export_dir / "encoder.safetensors")
    model.load_state_dict(weights, strict=True)
    if small_stem:  # the stem's conv1 is not the plain model's
        with pytest.raises(RuntimeError, match=r"conv1\.weight"):
            torchvision.models.resnet18(weights=None).load_state_dict(weights, strict=False)
    images = decode_path_inputs(image_files[:4])
    with torch.no_grad():
        got = model.eval()(images).numpy()
    np.testing.assert_allclose(got, evaluation_features(checkpoint, image_files[:4]), atol=1e-5)


def test_small_cnn_weights_are_ours_and_the_head_is_a_plain_sequential(
    small_cnn: tuple[Path, Path], image_files: list[Path]
) -> None:
    checkpoint, export_dir = small_cnn
    desc = json.loads((export_dir / "preprocess.json").read_text())
    assert desc["weights"]["torchvision"] is None and "SmallCNN(width=4" in desc["weights"]["keys"]
    encoder = SmallCNN(4, small_image_stem=True)
    encoder.load_state_dict(load_file(export_dir / "encoder.safetensors"), strict=True)
    head = nn.Sequential(
        nn.Linear(32, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 128)
    )
    assert desc["head"]["code"] == (
        "head = torch.nn.Sequential(torch.nn.Linear(32, 32, bias=False), "
        "torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 128))"
    )
    head.load_state_dict(load_file(export_dir / "head.safetensors"), strict=True)
    model = build_model(TrainConfig.from_dict(read_checkpoint_state(checkpoint).config).model)
    model.load_state_dict(torch.load(checkpoint / "model.pt", weights_only=True))
    images = decode_path_inputs(image_files)
    with torch.no_grad():
        want = model.eval()(images)
        features = encoder.eval()(images)
        np.testing.assert_allclose(features, want.features, atol=1e-6)
        np.testing.assert_allclose(head.eval()(features), want.projections, atol=1e-5)


def test_preprocess_json_records_the_checkpoint(small_cnn: tuple[Path, Path]) -> None:
    checkpoint, export_dir = small_cnn
    desc = json.loads((export_dir / "preprocess.json").read_text())
    config = read_checkpoint_state(checkpoint).config
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert desc["checkpoint"]["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert (desc["checkpoint"]["epoch"], desc["checkpoint"]["step"]) == (3, 30)
    assert (desc["input_size"], desc["feature_dim"], desc["backbone"]) == (SIZE, 32, "small_cnn")
    names = ["encoder.safetensors", "encoder.pt2", "head.safetensors", "preprocess.json"]
    assert sorted(desc["files"]) == sorted(names)
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(names)  # no temporary left


def test_load_encoder_from_export_and_checkpoint_agree(
    small_cnn: tuple[Path, Path], image_files: list[Path]
) -> None:
    checkpoint, export_dir = small_cnn
    assert clinfo_ray.load_encoder is load_encoder  # the package's lazy attribute
    exported, preprocess = clinfo_ray.load_encoder(export_dir)
    eager, preprocess_ckpt = clinfo_ray.load_encoder(checkpoint)
    assert preprocess.input_size == preprocess_ckpt.input_size == SIZE
    inputs = []
    for path in image_files:
        with Image.open(path) as image:
            inputs.append(preprocess(image))
    images = torch.stack(inputs)  # (N, 3, S, S)
    assert torch.equal(images, decode_path_inputs(image_files))  # RGB, RGBA, L, LA, P, JPEG
    with torch.no_grad():
        got, want = exported.eval()(images), eager.eval()(images)  # eval() allowed on both
    assert got.shape == (len(image_files), 32)
    assert torch.equal(got, want)


def test_onnx_matches_torch(small_cnn: tuple[Path, Path], tmp_path: Path) -> None:
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name)
    onnxruntime = pytest.importorskip("onnxruntime")
    checkpoint, _ = small_cnn
    desc = export_encoder(checkpoint, tmp_path / "export", onnx=True)
    assert desc["onnx"]["file"] == "encoder.onnx"
    session = onnxruntime.InferenceSession(
        str(tmp_path / "export" / "encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    images = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    module, _ = load_encoder(checkpoint)
    with torch.no_grad():
        want = module(images).numpy()
    got = session.run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def fails_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clinfo-ray export: error: "), err
    for text in expected:
        assert text in err[0], err[0]


def test_bad_inputs_end_in_one_line(
    small_cnn: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checkpoint, _ = small_cnn
    out = ["--out", str(tmp_path / "out")]
    fails_in_one_line(
        ["export", "--checkpoint", str(tmp_path / "nope"), *out], capsys, "does not exist"
    )
    (tmp_path / "empty").mkdir()
    fails_in_one_line(
        ["export", "--checkpoint", str(tmp_path / "empty"), *out], capsys, "state.json"
    )
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "state.json").write_text((checkpoint / "state.json").read_text())
    fails_in_one_line(
        ["export", "--checkpoint", str(tmp_path / "no_weights"), *out], capsys, "model.pt"
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(busy)]
    fails_in_one_line(argv, capsys, "not empty", "--overwrite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    fails_in_one_line([*argv, "--overwrite", "--onnx"], capsys, "onnxruntime", "clinfo-ray[export]")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]  # nothing written by a refusal
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert (busy / "notes.txt").read_text() == "mine"  # --overwrite replaces export files only
    assert load_encoder(busy).preprocess.input_size == SIZE


def test_the_job_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "export.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("usage: clinfo-ray export")
    assert "--with-head" in result.stdout and "--overwrite" in result.stdout
