"""Cross-validation splitters that keep every copy of a picture on one side.

Train holds augmented copies of each original picture; a fold that trains on one
copy and tests on another measures memory, not generalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.common.errors import PipelineError
from pipeline.common.io import read_csv
from pipeline.common.params import ParamsError


def inner_splitter(inner_folds: int, seed: int) -> StratifiedGroupKFold:
    """The grouped, stratified, shuffled folds every hyperparameter selection (and calibration) runs on."""
    return StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)


class RepeatedStratifiedGroupKFold:
    """``StratifiedGroupKFold`` repeated with different shuffles (sklearn's splitter interface)."""

    def __init__(self, *, n_splits: int = 5, n_repeats: int = 2, random_state: int = 0) -> None:
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        return self.n_splits * self.n_repeats

    def split(self, X, y, groups) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if groups is None:
            raise ValueError("RepeatedStratifiedGroupKFold needs groups (the original picture of each image).")
        n_groups = len(np.unique(groups))
        if self.n_splits > n_groups:
            raise ValueError(f"Cannot have n_splits={self.n_splits} greater than the number of groups: {n_groups}.")
        seeds = np.random.RandomState(self.random_state).randint(np.iinfo(np.int32).max, size=self.n_repeats)
        for seed in seeds:
            splitter = StratifiedGroupKFold(n_splits=self.n_splits, shuffle=True, random_state=int(seed))
            yield from splitter.split(X, y, groups)


def check_cv_fits(y: np.ndarray, groups: np.ndarray, *, folds: int, repeats: int, inner_folds: int | None,
                  seed: int, splits: list[tuple[np.ndarray, np.ndarray]] | None = None) -> None:
    """Refuse fold counts the data cannot fill, before any fitting, naming the params key.

    Every fold needs whole pictures: ``cv.folds`` cannot exceed the number of
    original pictures in train, nor ``cv.inner_folds`` the pictures of the
    smallest outer training fold (selection runs inside it). ``splits``: the outer folds when already made.
    """
    n_groups = len(np.unique(groups))
    if folds > n_groups:
        raise ParamsError(f"cv.folds={folds} is larger than the number of original pictures in train ({n_groups}); "
                          f"use at most {n_groups}.")
    if inner_folds is None:
        return
    splits = splits if splits is not None else RepeatedStratifiedGroupKFold(
        n_splits=folds, n_repeats=repeats, random_state=seed).split(y, y, groups)
    fewest = min(len(np.unique(groups[train])) for train, _ in splits)
    if inner_folds > fewest:
        raise ParamsError(f"cv.inner_folds={inner_folds} is larger than the number of original pictures in the "
                          f"smallest training fold ({fewest} under cv.folds={folds}); use at most {fewest}.")


class FoldsError(PipelineError):
    """The shared fold assignment is missing, malformed, or of other images than the features."""


def assign_folds(y: np.ndarray, groups: np.ndarray, *, folds: int, repeats: int, seed: int) -> np.ndarray:
    """The grouped CV fold of every train image in each repeat, shape (repeats, n): the test fold it falls in.

    Computed once by the ``folds`` stage and read by every train stage, so that all
    backbone x classifier pairs are scored on the same folds and their per-fold
    differences are paired.
    """
    check_cv_fits(y, groups, folds=folds, repeats=repeats, inner_folds=None, seed=seed)
    assignment = np.full((repeats, len(y)), -1, dtype=np.int64)
    splits = RepeatedStratifiedGroupKFold(n_splits=folds, n_repeats=repeats, random_state=seed).split(y, y, groups)
    for i, (_, test) in enumerate(splits):
        assignment[i // folds, test] = i % folds
    return assignment


def folds_frame(paths: list[str], groups: np.ndarray, assignment: np.ndarray) -> pd.DataFrame:
    """The assignment as written to ``folds.csv``: path, group, then one column per repeat."""
    repeats = {f"repeat_{r}": column for r, column in enumerate(assignment)}
    return pd.DataFrame({"path": paths, "group": groups, **repeats})


def read_folds(path: Path, paths: list[str] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) index pairs of the shared assignment, in the order the splitter made them, for the
    train images ``paths`` (the features' order); refused when the file holds other images (``None``: any)."""
    table = read_csv(path, what="Folds file", fix="run the folds stage (dvc repro folds).", error=FoldsError,
                     dtype={"path": str, "group": str}, keep_default_na=False)
    repeats = [c for c in table.columns if c.startswith("repeat_")]
    if "path" not in table.columns or not repeats:
        raise FoldsError(f"Folds file {path} needs a 'path' column and one 'repeat_<r>' column per repeat; "
                         "re-run the folds stage (dvc repro folds).")
    if paths is not None and table["path"].tolist() != list(paths):
        raise FoldsError(f"Folds file {path} lists other train images than the features ({len(table)} vs "
                         f"{len(paths)} rows, or another order); the two come from different manifests: re-run dvc "
                         "repro.")
    splits = []
    for column in repeats:
        values = pd.to_numeric(table[column], errors="coerce").to_numpy()
        if np.isnan(values).any() or (values < 0).any() or (values != np.round(values)).any():
            raise FoldsError(f"Folds file {path} column {column} must hold fold numbers 0, 1, ...; re-run dvc repro.")
        splits += [(np.flatnonzero(values != k), np.flatnonzero(values == k)) for k in range(int(values.max()) + 1)]
    return splits
