"""The evaluation protocol every classifier follows, the linear head included.

1. Grouped, repeated, stratified k-fold on train (no picture on both sides of a
   fold; the assignment is the ``folds`` stage's, shared by every stage); any
   hyperparameter selection happens inside each training fold (nested).
2. The same procedure with plain k-fold, labelled leaky, to show what leakage does.
3. The final model, fitted on all of train, scored on valid and test with intervals.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import RepeatedStratifiedKFold

from pipeline.common.features import HELD_OUT, Features
from pipeline.common.params import CVParams, EvaluationParams
from pipeline.evaluate.calibration import calibration_report, fit_temperature
from pipeline.evaluate.engine import Engine
from pipeline.evaluate.statistics import corrected_cv_interval, held_out_metrics, macro_f1

log = logging.getLogger(__name__)

# fit_fold(X, y, groups) -> a fitted estimator with predict/predict_proba
FitFold = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


@dataclasses.dataclass(frozen=True)
class OutOfFold:
    """What the grouped CV's fold models said of the train rows they did not train on."""

    proba: np.ndarray  # (rows, classes), the first repetition's; NaN where no fold tested a row or gave none
    predicted: np.ndarray  # (repetitions, rows) class indices; -1 where a repetition did not test the row


@dataclasses.dataclass
class Evaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # image, split, true, predicted, p_<class>...
    folds: pd.DataFrame  # one row per CV fold, both protocols
    # train images: image, true, p_<class>... (the grouped CV's first repetition), predicted_<r> (each repetition's)
    out_of_fold: pd.DataFrame


def with_views(X: np.ndarray, y: np.ndarray, groups: np.ndarray, views: np.ndarray | None,
               rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training data for ``rows``: the originals, then each of their augmented views.

    A view keeps its image's label and picture group, so it always falls on its
    picture's side of any grouped split.
    """
    if views is None or len(views) == 0:
        return X[rows], y[rows], groups[rows]
    copies = len(views) + 1
    return (np.concatenate([X[rows], *(np.asarray(v)[rows] for v in views)]),
            np.tile(y[rows], copies), np.tile(groups[rows], copies))


def _score_fold(fit_fold: FitFold, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                views: np.ndarray | None, train: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """A fold's scores, and its test rows' class probabilities (``proba``: one column per class of ``y``; NaN when
    the fold's model gives none). With probabilities, the prediction is their most probable class, from the same
    pass (kNN would otherwise search the fold's test rows twice)."""
    model = fit_fold(*with_views(X, y, groups, views, train))
    proba = np.full((len(test), int(y.max()) + 1), np.nan)  # NaN: a fold model without probabilities (the SVM's)
    if hasattr(model, "predict_proba"):
        classes = model.classes_
        own = model.predict_proba(X[test])
        pred = classes[own.argmax(axis=1)]
        proba[:] = 0.0
        proba[:, classes] = own
    else:
        pred = model.predict(X[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fold may lack a class; the score is still defined
        balanced = balanced_accuracy_score(y[test], pred)
    return {"n_test": len(test), "accuracy": accuracy_score(y[test], pred),
            "balanced_accuracy": balanced, "macro_f1": macro_f1(y[test], pred), "proba": proba, "pred": pred}


def cv_scores(fit_fold: FitFold, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
              splits: Iterable[tuple[np.ndarray, np.ndarray]], *, views: np.ndarray | None = None,
              n_jobs: int | None = None, engine: Engine | None = None,
              beside: Callable[[], Any] | None = None) -> tuple[pd.DataFrame, Any, OutOfFold]:
    """Score ``fit_fold`` on every (train, test) split: accuracy, balanced accuracy, macro-F1; ``beside()``'s result
    (when given: run as one more task among the folds); and the out-of-fold predictions of every row of ``X``.

    Training folds get their images' augmented views too; test folds score originals only.
    The folds run in parallel on ``n_jobs`` local processes (memory-mapped arrays are handed
    over by reference, larger ones dumped once), or as Ray tasks with ``engine``. ``beside()`` goes
    first, so the folds fill the other workers while it runs (the final selection, which needs no
    fold's result, takes no core of its own then).
    """
    splits = list(splits)
    if engine is not None and engine.kind == "ray":
        rows = engine.map(_score_fold, fit_fold, X, y, groups, views, splits, n_jobs=n_jobs, beside=beside)
    else:
        tasks = [delayed(_score_fold)(fit_fold, X, y, groups, views, train, test) for train, test in splits]
        rows = Parallel(n_jobs=n_jobs)(tasks if beside is None else [delayed(beside)(), *tasks])
    result, rows = (None, rows) if beside is None else (rows[0], rows[1:])  # beside()'s result came first
    proba = np.full((len(y), int(y.max()) + 1), np.nan)
    predicted = [np.full(len(y), -1)]
    for (_, test), row in zip(splits, rows):
        if (predicted[-1][test] >= 0).any():  # a row tested again: the next repetition begins
            predicted.append(np.full(len(y), -1))
        if len(predicted) == 1:
            proba[test] = row["proba"]
        predicted[-1][test] = row["pred"]
    scores = pd.DataFrame([{k: v for k, v in row.items() if k not in ("proba", "pred")} for row in rows])
    return scores.rename_axis("fold").reset_index(), result, OutOfFold(proba, np.stack(predicted))


def summarise_cv(scores: pd.DataFrame, *, n_samples: int) -> dict[str, Any]:
    test_fraction = float(scores["n_test"].mean()) / n_samples
    return {
        "accuracy_mean": float(scores["accuracy"].mean()),
        "accuracy_std": float(scores["accuracy"].std(ddof=1)),
        "accuracy_ci95": dict(zip(("low", "high"),
                                  corrected_cv_interval(scores["accuracy"], test_fraction=test_fraction))),
        "balanced_accuracy_mean": float(scores["balanced_accuracy"].mean()),
        "macro_f1_mean": float(scores["macro_f1"].mean()),
        "n_folds": len(scores),
    }


def probability_columns(proba: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """``p_<class>`` columns, rounded, in the classifier's dtype: the one way every predictions file writes
    them, so predict's output on a folder equals the train stage's rows byte for byte."""
    return pd.DataFrame(proba, columns=[f"p_{c}" for c in classes]).round(6)


def evaluate_classifier(*, model: Any, fit_fixed: FitFold, grouped: pd.DataFrame, out_of_fold: OutOfFold,
                        features: Features, groups: np.ndarray, cv: CVParams, evaluation: EvaluationParams,
                        views: np.ndarray | None = None, engine: Engine | None = None) -> Evaluation:
    """Run the whole protocol for one classifier; ``model`` is the final fit on train.

    ``grouped`` holds the scores of the whole fitting procedure, hyperparameter selection included, on each
    training fold of the grouped (train, test) splits every stage shares (the ``folds`` stage's file), as
    ``cv_scores`` gave them with ``out_of_fold``: what those folds said of each train image they did not train
    on, kept for calibration, label checks and compare's bootstrap. ``fit_fixed`` fits the hyperparameters
    already chosen and serves only the leaky figure, which is there to show inflation. ``views`` (n_views,
    n_train, dim), when given, join every training fold.
    """
    train = features["train"]
    X, y = train.X, train.y
    leaky_splits = RepeatedStratifiedKFold(n_splits=cv.folds, n_repeats=cv.repeats, random_state=cv.seed).split(X, y)
    # every image its own group: inner selection (if any) is as leaky as the outer split
    leaky, _, _ = cv_scores(fit_fixed, X, y, np.arange(len(y)), leaky_splits, views=views, n_jobs=cv.n_jobs,
                            engine=engine)
    metrics: dict[str, Any] = {
        "cv": {**summarise_cv(grouped, n_samples=len(train.y)), "n_groups": len(np.unique(groups)),
               "train_views": 0 if views is None else len(views)},
        "cv_leaky": summarise_cv(leaky, n_samples=len(train.y)),
    }
    frames, held_out = [], {}
    for split in HELD_OUT:
        part = features[split]
        proba, predicted = model.predict_proba(part.X), model.predict(part.X)
        metrics[split] = held_out_metrics(part.y, proba, predicted, n_bootstrap=evaluation.n_bootstrap,
                                          ece_bins=evaluation.ece_bins, seed=evaluation.seed)
        rows = pd.DataFrame({"image": part.paths, "split": split, "true": [features.classes[i] for i in part.y],
                             "predicted": [features.classes[i] for i in predicted]})
        frames.append(pd.concat([rows, probability_columns(proba, features.classes)], axis=1))
        held_out[split] = (part.y, proba)
    if not np.isnan(out_of_fold.proba).any():
        metrics["calibration"] = calibration_report(fit_temperature(out_of_fold.proba, y), held_out,
                                                    ece_bins=evaluation.ece_bins)
    log.info("cv grouped %.3f +- %.3f, leaky %.3f; test %.3f", metrics["cv"]["accuracy_mean"],
             metrics["cv"]["accuracy_std"], metrics["cv_leaky"]["accuracy_mean"], metrics["test"]["accuracy"])
    named = np.append(np.asarray(features.classes, dtype=object), "")  # -1, a row a repetition did not test: ""
    oof = pd.concat([pd.DataFrame({"image": train.paths, "true": [features.classes[i] for i in y]}),
                     probability_columns(out_of_fold.proba, features.classes),
                     pd.DataFrame({f"predicted_{r + 1}": named[p] for r, p in enumerate(out_of_fold.predicted)})],
                    axis=1)
    return Evaluation(metrics=metrics, predictions=pd.concat(frames, ignore_index=True),
                      folds=pd.concat([grouped.assign(protocol="grouped"), leaky.assign(protocol="leaky")],
                                      ignore_index=True), out_of_fold=oof)
