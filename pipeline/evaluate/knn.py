"""k nearest neighbours on embeddings: one neighbour search per fit serves the whole grid.

A grid of ``k`` values and weightings asks the same question of the data, who is near
whom, once per cell; scikit-learn's ``GridSearchCV`` searches again for every cell. Here
each inner fold is searched once, for the largest ``k``, and every cell's predictions are
derived from the sorted neighbours with scikit-learn's own voting rules, so the scores,
the selection and the final model are those ``GridSearchCV`` gives.

Up to ``exact_max_rows`` training rows the search is exact (scikit-learn's brute force, the
final model a ``KNeighborsClassifier``); above it the cost of exact search grows with the
square of the rows, so an inverted file finds the neighbours: k-means (FAISS) cuts the rows
into about ``sqrt(n)`` lists, each query scans only the ``PROBES`` lists nearest to it, and its
recall against exact search is measured on a subsample and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.extmath import weighted_mode

from pipeline.common.errors import PipelineError
from pipeline.evaluate._select_kernels import smallest_sorted
from pipeline.evaluate.grid_scores import choose, fit_chosen, grid_cells, grid_record
from pipeline.evaluate.splits import inner_splitter

log = logging.getLogger(__name__)

EXACT, IVF = "exact", "ivf"
PROBES = 16  # lists an IVF query scans: a fixed number, so a query's cost grows as sqrt(n), not n
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE = 64  # rows per list that k-means learns the lists from (FAISS subsamples to this many)
RECALL_QUERIES = 500  # rows of the subsample whose neighbours are compared with exact search


def _faiss():
    try:
        import faiss
    except ImportError as err:  # a dependency of the project; absent only in a broken install
        raise PipelineError("classifiers.knn above exact_max_rows needs faiss-cpu: pip install faiss-cpu "
                            "(or raise classifiers.knn.exact_max_rows).") from err
    return faiss


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


# ----------------------------------------------------------------------------- the approximate index


def ivf_lists(n: int) -> int:
    """Lists of the inverted file: about sqrt(n), so each holds about sqrt(n) rows."""
    return max(1, min(n // 39, int(round(math.sqrt(n)))))  # FAISS wants 39 training rows per list


def distance_less_norm(X: np.ndarray, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``|r|^2 - 2 x.r`` for every query x and row r: the squared distance less ``|x|^2`` (same order per query)."""
    scores = X @ rows.T
    scores *= -2
    scores += norms
    return scores


class IVFKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """kNN on an inverted file (Euclidean): each query scans the ``nprobe`` lists whose centres are nearest to it.

    FAISS's own ``IndexIVFFlat`` scans a list once per query, one distance at a time: on 34,000
    rows of 1280-d features, 16 of 184 lists probed, its search took 14.2 s against 8.4 s for
    exact search by one matrix product (benchmarks/knn_search.py). So the scan here goes list by list:
    the queries probing a list are scored against all its rows in one matrix product, and
    each query keeps its best ``k`` of every list it probed. FAISS learns the lists (k-means,
    seeded). The model holds its rows as scikit-learn's kNN does, and pickles like it.
    """

    def __init__(self, *, n_neighbors: int = 5, weights: str = "uniform", nprobe: int = PROBES,
                 seed: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.nprobe = nprobe
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> IVFKNeighborsClassifier:
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.classes_ = np.unique(y)
        lists = ivf_lists(len(X))
        kmeans = _faiss().Kmeans(X.shape[1], lists, niter=KMEANS_ITERATIONS, seed=self.seed,
                                 max_points_per_centroid=KMEANS_SAMPLE, min_points_per_centroid=1)
        kmeans.train(X)
        self.centres_ = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        owner = self._probe(X, 1)[:, 0]  # each row's list
        order = np.argsort(owner, kind="stable")
        self.rows_ = X[order]  # grouped by list
        self.ids_ = order  # the training row of each of them
        self.norms_ = np.einsum("ij,ij->i", self.rows_, self.rows_)
        self.bounds_ = np.searchsorted(owner[order], np.arange(lists + 1))
        self._y = np.searchsorted(self.classes_, y)  # in training-row order, as kneighbors' indices
        return self

    def _probe(self, X: np.ndarray, n: int) -> np.ndarray:
        """The ``n`` lists whose centres are nearest to each row, nearest first."""
        return smallest_sorted(distance_less_norm(X, self.centres_, np.einsum("ij,ij->i", self.centres_,
                                                                               self.centres_)), n)[1]

    def kneighbors(self, X: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices into the training rows), nearest first; distances are Euclidean, as scikit-learn's."""
        k = n_neighbors or self.n_neighbors
        X = np.ascontiguousarray(X, dtype=np.float32)
        probes = self._probe(X, min(self.nprobe, len(self.bounds_) - 1))
        # per query, per probed list, that list's best k by |r|^2 - 2 x.r (the squared distance less |x|^2)
        found = np.full((len(X), probes.shape[1], k), np.inf, dtype=np.float32)
        where = np.full(found.shape, -1, dtype=np.int64)
        for low, high, query, slot, scores in self.scanned_blocks(X, probes):
            kept = min(k, high - low)
            found[query, slot, :kept], best = smallest_sorted(scores, kept)
            where[query, slot, :kept] = low + best
        found, where = found.reshape(len(X), -1), where.reshape(len(X), -1)
        scores, best = smallest_sorted(found, k)  # ties: the list probed first (the nearer centre), then its order
        rows = np.take_along_axis(where, best, axis=1)
        # the probed lists held fewer than k rows: scan every row for those (ties: by list, then within it)
        short = (rows < 0).any(axis=1)
        if short.any():
            scores[short], rows[short] = smallest_sorted(distance_less_norm(X[short], self.rows_, self.norms_), k)
        squared = np.einsum("ij,ij->i", X, X)[:, None] + scores
        return np.sqrt(np.maximum(squared, 0)), self.ids_[rows]

    def scanned_blocks(self, X: np.ndarray, probes: np.ndarray):
        """Per non-empty list its rows' span, the queries probing it, their probe slots, and the block of their
        scores against its rows (|r|^2 - 2 x.r): the scan's work, one matrix product a list."""
        pairs = np.argsort(probes.ravel(), kind="stable")
        starts = np.searchsorted(probes.ravel()[pairs], np.arange(len(self.bounds_)))
        for lst in range(len(self.bounds_) - 1):
            low, high = self.bounds_[lst], self.bounds_[lst + 1]
            query, slot = np.divmod(pairs[starts[lst]:starts[lst + 1]], probes.shape[1])
            if high > low and len(query):
                yield low, high, query, slot, distance_less_norm(X[query], self.rows_[low:high], self.norms_[low:high])

    def _votes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist, ind = self.kneighbors(X)
        return votes(dist, ind, self._y, k=self.n_neighbors, weights=self.weights, n_classes=len(self.classes_))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._votes(X)[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self._votes(X)[1]]


# ----------------------------------------------------------------------------- the grid, one search per fold


def build_knn(search: str) -> Pipeline:
    """The kNN pipeline: L2 normalisation (cosine neighbours), then the exact or the IVF classifier."""
    clf = KNeighborsClassifier() if search == EXACT else IVFKNeighborsClassifier()
    return Pipeline([("l2", Normalizer()), ("clf", clf)])


def search_kind(n_rows: int, exact_max_rows: int) -> str:
    return EXACT if n_rows <= exact_max_rows else IVF


def neighbours(X_fit: np.ndarray, X_query: np.ndarray, k: int, search: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``X_fit`` (normalised) to each row of ``X_query``, nearest first."""
    if search == EXACT:
        return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(X_fit).kneighbors(X_query)
    return IVFKNeighborsClassifier(n_neighbors=k).fit(X_fit, np.zeros(len(X_fit), dtype=np.int64)).kneighbors(X_query)


def grid_search(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
                seed: int, search: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The best (n_neighbors, weights) by grouped CV, with one neighbour search per inner fold.

    Returns the chosen cell and the record (one row per cell: values, mean and std of the
    accuracy, rank), computed as ``GridSearchCV`` computes them; the first best cell wins
    (a grid of one cell: no search).
    """
    return choose(grid, lambda: _scored_grid(grid, X, y, groups, inner_folds=inner_folds, seed=seed, search=search))


def _scored_grid(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
                 seed: int, search: str) -> tuple[dict[str, Any], pd.DataFrame]:
    cells = grid_cells(grid)
    defaults = KNeighborsClassifier().get_params()  # for a key the grid leaves out
    largest = max(cell.get("n_neighbors", defaults["n_neighbors"]) for cell in cells)
    classes, y_codes = np.unique(y, return_inverse=True)
    splits = inner_splitter(inner_folds, seed).split(X, y, groups)
    scores = []
    for train, test in splits:
        normaliser = Normalizer()
        dist, ind = neighbours(normaliser.fit_transform(X[train]), normaliser.transform(X[test]), largest, search)
        scores.append([accuracy_score(y[test], classes[votes(dist, ind, y_codes[train], n_classes=len(classes),
                                                                    k=cell.get("n_neighbors", defaults["n_neighbors"]),
                                                                    weights=cell.get("weights", defaults["weights"]))[1]])
                       for cell in cells])
    return grid_record(cells, scores)


def select_knn(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
               seed: int, search: str) -> tuple[Pipeline, pd.DataFrame]:
    """Pick (k, weighting) by grouped CV on (X, y) alone, then fit on all of it (``select_and_fit`` for kNN)."""
    chosen, record = grid_search(grid, X, y, groups, inner_folds=inner_folds, seed=seed, search=search)
    return fit_chosen(build_knn(search), chosen, X, y), record


@dataclasses.dataclass(frozen=True)
class Recall:
    k: int
    queries: int
    recall: float  # share of the exact k nearest neighbours the index returned


def ivf_recall(X: np.ndarray, k: int, *, seed: int = 0, queries: int = RECALL_QUERIES) -> Recall:
    """Recall@k of the IVF index against exact search, for a subsample of rows queried against the rest."""
    rng = np.random.default_rng(seed)
    X = Normalizer().fit_transform(X)
    chosen = np.zeros(len(X), dtype=bool)
    chosen[rng.choice(len(X), size=min(queries, len(X) // 10), replace=False)] = True
    fit, query = X[~chosen], X[chosen]
    _, exact = neighbours(fit, query, k, EXACT)
    _, approximate = neighbours(fit, query, k, IVF)
    return Recall(k=k, queries=int(chosen.sum()), recall=recall_of(exact, approximate))


def recall_of(exact: np.ndarray, found: np.ndarray) -> float:
    """Share of the exact neighbours (one row of indices per query) that ``found`` holds."""
    return sum(len(np.intersect1d(a, b)) for a, b in zip(exact, found)) / exact.size
