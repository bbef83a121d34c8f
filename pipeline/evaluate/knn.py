"""k nearest neighbours on embeddings: one exact neighbour search per fit serves the whole grid.

A grid of ``k`` values and weightings asks the same question of the data, who is near
whom, once per cell; scikit-learn's ``GridSearchCV`` searches again for every cell. Here
each inner fold is searched once (scikit-learn's brute-force search), for the largest ``k``,
and every cell's predictions are derived from the sorted neighbours with scikit-learn's own
voting rules, so the scores, the selection and the final model are those ``GridSearchCV`` gives.

The search is exact at every size: its cost grows with the square of the rows (each query
against every training row, in BLAS blocks), and ``benchmarks/train.py`` states it. An
approximate index would be a different classifier unless its recall of the exact neighbours were
measured near 1; the inverted file tried here reached 0.44 to 0.53 on the benchmark's rows, and
bought less than a factor of two.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.extmath import weighted_mode

from pipeline.evaluate.grid_scores import choose, grid_cells, grid_record
from pipeline.evaluate.splits import inner_splitter

METHOD = "exact search"


def distance_weights(dist: np.ndarray) -> np.ndarray:
    """scikit-learn's ``weights='distance'``: 1/d, and a row with a zero distance votes with those neighbours only."""
    with np.errstate(divide="ignore"):
        weights = 1.0 / dist
    inf = np.isinf(weights)
    rows = inf.any(axis=1)
    weights[rows] = inf[rows]
    return weights


def votes(dist: np.ndarray, ind: np.ndarray, y_fit: np.ndarray, *, k: int, weights: str,
          n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, predicted class) from the first ``k`` sorted neighbours, by scikit-learn's rules."""
    labels = y_fit[ind[:, :k]]
    w = np.ones(labels.shape) if weights == "uniform" else distance_weights(dist[:, :k].astype(np.float64))
    proba = np.zeros((len(labels), n_classes))
    rows = np.arange(len(labels))
    for column in range(k):
        proba[rows, labels[:, column]] += w[:, column]
    proba /= proba.sum(axis=1, keepdims=True)
    if weights == "uniform":
        return proba, proba.argmax(axis=1)
    return proba, weighted_mode(labels, w, axis=1)[0].ravel().astype(np.int64)


def build_knn() -> Pipeline:
    """The kNN pipeline: L2 normalisation (cosine neighbours), then scikit-learn's exact classifier."""
    return Pipeline([("l2", Normalizer()), ("clf", KNeighborsClassifier())])


def build(grid: Any, rows: int) -> tuple[Pipeline, str]:
    """The registry's builder: the same exact pipeline at every size."""
    return build_knn(), METHOD


def search(pipeline: Pipeline, param_grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
           inner_folds: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The registry's search: ``grid_search`` (the pipeline is always ``build_knn()``'s)."""
    return grid_search(param_grid, X, y, groups, inner_folds=inner_folds, seed=seed)


def neighbours(X_fit: np.ndarray, X_query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``X_fit`` to each row of ``X_query``, nearest first (distances, indices)."""
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X_fit).kneighbors(X_query)


def grid_search(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
                seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The best (n_neighbors, weights) by grouped CV, with one neighbour search per inner fold.

    Returns the chosen cell and the record (one row per cell: values, mean and std of the
    accuracy, rank), computed as ``GridSearchCV`` computes them; the first best cell wins
    (a grid of one cell: no search).
    """
    return choose(grid, lambda: _scored_grid(grid, X, y, groups, inner_folds=inner_folds, seed=seed))


def _scored_grid(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
                 seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    cells = grid_cells(grid)
    defaults = KNeighborsClassifier().get_params()  # for a key the grid leaves out
    largest = max(cell.get("n_neighbors", defaults["n_neighbors"]) for cell in cells)
    classes, y_codes = np.unique(y, return_inverse=True)
    scores = []
    for train, test in inner_splitter(inner_folds, seed).split(X, y, groups):
        normaliser = Normalizer()
        dist, ind = neighbours(normaliser.fit_transform(X[train]), normaliser.transform(X[test]), largest)
        scores.append([accuracy_score(y[test], classes[votes(dist, ind, y_codes[train], n_classes=len(classes),
                                                                    k=cell.get("n_neighbors", defaults["n_neighbors"]),
                                                                    weights=cell.get("weights", defaults["weights"]))[1]])
                       for cell in cells])
    return grid_record(cells, scores)

