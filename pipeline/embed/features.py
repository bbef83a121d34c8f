"""The cached-embeddings format, and its loader for reuse in other work.

A features folder holds:

- ``<split>.npy``: float32 array (n_split, dim), rows in manifest order;
- ``<split>_views.npy`` (optional, train only): float32 (n_views, n_split, dim),
  embeddings of random augmented views of the same images, in the same order;
- ``index.csv``: one row per image, columns ``split, path, label`` in the same order;
- ``meta.json``: backbone, weights, transform, dim, classes, manifest hash, device, versions.

Anything that writes this format (another backbone, another repo) can feed the
classifier and compare stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.errors import PipelineError

INDEX = "index.csv"
META = "meta.json"
INDEX_COLUMNS = ["split", "path", "label"]


class FeaturesError(PipelineError):
    """A features folder is missing, incomplete or inconsistent."""


@dataclasses.dataclass
class SplitFeatures:
    X: np.ndarray  # (n, dim) float32
    y: np.ndarray  # (n,) int64 index into Features.classes
    paths: list[str]
    views: np.ndarray | None = None  # (n_views, n, dim) augmented views, or None


@dataclasses.dataclass
class Features:
    splits: dict[str, SplitFeatures]
    classes: list[str]
    meta: dict[str, Any]

    def __getitem__(self, split: str) -> SplitFeatures:
        if split not in self.splits:
            raise FeaturesError(f"No '{split}' split in these features; they hold {sorted(self.splits)}.")
        return self.splits[split]


def array_path(directory: Path, split: str) -> Path:
    return Path(directory) / f"{split}.npy"


def views_path(directory: Path, split: str) -> Path:
    return Path(directory) / f"{split}_views.npy"


def allocate(directory: Path, split: str, n: int, dim: int, *, views: int = 0) -> np.memmap:
    """A float32 .npy file mapped in memory, (n, dim) or (views, n, dim), filled batch by batch."""
    path, shape = (array_path(directory, split), (n, dim)) if not views else (views_path(directory, split),
                                                                             (views, n, dim))
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)


def load(directory: Path | str, *, mmap: bool = False, manifest: Path | None = None) -> Features:
    """Load a features folder: arrays, integer labels, paths, class names and metadata.

    With ``manifest``, refuse features extracted from another manifest (stale or
    foreign embeddings would silently score the wrong images).
    """
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / INDEX).is_file():
        raise FeaturesError(f"{directory} is not a features folder (needs {META} and {INDEX}); "
                            "run the extract stage (dvc repro extract).")
    meta = json.loads((directory / META).read_text())
    if manifest is not None:
        digest = hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
        if meta.get("manifest_sha256") != digest:
            raise FeaturesError(f"{directory} was extracted from another manifest than {manifest} "
                                "(manifest_sha256 differs): the embeddings are stale. Re-run extract (dvc repro).")
    index = pd.read_csv(directory / INDEX, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise FeaturesError(f"{directory / INDEX} lacks column(s) {missing}.")
    classes = list(meta.get("classes", []))
    unknown = sorted(set(index["label"]) - set(classes))
    if unknown:
        raise FeaturesError(f"{directory / INDEX} has label(s) {unknown} not among meta.json classes {classes}.")
    lookup = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, rows in index.groupby("split", sort=False):
        path = array_path(directory, split)
        if not path.is_file():
            raise FeaturesError(f"{path} is missing although {INDEX} lists {len(rows)} '{split}' images.")
        X = np.load(path, mmap_mode="r" if mmap else None)
        if X.ndim != 2 or X.shape[0] != len(rows) or X.dtype != np.float32:
            raise FeaturesError(f"{path} has shape {X.shape} and dtype {X.dtype}; expected "
                                f"({len(rows)}, dim) float32 to match {INDEX}.")
        views = None
        if views_path(directory, split).is_file():
            views = np.load(views_path(directory, split), mmap_mode="r" if mmap else None)
            if views.ndim != 3 or views.shape[1:] != X.shape or views.dtype != np.float32:
                raise FeaturesError(f"{views_path(directory, split)} has shape {views.shape}; expected "
                                    f"(n_views, {X.shape[0]}, {X.shape[1]}) float32.")
        splits[split] = SplitFeatures(X=X, y=rows["label"].map(lookup).to_numpy(np.int64),
                                      paths=rows["path"].tolist(), views=views)
    return Features(splits=splits, classes=classes, meta=meta)
