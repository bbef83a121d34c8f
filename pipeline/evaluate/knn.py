"""k nearest neighbours on embeddings: exact search, and one search per fit for the whole grid.

A grid of ``k`` values and weightings asks the same question of the data, who is near
whom, once per cell; scikit-learn's ``GridSearchCV`` searches again for every cell. Here
each inner fold is searched once, for the largest ``k``, and every cell's predictions are
derived from the sorted neighbours with scikit-learn's voting rules (``votes``), so the scores
and the selection are those ``GridSearchCV`` gives with the same classifier.

The search is exact at every size: FAISS's brute-force ``knn`` (float32 matrix products in
blocks and its own top-k), 2.3 times as fast as scikit-learn's brute force, which computes in
float64 (17,000 queries in 34,000 rows on one thread: 15.0 s against 34.6 s, ``benchmarks/knn_search.py``). Its
cost grows with the square of the rows, as exact search does (``benchmarks/train.py``). An
approximate index would be a different classifier unless its recall of the exact neighbours were
measured near 1; the inverted file tried before reached 0.44 to 0.53 on the benchmark's rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.extmath import weighted_mode

from pipeline.evaluate.grid_scores import choose, grid_cells, grid_record
from pipeline.evaluate.splits import inner_splitter


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
    np.add.at(proba, (np.arange(len(labels))[:, None], labels), w)  # row by row, each row's neighbours in order
    proba /= proba.sum(axis=1, keepdims=True)
    if weights == "uniform":
        return proba, proba.argmax(axis=1)
    return proba, weighted_mode(labels, w, axis=1)[0].ravel().astype(np.int64)


def neighbours(X_fit: np.ndarray, X_query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``X_fit`` to each row of ``X_query``, nearest first: (Euclidean distances,
    indices), exact (FAISS's brute-force search in float32)."""
    import faiss  # noqa: PLC0415 - loaded by the stages that search, not by every stage that imports the registry

    squared, index = faiss.knn(np.ascontiguousarray(X_query, dtype=np.float32),
                               np.ascontiguousarray(X_fit, dtype=np.float32), k)
    return np.sqrt(np.maximum(squared, 0, dtype=np.float64)), index


class ExactKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """kNN with scikit-learn's ``KNeighborsClassifier`` rules (its ``n_neighbors`` and ``weights``), its neighbours
    found by ``neighbours``: exact, in float32."""

    def __init__(self, n_neighbors: int = 5, weights: str = "uniform") -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights

    def fit(self, X: np.ndarray, y: np.ndarray) -> ExactKNeighborsClassifier:
        self.classes_, self.labels_ = np.unique(y, return_inverse=True)
        self.rows_ = np.array(X, dtype=np.float32)
        return self

    def kneighbors(self, X: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return neighbours(self.rows_, X, n_neighbors or self.n_neighbors)

    def _votes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist, ind = self.kneighbors(X)
        return votes(dist, ind, self.labels_, k=self.n_neighbors, weights=self.weights, n_classes=len(self.classes_))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._votes(X)[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self._votes(X)[1]]


def build(grid: Any, rows: int) -> tuple[Pipeline, str]:
    """The registry's builder: L2 normalisation (cosine neighbours), then the exact classifier, at every size."""
    return Pipeline([("l2", Normalizer()), ("clf", ExactKNeighborsClassifier())]), "exact search"


def search(pipeline: Pipeline, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
           inner_folds: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The registry's search: the best (n_neighbors, weights) by grouped CV, one neighbour search per inner fold
    (``pipeline`` is always ``build``'s).

    Returns the chosen cell and the record (one row per cell: values, mean and std of the
    accuracy, rank), computed as ``GridSearchCV`` computes them; the first best cell wins
    (a grid of one cell: no search).
    """
    return choose(grid, lambda: _scored_grid(grid, X, y, groups, inner_folds=inner_folds, seed=seed))


def _scored_grid(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
                 seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    cells = grid_cells(grid)
    models = [ExactKNeighborsClassifier(**cell) for cell in cells]  # a key the grid leaves out keeps its default
    largest = max(model.n_neighbors for model in models)
    classes, y_codes = np.unique(y, return_inverse=True)
    scores = []
    for train, test in inner_splitter(inner_folds, seed).split(X, y, groups):
        normaliser = Normalizer()
        dist, ind = neighbours(normaliser.fit_transform(X[train]), normaliser.transform(X[test]), largest)
        scores.append([accuracy_score(y[test], classes[votes(dist, ind, y_codes[train], k=model.n_neighbors,
                                                             weights=model.weights, n_classes=len(classes))[1]])
                       for model in models])
    return grid_record(cells, scores)

