"""Grid searches scored by our own loop, recorded and decided in ``GridSearchCV``'s terms.

Every grid varies the classifier alone, so per inner fold the steps before it (scaling, a
kernel map) are fitted once and serve every cell, as ``GridSearchCV`` would fit them once per
cell, identically; kNN goes further (one neighbour search per fold). The scores are reported,
and the choice made, exactly as ``GridSearchCV`` does from the same scores: the mean and the
population std over folds, ranks with ties sharing the lowest rank, the first best cell chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.metrics import accuracy_score
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from pipeline.evaluate.splits import inner_splitter

# (unfitted classifier, cells, features, labels) -> one fitted classifier per cell, in the cells' order
FitCells = Callable[[Any, list[dict[str, Any]], np.ndarray, np.ndarray], list[Any]]


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


def fit_each_cell(classifier: Any, cells: list[dict[str, Any]], X: np.ndarray, y: np.ndarray) -> list[Any]:
    return [clone(classifier).set_params(**cell).fit(X, y) for cell in cells]


def search_shared_features(pipeline: Pipeline, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray,
                           groups: np.ndarray, *, inner_folds: int, seed: int,
                           fit_cells: FitCells = fit_each_cell) -> tuple[dict[str, Any], pd.DataFrame]:
    """The chosen cell and the record of a grouped-CV search over the pipeline's last step (a grid of one cell:
    no search). Per inner fold the steps before it are fitted once; ``fit_cells`` fits the classifier for
    every cell on their output (one by one by default)."""
    def search() -> tuple[dict[str, Any], pd.DataFrame]:
        cells = grid_cells(grid)
        scores = []
        for train, test in inner_splitter(inner_folds, seed).split(X, y, groups):
            features = clone(pipeline[:-1])
            fitted, held_out = features.fit_transform(X[train]), features.transform(X[test])
            models = fit_cells(pipeline[-1], cells, fitted, y[train])
            scores.append([accuracy_score(y[test], model.predict(held_out)) for model in models])
        return grid_record(cells, scores)

    return choose(grid, search)


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
