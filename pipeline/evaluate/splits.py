"""Cross-validation splitters that keep every copy of a picture on one side.

Train holds augmented copies of each original picture; a fold that trains on one
copy and tests on another measures memory, not generalisation.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.common.params import ParamsError


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


def check_cv_fits(y: np.ndarray, groups: np.ndarray, *, folds: int, repeats: int, inner_folds: int,
                  seed: int) -> None:
    """Refuse fold counts the data cannot fill, before any fitting, naming the params key.

    Every fold needs whole pictures: ``cv.folds`` cannot exceed the number of
    original pictures in train, nor ``cv.inner_folds`` the pictures of the
    smallest outer training fold (selection runs inside it).
    """
    n_groups = len(np.unique(groups))
    if folds > n_groups:
        raise ParamsError(f"cv.folds={folds} is larger than the number of original pictures in train ({n_groups}); "
                          f"use at most {n_groups}.")
    fewest = min(len(np.unique(groups[train])) for train, _ in RepeatedStratifiedGroupKFold(
        n_splits=folds, n_repeats=repeats, random_state=seed).split(y, y, groups))
    if inner_folds > fewest:
        raise ParamsError(f"cv.inner_folds={inner_folds} is larger than the number of original pictures in the "
                          f"smallest training fold ({fewest} under cv.folds={folds}); use at most {fewest}.")
