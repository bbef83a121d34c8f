"""The RBF SVM above ``exact_max_rows``: a Nystroem map of the kernel, then a linear SVM, the C grid sharing the map.

Kernel ``SVC`` costs the square of the rows and more, so above ``exact_max_rows`` the kernel is
approximated by a Nystroem map and a linear SVM is trained on its dense features. scikit-learn's
``LinearSVC`` hands dense rows to liblinear as sparse (index, value) pairs in double precision and
solves each C from zero; ``NewtonLinearSVC`` solves the same problem (squared hinge, L2 penalty,
one-vs-rest, the intercept penalised like a feature, as liblinear does) by Newton-CG on the
float32 matrix, a few matrix products per step. Its optimum is LinearSVC's: the objective is
strictly convex. The grid search fits the map once per inner fold and walks the C values upwards,
each fit starting from the last one's solution.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline

from pipeline.evaluate.grid_scores import grid_cells, grid_record


class _SquaredHinge:
    """``0.5 |w|^2 + C sum(max(0, 1 - t (x.w + b))^2)`` summed over the one-vs-rest columns, w and b stacked."""

    def __init__(self, X: np.ndarray, targets: np.ndarray, C: float) -> None:
        self.X, self.targets, self.C = X, targets, C
        self.shape = (X.shape[1] + 1, targets.shape[1])  # the weights, then a row of intercepts
        self._at: np.ndarray | None = None
        self._active: np.ndarray | None = None

    def _scores(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W = w.reshape(self.shape).astype(np.float32)
        return W, self.X @ W[:-1] + W[-1]

    def value_and_grad(self, w: np.ndarray) -> tuple[float, np.ndarray]:
        W, scores = self._scores(w)
        slack = np.maximum(1 - self.targets * scores, 0)
        self._at, self._active = w.copy(), (slack > 0).astype(np.float32)
        pull = self.targets * slack
        grad = np.vstack([self.X.T @ pull, pull.sum(axis=0, keepdims=True)])
        value = 0.5 * float(w @ w) + self.C * float(np.square(slack, dtype=np.float64).sum())
        return value, w - 2 * self.C * grad.astype(np.float64).ravel()

    def hessp(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The generalised Hessian at ``w`` (the rows inside the margin) times ``v``."""
        if self._at is None or not np.array_equal(w, self._at):
            self.value_and_grad(w)
        _, scores = self._scores(v)
        scores *= self._active
        product = np.vstack([self.X.T @ scores, scores.sum(axis=0, keepdims=True)])
        return v + 2 * self.C * product.astype(np.float64).ravel()


class NewtonLinearSVC(LinearClassifierMixin, BaseEstimator):
    """``LinearSVC``'s model (squared hinge, L2, one-vs-rest, intercept_scaling 1) solved by Newton-CG on dense rows.

    ``warm_start``: start from the last fit's solution (the grid search walks C upwards this way).
    """

    def __init__(self, C: float = 1.0, *, tol: float = 1e-5, max_iter: int = 200, warm_start: bool = False) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    def fit(self, X: np.ndarray, y: np.ndarray) -> NewtonLinearSVC:
        X = np.ascontiguousarray(X, dtype=np.float32)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"NewtonLinearSVC needs two classes at least; the data holds {list(classes)}.")
        positive = classes[1:] if len(classes) == 2 else classes  # binary: one column, as LinearSVC
        targets = np.where(np.asarray(y)[:, None] == positive[None, :], 1.0, -1.0).astype(np.float32)
        problem = _SquaredHinge(X, targets, float(self.C))
        start = np.zeros(problem.shape)
        if self.warm_start and getattr(self, "coef_", None) is not None and self.coef_.shape == (len(positive), X.shape[1]):
            start = np.vstack([self.coef_.T, self.intercept_[None, :]])
        result = minimize(problem.value_and_grad, start.ravel(), jac=True, hessp=problem.hessp, method="Newton-CG",
                          options={"xtol": self.tol, "maxiter": self.max_iter})
        if result.status in (1, 3):  # out of iterations, or a NaN (2, a line search short of xtol, is float32's limit)
            warnings.warn(f"NewtonLinearSVC (C={self.C}) stopped before converging: {result.message}",
                          ConvergenceWarning, stacklevel=2)
        W = result.x.reshape(problem.shape)
        self.classes_, self.coef_, self.intercept_ = classes, W[:-1].T.copy(), W[-1].copy()
        self.n_iter_ = int(result.nit)
        return self


def grid_search(pipeline: Pipeline, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
                inner_folds: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The best C by grouped CV: per inner fold one Nystroem map, then C upwards with warm starts.

    Returns the chosen cell and the record, computed as ``GridSearchCV`` computes them from the same scores.
    """
    cells = grid_cells(grid)
    upwards = sorted(range(len(cells)), key=lambda i: cells[i]["C"])
    scores = []
    for train, test in StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed).split(X, y, groups):
        features = clone(pipeline[:-1])
        fitted, held_out = features.fit_transform(X[train]), features.transform(X[test])
        classifier = clone(pipeline[-1]).set_params(warm_start=True)
        fold = [0.0] * len(cells)
        for i in upwards:
            classifier.set_params(C=cells[i]["C"]).fit(fitted, y[train])
            fold[i] = accuracy_score(y[test], classifier.predict(held_out))
        scores.append(fold)
    return grid_record(cells, scores, [key.removeprefix("clf__") for key in grid])


def select_svm(pipeline: Pipeline, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
               inner_folds: int, seed: int) -> tuple[Pipeline, pd.DataFrame]:
    """Pick C by grouped CV on (X, y) alone, then fit on all of it (``select_and_fit`` for the Nystroem SVM)."""
    if all(len(v) == 1 for v in grid.values()):
        chosen = {key.removeprefix("clf__"): v[0] for key, v in grid.items()}
        record = pd.DataFrame([chosen])
    else:
        chosen, record = grid_search(pipeline, grid, X, y, groups, inner_folds=inner_folds, seed=seed)
    return clone(pipeline).set_params(**{f"clf__{key}": value for key, value in chosen.items()}).fit(X, y), record
