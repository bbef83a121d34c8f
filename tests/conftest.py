"""Shared fixtures: small real image datasets in Kaggle's layout, written to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

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
    "model.weights": None,
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
    "head.max_epochs": 40,
    "head.patience": 5,
    "classical.logreg.C": [0.01, 0.1],
    "classical.svm.C": [1.0],
    "classical.knn.n_neighbors": [3, 5],
}


def write_params(path: Path, overrides: dict) -> Path:
    """The project's params.yaml with dotted-key overrides, written to ``path``."""
    import yaml

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
