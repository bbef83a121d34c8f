"""Stage ``classical``: one scikit-learn classifier (logreg, svm or knn) on cached embeddings.

Hyperparameters are chosen by cross-validation grouped by original picture, nested
inside each evaluation fold; the chosen pipeline is refitted on all of train and
saved with joblib together with the features' metadata.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import joblib
from sklearn.base import clone

from pipeline import features as features_io
from pipeline.atomic import atomic_path
from pipeline.classifiers import (
    CLASSIFIERS,
    build_classifier,
    check_grid_fits,
    select_and_fit,
    selected_params,
    smallest_training_fold,
)
from pipeline.errors import run_cli
from pipeline.params import DEFAULT_PARAMS, ParamsError, load_section, read_params
from pipeline.protocol import evaluate_classifier, load_groups, with_views
from pipeline.results import add_output_args, default_outputs, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, choices=sorted(CLASSIFIERS))
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--features", type=Path, default=Path("features"))
    parser.add_argument("--groups", type=Path, default=Path("artifacts/data/groups.csv"))
    parser.add_argument("--manifest", type=Path, default=None,
                        help="refuse features not extracted from this manifest (dvc.yaml passes it)")
    parser.add_argument("--model-out", type=Path, default=None, help="default: artifacts/models/<model>.joblib")
    add_output_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    classical = read_params(args.params).get("classical", {})
    if args.model not in classical:
        raise ParamsError(f"params.yaml has no classical.{args.model} grid.")
    pipeline, grid = build_classifier(args.model, classical[args.model])
    cv = load_section("cv", args.params)
    evaluation_params = load_section("evaluation", args.params)
    feats = features_io.load(args.features, manifest=args.manifest)
    train = feats["train"]
    groups = load_groups(args.groups, train.paths)

    def fit_fold(X, y, g):
        return select_and_fit(pipeline, grid, X, y, g, inner_folds=cv.inner_folds, seed=cv.seed)

    views = train.views if load_section("views", args.params).use else None
    check_grid_fits(args.model, grid, smallest_training_fold(
        train.y, groups, folds=cv.folds, repeats=cv.repeats, inner_folds=cv.inner_folds, seed=cv.seed,
        copies=1 if views is None else len(views) + 1))
    X, y, g = with_views(train.X, train.y, groups, views)
    start = time.perf_counter()
    chosen = fit_fold(X, y, g)
    finalize = CLASSIFIERS[args.model].finalize
    model = chosen if finalize is None else finalize(chosen, X, y, g, inner_folds=cv.inner_folds, seed=cv.seed)
    fit_seconds = time.perf_counter() - start
    selected = selected_params(chosen, grid)

    def fit_fixed(X, y, g):
        return clone(chosen).fit(X, y)

    logging.getLogger(__name__).info("%s: selected %s in %.1f s", args.model, selected, fit_seconds)
    evaluation = evaluate_classifier(model=model, fit_fold=fit_fold, fit_fixed=fit_fixed, features=feats,
                                     groups=groups, cv=cv, evaluation=evaluation_params, views=views)

    model_out = args.model_out or Path(f"artifacts/models/{args.model}.joblib")
    with atomic_path(model_out) as tmp:
        joblib.dump({"model": model, "classes": feats.classes, "features_meta": feats.meta,
                     "selected": selected}, tmp)
    write_results(evaluation, name=args.model, fit_seconds=fit_seconds, pretrained=feats.meta.get("pretrained"),
                  selected=selected, **default_outputs(args, args.model))
    m = evaluation.metrics
    print(f"{args.model}: grouped CV accuracy {m['cv']['accuracy_mean']:.3f} (leaky {m['cv_leaky']['accuracy_mean']:.3f}),"
          f" test {m['test']['accuracy']:.3f} [{m['test']['accuracy_ci95']['low']:.3f}, "
          f"{m['test']['accuracy_ci95']['high']:.3f}], selected {selected}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
