"""The cached-embeddings format, and its loader for reuse in other work.

A features folder holds:

- ``<split>.npy``: float32 array (n_split, dim), rows in manifest order;
- ``<split>_views.npy`` (optional, train only): float32 (n_views, n_split, dim),
  embeddings of random augmented views of the same images, in the same order;
- ``index.csv``: one row per image, columns ``split, path, label`` in the same order;
- ``meta.json``: backbone, weights, transform, dim, classes, manifest hash, device, speed, versions.

``extract`` writes one such folder per backbone, ``features/<backbone>/``.

Anything that writes this format (another backbone, another repo) can feed the
train and compare stages. A producer other than ``extract`` needs only
``{"classes": [...]}`` in ``meta.json`` (every label of ``index.csv`` among them);
``pretrained`` (true/false) is copied into every metrics file when present. The
backbone keys that ``extract`` also writes (``backbone``, ``source``, ``entry``,
``transform``, ``fingerprint``) are what ``predict`` needs to embed new images;
``speed`` records how fast extraction ran (images/s), for the leaderboard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import PipelineError
from pipeline.common.io import file_sha256, read_csv, read_json, reserve, writing

HELD_OUT = ("valid", "test")  # scored, never fitted on
INDEX = "index.csv"
META = "meta.json"
INDEX_COLUMNS = ["split", "path", "label"]
BACKBONE_KEYS = ("backbone", "source", "entry", "transform", "fingerprint")  # what predict rebuilds from
# Everything extract writes to meta.json (the loader needs only "classes"; see the module docstring).
EXTRACT_META_KEYS = (
    *BACKBONE_KEYS, "arch", "weights", "checkpoint", "head", "checkpoint_sha256", "init_seed", "pretrained",
    "feature_dim", "classes", "splits", "speed",
    "manifest_sha256", "device", "dtype", "channels_last", "pad_batches", "precision", "decode", "views", "batch_size",
    "threads", "num_workers", "engine", "shard_rows", "versions", "sha256",
)
HASHES = "sha256"  # meta.json: {file name: sha256} of each array file, checked by the loader


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
    with writing(path):
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        reserve(path)  # a full disk fails here, not as a SIGBUS when the mapping is filled
    return array


def array_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every array file of a features folder, by file name (recorded in meta.json)."""
    return {p.name: file_sha256(p) for p in sorted(Path(directory).glob("*.npy"))}


def check_hashes(directory: Path, meta: dict[str, Any], names: list[str]) -> None:
    """Refuse array files that are not the ones ``meta.json`` recorded (replaced, or swapped between splits,
    which the shapes alone may not show). Features from another producer may record none."""
    if HASHES not in meta:
        return
    recorded = meta[HASHES]
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        raise FeaturesError(f"{directory / META} has \"{HASHES}\" {recorded!r}; it must map each array file "
                            "name to its sha256. Re-run extract.")
    for name in names:
        if name not in recorded:
            raise FeaturesError(f"{directory / name} has no sha256 in {directory / META} (it records "
                                f"{sorted(recorded)}): the file was added after extraction. Re-run extract.")
        actual = file_sha256(directory / name)
        if actual != recorded[name]:
            swapped = [other for other, digest in recorded.items() if other != name and digest == actual]
            how = f"it holds what {swapped[0]} held" if swapped else "its content changed"
            raise FeaturesError(f"{directory / name} is not the file extract wrote ({how}; sha256 differs from "
                                f"{directory / META}): the split files were replaced or swapped. Re-run extract.")


def load(directory: Path | str, *, mmap: bool = False, manifest: Path | None = None) -> Features:
    """Load a features folder: arrays, integer labels, paths, class names and metadata.

    With ``manifest``, refuse features extracted from another manifest (stale or
    foreign embeddings would silently score the wrong images).
    """
    directory = Path(directory)
    if not (directory / META).is_file() or not (directory / INDEX).is_file():
        raise FeaturesError(f"{directory} is not a features folder (needs {META} and {INDEX}); "
                            "run the extract stage (dvc repro extract).")
    meta = read_meta(directory / META)
    if manifest is not None:
        if not Path(manifest).is_file():
            raise FeaturesError(f"Manifest {manifest} not found; run the stages that write it "
                                "(dvc repro audit: prepare, then audit).")
        if meta.get("manifest_sha256") != file_sha256(manifest):
            raise FeaturesError(f"{directory} was extracted from another manifest than {manifest} "
                                "(manifest_sha256 differs): the embeddings are stale. Re-run extract (dvc repro).")
    index = read_csv(directory / INDEX, what="Features index", fix="re-run extract, or fix the file.",
                     error=FeaturesError, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise FeaturesError(f"{directory / INDEX} lacks column(s) {missing}.")
    classes = list(meta["classes"])
    unknown = sorted(set(index["label"]) - set(classes))
    if unknown:
        raise FeaturesError(f"{directory / INDEX} has label(s) {unknown} not among meta.json classes {classes}.")
    duplicated = sorted({c for c in classes if classes.count(c) > 1})
    if duplicated:
        raise FeaturesError(f"{directory / META} lists class(es) {duplicated} more than once in \"classes\".")
    fitted = index[index["split"] == "train"] if (index["split"] == "train").any() else index
    unused = [c for c in classes if c not in set(fitted["label"])]
    if unused:
        which = "train image" if fitted is not index else "image"
        raise FeaturesError(f"{directory / META} lists class(es) {unused} that no {which} of {INDEX} has; no "
                            "classifier can learn them: drop them from \"classes\" or re-run extract.")
    lookup = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split, rows in index.groupby("split", sort=False):
        path = array_path(directory, split)
        if not path.is_file():
            raise FeaturesError(f"{path} is missing although {INDEX} lists {len(rows)} '{split}' images.")
        X = _load_array(path, mmap)
        if X.ndim != 2 or X.shape[0] != len(rows) or X.dtype != np.float32:
            raise FeaturesError(f"{path} has shape {X.shape} and dtype {X.dtype}; expected "
                                f"({len(rows)}, dim) float32 to match {INDEX}.")
        views = None
        if views_path(directory, split).is_file():
            views = _load_array(views_path(directory, split), mmap)
            if views.ndim != 3 or views.shape[1:] != X.shape or views.dtype != np.float32:
                raise FeaturesError(f"{views_path(directory, split)} has shape {views.shape}; expected "
                                    f"(n_views, {X.shape[0]}, {X.shape[1]}) float32.")
        splits[split] = SplitFeatures(X=X, y=rows["label"].map(lookup).to_numpy(np.int64),
                                      paths=rows["path"].tolist(), views=views)
    check_hashes(directory, meta, [name for split in splits for name in (array_path(directory, split).name,
                                                                          views_path(directory, split).name)
                                   if (directory / name).is_file()])  # after the shapes and NaN: a subtler fault
    return Features(splits=splits, classes=classes, meta=meta)


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a features folder, checked for what the loader needs: a list of class names."""
    meta = read_json(path, what="Features metadata", fix="re-run extract, or fix the file.", error=FeaturesError)
    if not isinstance(meta, dict):
        raise FeaturesError(f"{path} must hold a JSON object, like {{\"classes\": [...]}}.")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise FeaturesError(f"{path} needs \"classes\": the list of class names (strings) the labels of "
                            f"{INDEX} come from; it has {classes!r}.")
    return meta


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    """A float array of the folder, refused if it is damaged or holds NaN or infinite values."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise FeaturesError(f"{path} is not a readable .npy array ({err}); re-run extract.") from err
    if array.dtype.kind == "f":
        rows = array.reshape(-1, array.shape[-1]) if array.size else array.reshape(0, 1)
        step = max(1, 2**24 // rows.shape[1])  # in blocks: a memory-mapped array is never held whole
        bad = np.concatenate([start + np.flatnonzero(~np.isfinite(rows[start : start + step]).all(axis=1))
                              for start in range(0, len(rows), step)] or [np.empty(0, int)])
        if len(bad):
            raise FeaturesError(f"{path} holds {len(bad)} row(s) with NaN or infinite values (first: row {bad[0]}); "
                                "the embeddings are unusable: re-run extract (or fix the producer).")
    return array
