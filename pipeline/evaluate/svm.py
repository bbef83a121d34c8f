"""The RBF SVM above ``exact_max_rows``: a Nystroem map of the kernel, then a linear SVM, the C grid sharing the map.

Kernel ``SVC`` costs the square of the rows and more, so above ``exact_max_rows`` the kernel is
approximated by scikit-learn's ``Nystroem`` map and a linear SVM is trained on its dense features. scikit-learn's
``LinearSVC`` hands dense rows to liblinear as sparse (index, value) pairs in double precision and
solves each C from zero; ``NewtonLinearSVC`` solves the same problem (squared hinge, L2 penalty,
one-vs-rest, the intercept penalised like a feature, as liblinear does) by a finite Newton method
on the float32 matrix, a few matrix products per step. Its optimum is LinearSVC's: the objective
is strictly convex. The grid search fits the map once per inner fold and walks the C values
upwards, each fit starting from the last one's solution. ``LinearSVC(dual=False)`` on the same features
took 6 times as long for the C grid at 51,200 rows (48.7 s against 8.0 s on one thread,
``benchmarks/linear_svm.py``), so the solver stays; it uses only public scipy (BLAS, LAPACK) and
scikit-learn APIs.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import lapack
from scipy.linalg.blas import ssyrk
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC

from pipeline.evaluate.grid_scores import fit_each_cell, search_shared_features

# Training rows up to which the exact kernel SVC runs (classifiers.svm.exact_max_rows' default); above them the
# Nystroem map and the linear SVM, whose cost grows about linearly with the rows (benchmarks/README.md measures both).
EXACT_MAX_ROWS = 2000
NYSTROEM_COMPONENTS = 1000
SETTLED = 1e-4  # a gradient this small (of its size at w = 0) is done once the rows stop moving


def _upper_gram(rows: np.ndarray) -> np.ndarray:
    """``rows' rows`` in float64, its upper triangle only (what the Cholesky factorisation reads): half the work."""
    # a C-ordered (k, m) array is the Fortran-ordered transpose BLAS wants, so no copy is made
    return ssyrk(1.0, rows.T, lower=0).astype(np.float64, order="F")


class _SquaredHinge:
    """One-vs-rest ``0.5 |w|^2 + C sum(max(0, 1 - t a.w)^2)`` on ``a = [x, 1]``, solved for one C after another.

    A finite Newton method (Keerthi and DeCoste, 2005): on the rows inside the margin the
    objective is quadratic, so a Newton step solves ``(I + 2C A_S'A_S) d = g`` exactly, and
    the method ends when the rows inside the margin stop changing. ``A_S'A_S`` is kept per
    column and updated by the rows that enter or leave the margin, so after the first
    step each costs little, and the next C (walking the grid upwards) starts from the last
    solution and its matrices.
    """

    def __init__(self, X: np.ndarray, targets: np.ndarray) -> None:
        self.A = np.hstack([X, np.ones((len(X), 1), dtype=np.float32)])  # a copy of the rows: memory of one X more
        self.targets = targets
        self.W = np.zeros((self.A.shape[1], targets.shape[1]))
        self.inside = np.ones(targets.shape, dtype=bool)  # at w = 0 every row is inside the margin
        gram = _upper_gram(self.A)
        self.gram = [gram.copy(order="F") for _ in range(targets.shape[1])]  # A_S'A_S per column (its upper triangle)
        self.factors: list[tuple[float, Any] | None] = [None] * targets.shape[1]  # (C, Cholesky of I + 2C A_S'A_S)
        # the gradient at w = 0 is -2C A't: tolerances are shares of it, so a warm start is held to the same bar
        self.scale = float(np.abs(self.A.T @ targets).astype(np.float64).max())

    def _slack(self, scores: np.ndarray) -> np.ndarray:
        return np.maximum(1 - self.targets * scores, 0)

    def objective(self, W: np.ndarray, slack: np.ndarray, C: float) -> np.ndarray:
        return 0.5 * np.square(W).sum(axis=0) + C * np.square(slack, dtype=np.float64).sum(axis=0)

    def _update_gram(self, inside: np.ndarray) -> None:
        """Each column's ``A_S'A_S`` for the rows now inside its margin: updated by the rows that moved, or
        recomputed when more moved than stay inside (cheaper, and it sheds the updates' rounding)."""
        A = self.A
        for c in range(self.W.shape[1]):
            entered, left = inside[:, c] & ~self.inside[:, c], ~inside[:, c] & self.inside[:, c]
            moved = int(entered.sum() + left.sum())
            if moved == 0:
                continue
            if moved > inside[:, c].sum():
                self.gram[c] = _upper_gram(A[inside[:, c]])
            else:
                self.gram[c] += _upper_gram(A[entered])
                self.gram[c] -= _upper_gram(A[left])
            self.factors[c] = None
        self.inside = inside

    def _factor(self, c: int, C: float) -> Any:
        """The Cholesky factor of column ``c``'s Hessian, kept while its rows inside the margin and C stay the same."""
        if self.factors[c] is None or self.factors[c][0] != C:
            hessian = self.gram[c] * (2 * C)
            hessian.flat[:: len(hessian) + 1] += 1
            factor, info = lapack.dpotrf(hessian, lower=0, clean=0, overwrite_a=1)
            if info != 0:
                raise np.linalg.LinAlgError(f"Cholesky factorisation failed (LAPACK info {info})")
            self.factors[c] = (C, factor)
        return self.factors[c][1]

    def _newton_direction(self, grad: np.ndarray, C: float) -> np.ndarray:
        """Each column's ``(I + 2C A_S'A_S)^-1 g`` from its Cholesky factor."""
        return np.column_stack([lapack.dpotrs(self._factor(c, C), grad[:, c], lower=0)[0]
                                for c in range(self.W.shape[1])])

    def solve(self, C: float, *, tol: float, max_iter: int) -> int:
        """Minimise for ``C`` from the current solution; returns the Newton steps taken (``max_iter``: gave up).

        Done when the gradient is below ``tol`` of its size at w = 0; or, within ``SETTLED`` of
        it, when a full step left every row on its side of the margin (the minimiser of that
        quadratic piece) or no step lowers the objective any more in float32.
        """
        A, scores = self.A, self.A @ self.W.astype(np.float32)
        origin = 2 * C * self.scale
        full_step = False
        for step in range(max_iter):
            slack = self._slack(scores)
            inside = slack > 0
            settled = full_step and np.array_equal(inside, self.inside)
            self._update_gram(inside)
            grad = self.W - 2 * C * (A.T @ (self.targets * slack)).astype(np.float64)
            size_of = np.abs(grad).max() / origin
            if size_of <= tol or (settled and size_of <= SETTLED):
                return step
            direction = self._newton_direction(grad, C)
            moved = A @ direction.astype(np.float32)
            before = self.objective(self.W, slack, C)
            decrease = np.einsum("ij,ij->j", grad, direction)
            size = np.ones(self.W.shape[1])
            for _ in range(20):  # backtrack each column until its objective falls enough (Armijo)
                trial = self.objective(self.W - size * direction, self._slack(scores - size * moved), C)
                short = trial > before - 1e-4 * size * decrease
                if not short.any():
                    break
                size[short] /= 2
            else:  # no step lowers these columns' objective in float32 any more
                size[short] = 0
                if not size.any():
                    return step if size_of <= SETTLED else max_iter
            full_step = bool((size == 1).all())
            self.W -= size * direction
            scores = A @ self.W.astype(np.float32)
        return max_iter


class NewtonLinearSVC(ClassifierMixin, BaseEstimator):
    """``LinearSVC``'s model (squared hinge, L2, one-vs-rest, intercept_scaling 1) solved by finite Newton on dense rows.

    Its optimum is LinearSVC's (the objective is strictly convex); the cost is matrix products
    on the float32 rows instead of liblinear's coordinate steps on a sparse double copy of them.
    """

    def __init__(self, C: float = 1.0, *, tol: float = 1e-6, max_iter: int = 100) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray) -> NewtonLinearSVC:
        [(self.classes_, self.coef_, self.intercept_, self.n_iter_)] = self._solve(X, y, [self.C])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """One score per class (one column for two classes, its sign the class), as ``LinearSVC``'s."""
        scores = np.asarray(X) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]

    def fit_path(self, X: np.ndarray, y: np.ndarray, Cs: list[float]) -> list[NewtonLinearSVC]:
        """One fitted copy per C, in the order given; each solve starts from the previous one's solution."""
        fitted = []
        for C, (classes, coef, intercept, steps) in zip(Cs, self._solve(X, y, Cs)):
            model = clone(self).set_params(C=C)
            model.classes_, model.coef_, model.intercept_, model.n_iter_ = classes, coef, intercept, steps
            fitted.append(model)
        return fitted

    def _solve(self, X: np.ndarray, y: np.ndarray, Cs: list[float]):
        """(classes, coef, intercept, Newton steps) for each C in turn, from one problem."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"NewtonLinearSVC needs two classes at least; the data holds {list(classes)}.")
        positive = classes[1:] if len(classes) == 2 else classes  # binary: one column, as LinearSVC
        problem = _SquaredHinge(X, np.where(np.asarray(y)[:, None] == positive[None, :], 1.0, -1.0).astype(np.float32))
        for C in Cs:
            steps = problem.solve(float(C), tol=self.tol, max_iter=self.max_iter)
            if steps >= self.max_iter:
                warnings.warn(f"NewtonLinearSVC (C={C}) stopped after max_iter={self.max_iter} Newton steps before "
                              "converging.", ConvergenceWarning, stacklevel=3)
            yield classes, problem.W[:-1].T.copy(), problem.W[-1].copy(), steps


def _fit_upwards(classifier: NewtonLinearSVC, cells: list[dict[str, Any]], X: np.ndarray, y: np.ndarray) -> list[Any]:
    """One fit per cell, solved from the smallest C upwards, each from the last one's solution."""
    upwards = sorted(range(len(cells)), key=lambda i: cells[i]["C"])
    fitted = dict(zip(upwards, classifier.fit_path(X, y, [cells[i]["C"] for i in upwards])))
    return [fitted[i] for i in range(len(cells))]


def build(grid: Any, rows: int) -> tuple[Pipeline, str]:
    """Exact RBF ``SVC`` up to ``exact_max_rows``; above it a Nystroem map of the same kernel and a linear SVM.

    Kernel SVC's cost grows with the square of the rows and more (scikit-learn: "may be
    impractical beyond tens of thousands of samples"); the Nystroem features approximate the
    RBF kernel (gamma 1/n_features, SVC's "scale" on standardised features) at a cost linear in rows.
    ``grid``: the registry's validated entry (its ``options``).
    """
    steps = [("l2", Normalizer()), ("scale", StandardScaler())]
    if rows <= grid.options["exact_max_rows"]:
        return Pipeline([*steps, ("clf", SVC(kernel="rbf", random_state=0))]), "exact RBF SVC"
    components = grid.options["n_components"]
    nystroem = Nystroem(n_components=min(components, rows), random_state=0)  # gamma 1 / n_features
    return Pipeline([*steps, ("nystroem", nystroem), ("clf", NewtonLinearSVC())]), f"nystroem {components} + linear SVM"


def search(pipeline: Pipeline, param_grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray, groups: np.ndarray, *,
           inner_folds: int, seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The best C by grouped CV, chosen and recorded as ``GridSearchCV`` would from the same scores (a grid of one
    cell: no search). Above exact_max_rows one Nystroem map per inner fold, then C upwards with warm starts; below
    it, cell by cell."""
    fit_cells = _fit_upwards if isinstance(pipeline[-1], NewtonLinearSVC) else fit_each_cell
    return search_shared_features(pipeline, param_grid, X, y, groups, inner_folds=inner_folds, seed=seed,
                                  fit_cells=fit_cells)
