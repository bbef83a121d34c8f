"""Stage ``train@<backbone>-<classifier>``: fit one classifier on one backbone's embeddings, evaluate it honestly.

Hyperparameters are chosen as the classifier's registry entry says (grouped CV
for the scikit-learn grids, early stopping on valid for the linear head) and the
choice is nested inside every evaluation fold, on the grouped folds that the
``folds`` stage wrote for every pair. Writes the model, its metrics,
predictions on valid and test, the test rows for the confusion plot, the per-fold
CV scores and the record of how the hyperparameters were chosen.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.params import load_section
from pipeline.evaluate.results import ResultPaths, write_results
from pipeline.evaluate.splits import read_folds
from pipeline.evaluate.training import add_pair_arguments, pair_inputs, train_classifier


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    add_pair_arguments(parser)
    parser.add_argument("--cv-folds", type=Path, default=Path("artifacts/data/folds.csv"),
                        help="the grouped fold assignment shared by every train stage (the folds stage's)")
    for name, help_ in [("model", "the model folder: the fitted model (model.skops) and its record"),
                        ("metrics", "metrics JSON"),
                        ("predictions", "per-image predictions on valid and test (CSV)"),
                        ("confusion", "test rows for the confusion plot (CSV)"), ("folds", "per-fold CV scores (CSV)"),
                        ("selection", "how the hyperparameters were chosen: grid scores or training curve (CSV)")]:
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_)
    parser.add_argument("--out-of-fold", type=Path, default=None,
                        help="train images' out-of-fold probabilities from the grouped CV (CSV; label_issues reads it)")
    args = parser.parse_args(argv)

    params, cv, use_views, engine, device, feats, groups = pair_inputs(args)
    evaluation = load_section("evaluation", args.params)
    folds = read_folds(args.cv_folds, feats["train"].paths)

    trained = train_classifier(args.classifier, params, features=feats, groups=groups, folds=folds, cv=cv,
                               evaluation=evaluation, use_views=use_views, engine=engine, device=device)
    write_results(trained, backbone=args.backbone, classes=feats.classes, features_meta=feats.meta,
                  paths=ResultPaths(model=args.model, metrics=args.metrics, predictions=args.predictions,
                                    confusion=args.confusion, folds=args.folds, selection=args.selection,
                                    out_of_fold=args.out_of_fold))
    print(f"{args.backbone}/{trained.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
