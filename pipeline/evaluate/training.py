"""Train one classifier on cached embeddings and evaluate it: the work of one ``train@<name>`` stage.

The same steps for every classifier in the registry: stack the training images
with their augmented views, let the classifier select its hyperparameters and fit,
then run the evaluation protocol (grouped CV with the selection nested, the leaky
CV for contrast, valid and test with intervals).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from pipeline.common import features as features_io
from pipeline.common.errors import PipelineError
from pipeline.common.features import HELD_OUT, Features
from pipeline.common.groups import read_groups
from pipeline.common.params import (
    CLASSIFIERS_SECTION,
    DEFAULT_PARAMS,
    CVParams,
    EvaluationParams,
    classifiers_section,
    entry_of,
    load_section,
)
from pipeline.evaluate.classifiers import ClassifierSpec, Selection, TrainingData, get_classifier
from pipeline.evaluate.engine import Engine
from pipeline.evaluate.protocol import Evaluation, cv_scores, evaluate_classifier, with_views
from pipeline.evaluate.splits import check_cv_fits

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Trained:
    name: str
    selection: Selection
    evaluation: Evaluation
    fit_seconds: float  # hyperparameter selection and the final fit, not the evaluation

    def summary(self) -> str:
        m = self.evaluation.metrics
        low, high = m["test"]["accuracy_ci95"]["low"], m["test"]["accuracy_ci95"]["high"]
        return (f"{self.name}: grouped CV accuracy {m['cv']['accuracy_mean']:.3f} "
                f"(leaky {m['cv_leaky']['accuracy_mean']:.3f}), test {m['test']['accuracy']:.3f} "
                f"[{low:.3f}, {high:.3f}], selected {self.selection.selected}")


def check_classes(features: Features) -> None:
    """Train must hold two classes at least, and every class valid or test holds: no model predicts the others."""
    present = {split: {features.classes[i] for i in np.unique(features[split].y)} for split in features.splits}
    if len(present["train"]) < 2:
        raise PipelineError(f"train holds a single class {sorted(present['train'])}: a classifier needs two at least.")
    for split in HELD_OUT:
        unknown = sorted(present.get(split, set()) - present["train"])
        if unknown:
            raise PipelineError(f"{split} holds class(es) {unknown} that train lacks: no model can predict them; "
                                f"add train images of them or remove them from {split}.")


def training_data(features: Features, groups: np.ndarray, *, views: np.ndarray | None,
                  rows: np.ndarray | None = None, device: str = "cpu") -> TrainingData:
    """What a classifier's selection learns from: train's ``rows`` (all by default) and their views, and valid."""
    train, valid = features["train"], features["valid"]
    rows = np.arange(len(train.y)) if rows is None else rows
    X, y, g = with_views(train.X, train.y, groups, views, rows)
    return TrainingData(X=X, y=y, groups=g, X_valid=valid.X, y_valid=valid.y, n_classes=len(features.classes),
                        n_images=len(rows), copies=1 if views is None else len(views) + 1, device=device)


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the stages that run one classifier on one backbone's features (train, learning_curve)."""
    parser.add_argument("--backbone", required=True,
                        help="the name the results go under (a key of params.yaml's backbones section)")
    parser.add_argument("--classifier", required=True, help="a key of params.yaml's classifiers section")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--features", type=Path, required=True, help="this backbone's features folder")
    parser.add_argument("--groups", type=Path, default=Path("artifacts/data/groups.csv"))
    parser.add_argument("--manifest", type=Path, default=None,
                        help="refuse features not extracted from this manifest (dvc.yaml passes it)")


def pair_inputs(args: argparse.Namespace) -> tuple:
    """What those stages read: the classifier's params, ``cv``, ``views.use``, the CV engine (``cv.engine``, on the
    cluster ``extract.ray_address`` names, the one extraction uses), the device the classifier trains on, the
    features (memory-mapped: parallel fold fits read the file, none gets a copy of it) and train's picture groups.

    The device is ``extract.device`` resolved if the classifier trains with torch, else the CPU. Only then is
    torch imported: seconds at the start of the other stages and of each of their workers.
    """
    raw = entry_of(classifiers_section(args.params), args.classifier, section_name=CLASSIFIERS_SECTION,
                   path=args.params)
    spec = get_classifier(args.classifier)
    params = spec.parse(raw, f"{CLASSIFIERS_SECTION}.{args.classifier}")  # checked by its registry entry
    cv, extract = load_section("cv", args.params), load_section("extract", args.params)
    device = "cpu"
    if spec.uses_device:
        from pipeline.common.device import resolve_device

        device = str(resolve_device(extract.device))
    feats = features_io.load(args.features, manifest=args.manifest, mmap=True)
    return (params, cv, load_section("views", args.params).use,
            Engine(cv.engine, address=extract.ray_address, timeout_s=extract.ray_timeout_s), device, feats,
            read_groups(args.groups, feats["train"].paths))


def placement(spec: ClassifierSpec, device: str, cv: CVParams,
              engine: Engine | None) -> tuple[str, CVParams, Engine | None]:
    """Where the classifier trains (``device`` if it trains with torch, else the CPU) and how its CV folds run there:
    on an accelerator, one process owns it, so the folds take turns (``n_jobs`` 1, no Ray)."""
    device = device if spec.uses_device else "cpu"
    if device != "cpu":
        cv, engine = dataclasses.replace(cv, n_jobs=1), None
    return device, cv, engine


def train_classifier(name: str, params: Any, *, features: Features, groups: np.ndarray,
                     folds: list[tuple[np.ndarray, np.ndarray]], cv: CVParams, evaluation: EvaluationParams,
                     use_views: bool, engine: Engine | None = None, device: str = "cpu") -> Trained:
    """Select, fit and evaluate classifier ``name`` (its params already validated by the registry) on the shared
    grouped ``folds``."""
    spec = get_classifier(name)
    train = features["train"]
    check_classes(features)
    check_cv_fits(train.y, groups, folds=cv.folds, repeats=cv.repeats, inner_folds=cv.inner_folds, seed=cv.seed,
                  splits=folds)
    views = train.views if use_views else None
    device, cv, engine = placement(spec, device, cv, engine)
    data = training_data(features, groups, views=views, device=device)
    if spec.fold_fit is None:  # the folds train what the selection chose
        selection, fit_seconds = timed_select(spec, params, data, cv)
        grouped, _, out_of_fold = cv_scores(selection.fit_fold, train.X, train.y, groups, folds, views=views,
                                            n_jobs=cv.n_jobs, engine=engine)
    else:  # the final selection runs beside the grouped folds, as one more task
        fold_fit = spec.fold_fit(params, data, cv)
        select = functools.partial(select_beside, spec, params, features, groups, views, device, cv)
        grouped, (selection, fit_seconds), out_of_fold = cv_scores(
            fold_fit, train.X, train.y, groups, folds, views=views, n_jobs=cv.n_jobs, engine=engine, beside=select)
    log.info("%s: selected %s in %.1f s", name, selection.selected, fit_seconds)
    result = evaluate_classifier(model=selection.model, fit_fixed=selection.fit_fixed, grouped=grouped,
                                 features=features, groups=groups, cv=cv, evaluation=evaluation, views=views,
                                 engine=engine, out_of_fold=out_of_fold)
    return Trained(name=name, selection=selection, evaluation=result, fit_seconds=fit_seconds)


def select_beside(spec: ClassifierSpec, params: Any, features: Features, groups: np.ndarray, views: np.ndarray | None,
                  device: str, cv: CVParams) -> tuple[Selection, float]:
    """``timed_select`` as one task among the folds (or, with ``cv.n_jobs`` 1, before them): the training data
    built there (memory-mapped features reach a worker as files, not copies), on one BLAS and OpenMP thread.

    One thread wherever it runs, so the final model does not depend on ``cv.n_jobs``, the engine or the
    machine's cores (a floating-point sum depends on how many threads share it). Beside the folds a second
    thread only contends with them; alone, at 16,000 rows, two threads took the SVM's selection as long,
    logreg's longer and kNN's about 15% less (``benchmarks/selection_threads.py``).
    """
    with threadpool_limits(limits=1):
        return timed_select(spec, params, training_data(features, groups, views=views, device=device), cv)


def timed_select(spec: ClassifierSpec, params: Any, data: TrainingData, cv: CVParams) -> tuple[Selection, float]:
    """The classifier's selection and final fit, and the seconds they took (wherever they ran)."""
    start = time.perf_counter()
    selection = spec.select(params, data, cv)
    return selection, time.perf_counter() - start
