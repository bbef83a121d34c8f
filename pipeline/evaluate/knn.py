"""k nearest neighbours on embeddings: one neighbour search per fit serves the whole grid.

A grid of ``k`` values and weightings asks the same question of the data, who is near
whom, once per cell; scikit-learn's ``GridSearchCV`` searches again for every cell. Here
each inner fold is searched once, for the largest ``k``, and every cell's predictions are
derived from the sorted neighbours with scikit-learn's own voting rules, so the scores,
the selection and the final model are those ``GridSearchCV`` gives.

Up to ``exact_max_rows`` training rows the search is exact (scikit-learn's brute force, the
final model a ``KNeighborsClassifier``); above it the cost of exact search grows with the
square of the rows, so an inverted-file index (FAISS ``IndexIVFFlat``, about ``sqrt(n)``
lists, a fixed share of them probed) finds the neighbours, and its recall against exact
search is measured on a subsample and reported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.model_selection import ParameterGrid, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.utils.extmath import weighted_mode

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

EXACT, IVF = "exact", "ivf"
PROBE_SHARE = 8  # an IVF search probes 1/PROBE_SHARE of the lists (at least PROBE_MIN)
PROBE_MIN = 16
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


class IVFKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """kNN on an inverted-file index (FAISS ``IndexIVFFlat``, L2): each query scans the lists nearest to it.

    The rows are expected L2-normalised (the pipeline's ``Normalizer`` does it). Built with
    a fixed seed and picklable (the index is serialised), so a fitted model is a file like any other.
    """

    def __init__(self, *, n_neighbors: int = 5, weights: str = "uniform", seed: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray) -> IVFKNeighborsClassifier:
        faiss = _faiss()
        X = np.ascontiguousarray(X, dtype=np.float32)
        self.classes_ = np.unique(y)
        self._y = np.searchsorted(self.classes_, y)
        lists = ivf_lists(len(X))
        quantizer = faiss.IndexFlatL2(X.shape[1])
        index = faiss.IndexIVFFlat(quantizer, X.shape[1], lists)
        index.cp.seed = self.seed
        index.train(X)
        index.add(X)
        index.nprobe = min(lists, max(PROBE_MIN, lists // PROBE_SHARE))
        self.index_ = index
        return self

    def kneighbors(self, X: np.ndarray, n_neighbors: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, indices), nearest first; distances are Euclidean, as scikit-learn's."""
        k = n_neighbors or self.n_neighbors
        X = np.ascontiguousarray(X, dtype=np.float32)
        squared, ind = self.index_.search(X, k)
        short = (ind < 0).any(axis=1)  # the probed lists held fewer than k rows: search those rows in every list
        if short.any():
            probed, self.index_.nprobe = self.index_.nprobe, self.index_.nlist
            squared[short], ind[short] = self.index_.search(X[short], k)
            self.index_.nprobe = probed
        return np.sqrt(np.maximum(squared, 0)), ind

    def _votes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dist, ind = self.kneighbors(X)
        return votes(dist, ind, self._y, k=self.n_neighbors, weights=self.weights, n_classes=len(self.classes_))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._votes(X)[0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self._votes(X)[1]]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if "index_" in state:
            state["index_"] = _faiss().serialize_index(state["index_"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "index_" in state:
            state["index_"] = _faiss().deserialize_index(state["index_"])
        self.__dict__.update(state)


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
    accuracy, rank), computed as ``GridSearchCV`` computes them; the first best cell wins.
    """
    cells = list(ParameterGrid({key.removeprefix("clf__"): values for key, values in grid.items()}))
    defaults = KNeighborsClassifier().get_params()  # for a key the grid leaves out
    largest = max(cell.get("n_neighbors", defaults["n_neighbors"]) for cell in cells)
    classes, y_codes = np.unique(y, return_inverse=True)
    splits = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed).split(X, y, groups)
    scores = []
    for train, test in splits:
        normaliser = Normalizer()
        dist, ind = neighbours(normaliser.fit_transform(X[train]), normaliser.transform(X[test]), largest, search)
        scores.append([accuracy_score(y[test], classes[votes(dist, ind, y_codes[train], n_classes=len(classes),
                                                                    k=cell.get("n_neighbors", defaults["n_neighbors"]),
                                                                    weights=cell.get("weights", defaults["weights"]))[1]])
                       for cell in cells])
    scores = np.array(scores, dtype=np.float64).T  # (cells, splits)
    means = np.average(scores, axis=1)
    stds = np.sqrt(np.average((scores - means[:, None]) ** 2, axis=1))
    ranks = rankdata(-means, method="min").astype(np.int32)
    record = pd.DataFrame(cells)[[key.removeprefix("clf__") for key in sorted(grid)]]
    record = record.assign(mean_accuracy=means, std_accuracy=stds, rank=ranks)
    return cells[int(np.argmin(ranks))], record


def select_knn(grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *, inner_folds: int,
               seed: int, search: str) -> tuple[Pipeline, pd.DataFrame]:
    """Pick (k, weighting) by grouped CV on (X, y) alone, then fit on all of it (``select_and_fit`` for kNN)."""
    if all(len(v) == 1 for v in grid.values()):
        chosen = {key.removeprefix("clf__"): v[0] for key, v in grid.items()}
        record = pd.DataFrame([chosen])
    else:
        chosen, record = grid_search(grid, X, y, groups, inner_folds=inner_folds, seed=seed, search=search)
    model = build_knn(search).set_params(**{f"clf__{key}": value for key, value in chosen.items()})
    return model.fit(X, y), record


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
    found = sum(len(np.intersect1d(a, b)) for a, b in zip(exact, approximate))
    return Recall(k=k, queries=int(chosen.sum()), recall=found / exact.size)
