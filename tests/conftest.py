"""Shared fixtures: small real image datasets in Kaggle's layout, written to tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from pipeline.data.layouts import SPLITS, Layout

CLASSES = ("Angry", "Other", "Sad", "happy")

# Keep the suite's torch work on the cores CI has, and never reach for the network.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def picture(rng: np.random.Generator, class_index: int, size: tuple[int, int] = (56, 48)) -> Image.Image:
    """A distinct synthetic photo: smooth random blobs over a class-tinted background."""
    w, h = size
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    tint = np.zeros(3)
    tint[class_index % 3] = 60
    arr = np.clip(np.asarray(image, dtype=float) * 0.8 + tint, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """An offline augmentation like the dataset's: mirror and a light crop, resized back."""
    w, h = image.size
    dx, dy = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    return ImageOps.mirror(image).crop((dx, dy, w - dx, h - dy)).resize((w, h))


def make_dataset(root: Path, *, train_per_class: int = 4, held_out_per_class: int = 2, augs: int = 2,
                 seed: int = 0) -> Path:
    """Write ``root/Master Folder/{train,valid,test}/<class>/`` with aug-<n>- copies in train."""
    rng = np.random.default_rng(seed)
    layout = root / "Master Folder"
    counter = 0
    for split, n in [("train", train_per_class), ("valid", held_out_per_class), ("test", held_out_per_class)]:
        for c, name in enumerate(CLASSES):
            folder = layout / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                counter += 1
                image = picture(rng, c)
                stem = f"{counter:03d}"
                image.save(folder / f"{stem}.jpg", quality=92)
                if split == "train":
                    for a in range(augs):
                        augment(image, rng).save(folder / f"aug-{counter * 10 + a}-{stem}.jpg", quality=85)
    return root


def split_layout(folder: Path) -> Layout:
    """``folder`` as prepare finds the fixture's ``Master Folder``: split folders train, valid and test."""
    return Layout(root=folder, folders={split: split for split in SPLITS})


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A small dataset root (holding 'Master Folder') with 4 classes and augmented copies."""
    return make_dataset(tmp_path / "pets")


@pytest.fixture(scope="session")
def calibrated_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init EfficientNet-B1 whose BatchNorm statistics were re-estimated on pictures.

    Default running statistics make activations vanish (embeddings ~1e-14); with
    recalibrated statistics the embeddings have ordinary magnitude, so equality
    tests on them can actually fail.
    """
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b1()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    transform = torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64, resize_size=72)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(4):
            model(torch.stack([transform(picture(rng, int(rng.integers(4)))) for _ in range(8)]))
    path = tmp_path_factory.mktemp("checkpoint") / "b1_calibrated.pth"
    torch.save(model.state_dict(), path)
    return path


PROJECT = Path(__file__).resolve().parents[1]

# Overrides that make a whole run take seconds on 2 cores (random weights, tiny crops).
SMALL_RUN = {
    "backbones.efficientnet_b1.weights": None,
    "extract.crop_size": 64,
    "extract.resize_size": 72,
    "extract.num_workers": 0,
    "extract.batch_size": 16,
    "views.count": 1,
    "cv.folds": 3,
    "cv.repeats": 1,
    "cv.inner_folds": 2,
    "cv.n_jobs": 1,
    "evaluation.n_bootstrap": 200,
    "classifiers.head.max_epochs": 40,
    "classifiers.head.patience": 5,
    "classifiers.logreg.C": [0.01, 0.1],
    "classifiers.svm.C": [1.0],
    "classifiers.knn.n_neighbors": [3, 5],
    "learning_curve.fractions": [0.75],
    "learning_curve.draws": 1,
    "cost.seconds": 0.2,
}


def write_params(path: Path, overrides: dict) -> Path:
    """The project's params.yaml with dotted-key overrides, written to ``path``."""
    import yaml

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    path.write_text(yaml.safe_dump(with_overrides(params, overrides), sort_keys=False))
    return path


def keep_classifiers(path: Path, names: tuple[str, ...]) -> None:
    """Trim the params.yaml at ``path`` to the classifiers ``names``: a faster run where the others add nothing."""
    import yaml

    params = yaml.safe_load(path.read_text())
    params["classifiers"] = {name: params["classifiers"][name] for name in names}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def with_overrides(params: dict, overrides: dict) -> dict:
    """``params`` with each dotted key of ``overrides`` set (in place)."""
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[key] = value
    return params


DEFAULT_BACKBONE = "efficientnet_b1"  # the one entry of the shipped params.yaml


def stage_command(stage: str, key: str | tuple[str, str] | None = None, *,
                  without: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The module and arguments of a stage's ``cmd`` in dvc.yaml, less the options named in ``without`` (with
    their values). ``key``: the backbone of ``extract``/``export``, the classifier of ``train`` (on the default
    backbone) or its (backbone, classifier) pair; None means the default backbone."""
    import shlex

    import yaml

    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]
    cmd = (spec["do"] if "foreach" in spec else spec)["cmd"]
    if "matrix" in spec:
        backbone, classifier = key if isinstance(key, tuple) else (DEFAULT_BACKBONE, key or "")
        cmd = cmd.replace("${item.backbone}", backbone).replace("${item.classifier}", classifier)
    words = shlex.split(cmd.replace("${key}", key or DEFAULT_BACKBONE if isinstance(key, str | None) else ""))
    assert words[:2] == ["python", "-m"], cmd
    argv = words[3:]
    for option in without:
        at = argv.index(option)
        del argv[at : at + 2]
    return words[2], argv


def run_stage(stage: str, params: Path, key: str | None = None, *extra: str, without: tuple[str, ...] = ()) -> int:
    """Run a stage's entry point in-process with exactly its dvc.yaml arguments (paths relative to the cwd)."""
    import importlib

    module, argv = stage_command(stage, key, without=without)
    return importlib.import_module(module).main([*argv, "--params", str(params), *extra])


def stage_process(stage: str, params: Path, key: str | None = None, *, without: tuple[str, ...] = ()) -> list[str]:
    """The command line that runs a stage in a fresh interpreter, with exactly its dvc.yaml arguments."""
    import sys

    module, argv = stage_command(stage, key, without=without)
    return [sys.executable, "-m", module, *argv, "--params", str(params)]


# ----------------------------------------------------------------------------- a real DVC project in tmp

PROJECT_FILES = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


ENV = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
DVC = [sys.executable, "-m", "dvc"]


def init_project(root, data, overrides: dict | None = None):
    """A git repository holding the project's files, with params for a small run on ``data`` (``overrides``:
    other dotted-key overrides than ``SMALL_RUN``)."""
    for name in PROJECT_FILES:
        source = PROJECT / name
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    write_params(root / "params.yaml", {**(SMALL_RUN if overrides is None else overrides), "data.root": str(data)})
    run(["git", "init", "-q"], root, ENV)
    run(["git", "add", "-A"], root, ENV)
    run(["git", "commit", "-qm", "project"], root, ENV)


def outputs(root):
    """Bytes of the features and of every metric, timing fields dropped, keyed by path."""
    found = {}
    for path in sorted((root / "features").rglob("*")):
        if path.name == "meta.json":
            meta = json.loads(path.read_text())
            meta.pop("speed")
            found[str(path.relative_to(root))] = json.dumps(meta).encode()
        elif path.is_file():
            found[str(path.relative_to(root))] = path.read_bytes()
    for path in sorted((root / "artifacts" / "metrics").rglob("*.json")):
        metrics = json.loads(path.read_text())
        metrics.pop("fit_seconds")
        found[str(path.relative_to(root))] = json.dumps(metrics).encode()
    return found


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """A real ``dvc repro`` of the whole project on a small generated dataset, once per test session."""
    root = tmp_path_factory.mktemp("project")
    data = make_dataset(tmp_path_factory.mktemp("data"), train_per_class=5, held_out_per_class=3)
    init_project(root, data)
    first = run([*DVC, "repro"], root, ENV)
    return root, ENV, DVC, first, outputs(root)
