"""The record of a grid search whose folds were scored by our own loop, in ``GridSearchCV``'s terms.

kNN and the approximate SVM score every grid cell on each inner fold themselves (one neighbour
search, one kernel map per fold), so they report, and choose, exactly as ``GridSearchCV`` would
from the same scores: the mean and the population std over folds, ranks with ties sharing the
lowest rank, the first best cell chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cells of a ``clf__<key>`` grid, under their params names, in ``GridSearchCV``'s order."""
    return list(ParameterGrid({key.removeprefix("clf__"): values for key, values in grid.items()}))


def grid_record(cells: list[dict[str, Any]], scores: list[list[float]]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The chosen cell and the record (one row per cell: values, mean and std of the accuracy, rank).

    ``scores``: one list per fold, one accuracy per cell in ``cells``' order.
    """
    table = np.array(scores, dtype=np.float64).T  # (cells, folds)
    means = np.average(table, axis=1)
    stds = np.sqrt(np.average((table - means[:, None]) ** 2, axis=1))
    ranks = rankdata(-means, method="min").astype(np.int32)
    record = pd.DataFrame(cells)[sorted(cells[0])].assign(mean_accuracy=means, std_accuracy=stds, rank=ranks)
    return cells[int(np.argmin(ranks))], record


def choose(grid: dict[str, list[Any]],
           search: Callable[[], tuple[dict[str, Any], pd.DataFrame]]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The chosen cell and the record: a grid of one cell is its own choice (no search, no scores), else ``search()``."""
    if all(len(values) == 1 for values in grid.values()):
        chosen = {key.removeprefix("clf__"): values[0] for key, values in grid.items()}
        return chosen, pd.DataFrame([chosen])
    return search()


def fit_chosen(pipeline: Pipeline, chosen: dict[str, Any], X: np.ndarray, y: np.ndarray) -> Pipeline:
    """The pipeline with the chosen cell's values, fitted on all of (X, y)."""
    return clone(pipeline).set_params(**{f"clf__{key}": value for key, value in chosen.items()}).fit(X, y)
