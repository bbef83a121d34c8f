"""The registry of classifiers: how each is built from its params, and how it picks its hyperparameters.

Every entry answers the same question, ``select``: given the training data (views
included) and valid, return the final model, the hyperparameters it chose, and the
two fitting procedures the evaluation protocol cross-validates. So one ``train``
stage serves every classifier, and adding one means adding an entry here.

- ``head``: the transfer-learning recipe's linear head; early stopping on valid
  picks the number of epochs, which every CV fold then trains.
- ``logreg``, ``svm``, ``knn``: scikit-learn ``Pipeline``s with scaling or L2
  normalisation inside (learnt on training folds only, saved with the model); the
  grid is searched by cross-validation grouped by original picture.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.common.params import SEED, CVParams, ParamsError, number_from_text, parse_section
from pipeline.evaluate import knn, svm
from pipeline.evaluate.grid_scores import fit_chosen, search_shared_features
from pipeline.evaluate.protocol import FitFold
from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold, inner_splitter

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What a classifier may learn from: train (views appended, groups alike) and valid."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    n_classes: int
    n_images: int  # the first n_images rows are the images themselves; their views follow
    copies: int  # 1 + number of augmented views per image
    device: str = "cpu"  # where a torch classifier (the head) trains: extract.device, resolved


@dataclasses.dataclass
class Selection:
    model: Any  # the final model, fitted on all of train
    selected: dict[str, Any]  # the chosen hyperparameters, under their params.yaml names
    fit_fold: FitFold  # the whole procedure, selection included, on a training fold (nested CV)
    fit_fixed: FitFold  # the chosen hyperparameters refitted (only for the leaky figure)
    record: pd.DataFrame  # how they were chosen: grid scores, or the training curve
    # which algorithm ran (e.g. exact or approximate kNN search) and what to report about it
    method: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
    parse: Callable[[Any, str], Any]  # (raw params, dotted name) -> validated params
    select: Callable[[Any, TrainingData, CVParams], Selection]
    # the nested procedure of a CV fold, known before the final selection has run (so the folds can run beside
    # it); None where the folds need the selection's result (the head trains the epochs it chose)
    fold_fit: Callable[[Any, TrainingData, CVParams], FitFold] | None = None
    uses_device: bool = False  # trains with torch, on the extraction's device (the others: scikit-learn, CPU)


# ----------------------------------------------------------------------------- the linear head


@dataclasses.dataclass(frozen=True)
class HeadParams:
    dropout: float
    lr: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    patience: int
    seed: int
    RANGES: ClassVar[dict] = {"dropout": (0.0, 0.99), "lr": (1e-9, None), "weight_decay": (0.0, None),
                              "batch_size": (1, None), "max_epochs": (1, None), "patience": (1, None), "seed": SEED}


def _select_head(params: HeadParams, data: TrainingData, cv: CVParams) -> Selection:
    """Early stopping on valid picks the epoch count; CV folds train exactly that many epochs."""
    from pipeline.evaluate.linear_head import LinearHeadClassifier  # torch: imported by the head's stages alone

    # HeadParams' keys are the classifier's own
    model = LinearHeadClassifier(n_classes=data.n_classes, device=data.device, **dataclasses.asdict(params))
    model.fit(data.X, data.y, X_valid=data.X_valid, y_valid=data.y_valid)
    fixed = clone(model).set_params(max_epochs=model.best_epoch_)

    def fit_fixed(X, y, groups):
        return clone(fixed).fit(X, y)

    return Selection(model=model, selected={"epochs": model.best_epoch_}, fit_fold=fit_fixed, fit_fixed=fit_fixed,
                     record=pd.DataFrame(model.history_), method={"name": f"linear head ({data.device})"})


# ----------------------------------------------------------------------------- scikit-learn grids


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclasses.dataclass(frozen=True)
class Grid:
    """A validated grid, in scikit-learn's ``clf__<key>`` form, and the entry's other settings."""

    values: dict[str, list[Any]]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "classifiers.<name>"  # the params entry, for messages
    notes: tuple[str, ...] = ()  # values dropped because the data is too small for them (grid_that_fits)


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting of a grid classifier that is not searched: one value, with a default."""

    check: Callable[[Any], bool]
    allowed: str
    default: Any


@dataclasses.dataclass(frozen=True)
class GridClassifier:
    # (grid, rows the stage trains on) -> the unfitted pipeline and a line saying which method it is
    build: Callable[[Grid, int], tuple[Pipeline, str]]
    # grid key -> (check, description of allowed values)
    keys: dict[str, tuple[Callable[[Any], bool], str]]
    options: dict[str, Option] = dataclasses.field(default_factory=dict)
    # turns the selected pipeline into the final model, when that needs more than a refit
    finalize: Callable[..., Any] | None = None
    # each cell fitted in turn, unless the entry searches its grid faster (the same choice and scores)
    search: Callable[..., tuple[dict[str, Any], pd.DataFrame]] = search_shared_features

    def parse(self, raw: Any, name: str) -> Grid:
        if not isinstance(raw, dict) or not raw:
            raise ParamsError(f"{name} must map grid keys {sorted(self.keys)} to lists of values.")
        unknown = sorted(set(raw) - set(self.keys) - set(self.options))
        if unknown:
            raise ParamsError(f"Unknown key(s) {[f'{name}.{k}' for k in unknown]}; allowed: "
                              f"{sorted(self.keys) + sorted(self.options)}.")
        values = {key: [number_from_text(v) for v in (given if isinstance(given, list) else [given])]
                  for key, given in raw.items() if key in self.keys}
        for key, options in values.items():
            if not options or not all(self.keys[key][0](v) for v in options):
                raise ParamsError(f"{name}.{key}={raw[key]!r} is invalid: values must be {self.keys[key][1]}.")
        settings = {key: number_from_text(raw.get(key, option.default)) for key, option in self.options.items()}
        for key, option in self.options.items():
            if not option.check(settings[key]):
                raise ParamsError(f"{name}.{key}={raw.get(key)!r} is invalid: it must be {option.allowed}.")
        return Grid({f"clf__{key}": options for key, options in values.items()}, settings, name)

    def pipeline(self, rows: int = 0) -> Pipeline:
        """The unfitted pipeline for ``rows`` training rows, with the default settings (the exact algorithms)."""
        return self.build(Grid({}, {key: option.default for key, option in self.options.items()}), rows)[0]

    def _pipeline(self, grid: Grid, data: TrainingData, cv: CVParams) -> tuple[Grid, Pipeline, str]:
        """The grid as it can apply to this data, and the unfitted pipeline for this many training rows."""
        if "clf__n_neighbors" in grid.values:  # the one hyperparameter bounded by the data
            smallest = smallest_training_fold(data.y[: data.n_images], data.groups[: data.n_images], folds=cv.folds,
                                              repeats=cv.repeats, inner_folds=cv.inner_folds, seed=cv.seed)
            grid = grid_that_fits(grid, smallest * data.copies)
        if "exact_max_rows" in grid.options and grid.options["exact_max_rows"] < data.n_classes:
            raise ParamsError(f"{grid.name}.exact_max_rows={grid.options['exact_max_rows']} is below the number of "
                              f"classes ({data.n_classes}): no training set is that small; use a larger value.")
        return (grid, *self.build(grid, len(data.X)))

    def _choose(self, pipeline: Pipeline, grid: Grid, X, y, groups, cv: CVParams) -> tuple[dict[str, Any], pd.DataFrame]:
        return self.search(pipeline, grid.values, X, y, groups, inner_folds=cv.inner_folds, seed=cv.seed)

    def fold_fit(self, grid: Grid, data: TrainingData, cv: CVParams) -> FitFold:
        """The whole procedure on a training fold (selection, then the refit): it needs nothing the final
        selection finds, so the folds can run beside it."""
        grid, pipeline, _ = self._pipeline(grid, data, cv)
        return self._fit_fold(pipeline, grid, cv)

    def _fit_fold(self, pipeline: Pipeline, grid: Grid, cv: CVParams) -> FitFold:
        def fit_fold(X, y, groups):
            return fit_chosen(pipeline, self._choose(pipeline, grid, X, y, groups, cv)[0], X, y)

        fit_fold.notes = grid.notes  # what the data was too small for (grid_that_fits), for the caller's record
        return fit_fold

    def select(self, grid: Grid, data: TrainingData, cv: CVParams) -> Selection:
        grid, pipeline, method = self._pipeline(grid, data, cv)
        for note in grid.notes:
            log.warning(note)
        chosen, record = self._choose(pipeline, grid, data.X, data.y, data.groups, cv)
        configured = clone(pipeline).set_params(**{f"clf__{key}": value for key, value in chosen.items()})
        # finalize (the SVM's calibration) refits the pipeline itself: no refit before it
        model = clone(configured).fit(data.X, data.y) if self.finalize is None else self.finalize(
            configured, data.X, data.y, data.groups, inner_folds=cv.inner_folds, seed=cv.seed)

        def fit_fixed(X, y, groups):
            return clone(configured).fit(X, y)

        return Selection(model=model, selected=selected_params(configured, grid.values),
                         fit_fold=self._fit_fold(pipeline, grid, cv), fit_fixed=fit_fixed, record=record,
                         method={"name": method, **({"notes": list(grid.notes)} if grid.notes else {})})


def calibrate_grouped(pipeline: Pipeline, X, y, groups, *, inner_folds: int, seed: int) -> CalibratedClassifierCV:
    """Platt-scale a classifier without probabilities on decision values from grouped folds.

    libsvm's own ``probability=True`` calibrates on plain k-fold, where copies of
    one picture sit on both sides; grouped folds keep the calibration honest.
    With ``ensemble=False`` the classifier itself is refitted on all the data.
    """
    splits = list(inner_splitter(inner_folds, seed).split(X, y, groups))
    return CalibratedClassifierCV(clone(pipeline), method="sigmoid", cv=splits, ensemble=False).fit(X, y)


def selected_params(model: Pipeline, param_grid: dict[str, list[Any]]) -> dict[str, Any]:
    """The grid values the fitted pipeline ended up with, under their params.yaml names."""
    params = model.get_params()
    return {k.removeprefix("clf__"): params[k] for k in param_grid}


def smallest_training_fold(y, groups, *, folds: int, repeats: int, inner_folds: int, seed: int) -> int:
    """Images in the smallest inner-CV training fold a classifier will be fitted on."""
    outer = RepeatedStratifiedGroupKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    inner = inner_splitter(inner_folds, seed)
    return min((len(train) for outer_train, _ in outer.split(y, y, groups)
                for train, _ in inner.split(outer_train, y[outer_train], groups[outer_train])), default=len(y))


def grid_that_fits(grid: Grid, smallest_fold: int) -> Grid:
    """The kNN grid without the k values larger than the smallest training fold (that many rows cannot give
    k neighbours); if none is left, k = the fold's rows. Kept in the grid's notes, which the caller says and records
    (``select`` once for the train stage; the learning curve per point), so each is said once."""
    ks = grid.values.get("clf__n_neighbors", [])
    too_big = [k for k in ks if k > smallest_fold]
    if not too_big:
        return grid
    kept = [k for k in ks if k <= smallest_fold] or [smallest_fold]
    note = (f"{grid.name}.n_neighbors={too_big} dropped: larger than the smallest training fold ({smallest_fold} "
            f"rows under the cv params); searching {kept}")
    return dataclasses.replace(grid, values={**grid.values, "clf__n_neighbors": kept}, notes=(*grid.notes, note))


# ----------------------------------------------------------------------------- the registry

def _build_logreg(grid: Grid, rows: int) -> tuple[Pipeline, str]:
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=5000))]), "logistic regression"


_GRIDS = {
    "logreg": GridClassifier(build=_build_logreg, keys={"C": (_positive, "positive numbers")}),
    "svm": GridClassifier(
        build=svm.build,
        keys={"C": (_positive, "positive numbers")},
        options={"exact_max_rows": Option(_positive_int, "an integer >= 1 (training rows)", svm.EXACT_MAX_ROWS),
                 "n_components": Option(_positive_int, "an integer >= 1", svm.NYSTROEM_COMPONENTS)},
        search=svm.search,
        finalize=calibrate_grouped,
    ),
    "knn": GridClassifier(
        build=knn.build,
        keys={"n_neighbors": (_positive_int, "integers >= 1"),
              "weights": (lambda v: v in ("uniform", "distance"), "'uniform' or 'distance'")},
        search=knn.search,
    ),
}

CLASSIFIERS: dict[str, ClassifierSpec] = {
    "head": ClassifierSpec(parse=lambda raw, name: parse_section(HeadParams, raw, name), select=_select_head,
                           uses_device=True),
    **{name: ClassifierSpec(parse=grid.parse, select=grid.select, fold_fit=grid.fold_fit)
       for name, grid in _GRIDS.items()},
}


def get_classifier(name: str) -> ClassifierSpec:
    if name not in CLASSIFIERS:
        raise ParamsError(f"Unknown classifier {name!r} in params.yaml's classifiers; "
                          f"choose one of {sorted(CLASSIFIERS)}.")
    return CLASSIFIERS[name]


def parse_classifier_params(name: str, raw: Any) -> Any:
    """Validate one classifier's params (``classifiers.<name>`` in params.yaml)."""
    return get_classifier(name).parse(raw, f"classifiers.{name}")


def check_classifiers(section: dict[str, Any]) -> None:
    """Validate every classifier's params, so a typo fails in the first stage, not the last."""
    if "head" not in section:
        raise ParamsError("classifiers.head is missing from params.yaml: the export and report stages use the "
                          "linear head, so it cannot be skipped (the other classifiers can).")
    for name, raw in section.items():
        parse_classifier_params(name, raw)
