"""Stage ``train@<backbone>-<classifier>``: fit one classifier on one backbone's embeddings, evaluate it honestly.

Hyperparameters are chosen as the classifier's registry entry says (grouped CV
for the scikit-learn grids, early stopping on valid for the linear head) and the
choice is nested inside every evaluation fold, on the grouped folds that the
``folds`` stage wrote for every pair. Writes the model, its metrics,
predictions on valid and test, the test rows for the confusion plot, the per-fold
CV scores and the record of how the hyperparameters were chosen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.common import features as features_io
from pipeline.common.cli import run, stage_parser
from pipeline.common.groups import read_groups
from pipeline.common.params import CLASSIFIERS_SECTION, DEFAULT_PARAMS, classifiers_section, entry_of, load_section
from pipeline.evaluate.classifiers import get_classifier, parse_classifier_params
from pipeline.evaluate.engine import Engine
from pipeline.evaluate.results import ResultPaths, write_results
from pipeline.evaluate.splits import read_folds
from pipeline.evaluate.training import train_classifier


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
    params = parse_classifier_params(args.classifier, entry_of(classifiers_section(args.params), args.classifier,
                                                               section_name=CLASSIFIERS_SECTION, path=args.params))
    cv, extract = load_section("cv", args.params), load_section("extract", args.params)
    device = "cpu"
    if get_classifier(args.classifier).uses_device:
        from pipeline.common.device import resolve_device

        device = str(resolve_device(extract.device))
    feats = features_io.load(args.features, manifest=args.manifest, mmap=True)
    return (params, cv, load_section("views", args.params).use,
            Engine(cv.engine, address=extract.ray_address, timeout_s=extract.ray_timeout_s), device, feats,
            read_groups(args.groups, feats["train"].paths))


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    add_pair_arguments(parser)
    parser.add_argument("--cv-folds", type=Path, default=Path("artifacts/data/folds.csv"),
                        help="the grouped fold assignment shared by every train stage (the folds stage's)")
    for name, help_ in [("model", "the fitted model (joblib)"), ("metrics", "metrics JSON"),
                        ("predictions", "per-image predictions on valid and test (CSV)"),
                        ("confusion", "test rows for the confusion plot (CSV)"), ("folds", "per-fold CV scores (CSV)"),
                        ("selection", "how the hyperparameters were chosen: grid scores or training curve (CSV)")]:
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_)
    args = parser.parse_args(argv)

    params, cv, use_views, engine, device, feats, groups = pair_inputs(args)
    evaluation = load_section("evaluation", args.params)
    folds = read_folds(args.cv_folds, feats["train"].paths)

    trained = train_classifier(args.classifier, params, features=feats, groups=groups, folds=folds, cv=cv,
                               evaluation=evaluation, use_views=use_views, engine=engine, device=device)
    write_results(trained, backbone=args.backbone, classes=feats.classes, features_meta=feats.meta,
                  paths=ResultPaths(model=args.model, metrics=args.metrics, predictions=args.predictions,
                                    confusion=args.confusion, folds=args.folds, selection=args.selection))
    print(f"{args.backbone}/{trained.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
