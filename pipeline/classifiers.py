"""Registry of the classical classifiers: each a scikit-learn Pipeline plus its grid.

Scaling or L2 normalisation lives inside the pipeline, so it is learnt on the
training folds only and travels with the saved model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC

from pipeline.params import ParamsError


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    build: Callable[[], Pipeline]
    # grid key -> (check, description of allowed values)
    grid: dict[str, tuple[Callable[[Any], bool], str]]
    # turns the selected pipeline into the final model, when that needs more than a refit
    finalize: Callable[..., Any] | None = None


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "logreg": ClassifierSpec(
        build=lambda: Pipeline([("scale", StandardScaler()),
                                ("clf", LogisticRegression(max_iter=5000))]),
        grid={"C": (_positive, "positive numbers")},
    ),
    "svm": ClassifierSpec(
        build=lambda: Pipeline([("l2", Normalizer()), ("scale", StandardScaler()),
                                ("clf", SVC(kernel="rbf", random_state=0))]),
        grid={"C": (_positive, "positive numbers")},
        finalize=lambda chosen, X, y, groups, *, inner_folds, seed: calibrate_grouped(
            chosen, X, y, groups, folds=inner_folds, seed=seed),
    ),
    "knn": ClassifierSpec(
        build=lambda: Pipeline([("l2", Normalizer()), ("clf", KNeighborsClassifier())]),
        grid={"n_neighbors": (_positive_int, "integers >= 1"),
              "weights": (lambda v: v in ("uniform", "distance"), "'uniform' or 'distance'")},
    ),
}


def build_classifier(name: str, grid: Any) -> tuple[Pipeline, dict[str, list[Any]]]:
    """The pipeline for ``name`` and its validated grid in sklearn's ``clf__<key>`` form."""
    if name not in CLASSIFIERS:
        raise ParamsError(f"Unknown classifier {name!r}; choose one of {sorted(CLASSIFIERS)}.")
    spec = CLASSIFIERS[name]
    if not isinstance(grid, dict) or not grid:
        raise ParamsError(f"classical.{name} must map grid keys {sorted(spec.grid)} to lists of values.")
    unknown = sorted(set(grid) - set(spec.grid))
    if unknown:
        raise ParamsError(f"Unknown key(s) {[f'classical.{name}.{k}' for k in unknown]}; "
                          f"allowed: {sorted(spec.grid)}.")
    param_grid = {}
    for key, values in grid.items():
        values = values if isinstance(values, list) else [values]
        check, allowed = spec.grid[key]
        bad = [v for v in values if not check(v)]
        if not values or bad:
            raise ParamsError(f"classical.{name}.{key}={grid[key]!r} is invalid: values must be {allowed}.")
        param_grid[f"clf__{key}"] = values
    return spec.build(), param_grid


def calibrate_grouped(pipeline: Pipeline, X, y, groups, *, folds: int, seed: int) -> CalibratedClassifierCV:
    """Platt-scale a classifier without probabilities on decision values from grouped folds.

    libsvm's own ``probability=True`` calibrates on plain k-fold, where copies of
    one picture sit on both sides; grouped folds keep the calibration honest.
    With ``ensemble=False`` the classifier itself is refitted on all the data.
    """
    splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(X, y, groups))
    return CalibratedClassifierCV(clone(pipeline), method="sigmoid", cv=splits, ensemble=False).fit(X, y)


def select_and_fit(pipeline: Pipeline, param_grid: dict[str, list[Any]], X, y, groups, *,
                   inner_folds: int, seed: int) -> Pipeline:
    """Pick hyperparameters by grouped CV on (X, y) alone, then refit on all of it."""
    if all(len(v) == 1 for v in param_grid.values()):
        return clone(pipeline).set_params(**{k: v[0] for k, v in param_grid.items()}).fit(X, y)
    search = GridSearchCV(pipeline, param_grid, scoring="accuracy", error_score="raise",
                          cv=StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed))
    search.fit(X, y, groups=groups)
    return search.best_estimator_


def selected_params(model: Pipeline, param_grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The grid values the fitted pipeline ended up with, under their params.yaml names."""
    params = model.get_params()
    return {k.removeprefix("clf__"): params[k] for k in param_grid}


def smallest_training_fold(y, groups, *, folds: int, repeats: int, inner_folds: int, seed: int,
                           copies: int = 1) -> int:
    """Rows in the smallest inner-CV training fold a classifier will be fitted on (views included)."""
    from pipeline.splits import RepeatedStratifiedGroupKFold

    smallest = len(y)
    for outer, _ in RepeatedStratifiedGroupKFold(n_splits=folds, n_repeats=repeats,
                                                 random_state=seed).split(y, y, groups):
        inner = StratifiedGroupKFold(n_splits=inner_folds, shuffle=True, random_state=seed)
        for train, _ in inner.split(outer, y[outer], groups[outer]):
            smallest = min(smallest, len(train))
    return smallest * copies


def check_grid_fits(name: str, param_grid: dict[str, list[Any]], smallest_fold: int) -> None:
    """Refuse a kNN grid whose k exceeds the smallest training fold, before any fitting."""
    too_big = [k for k in param_grid.get("clf__n_neighbors", []) if k > smallest_fold]
    if too_big:
        raise ParamsError(f"classical.{name}.n_neighbors={too_big} is larger than the smallest training fold "
                          f"({smallest_fold} rows under the cv params); use values <= {smallest_fold}.")
