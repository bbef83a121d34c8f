"""Stage ``compare``: the leaderboard of every backbone x classifier pair, with paired tests.

Ranks by grouped-CV accuracy; tests differences as pairs on shared material: the
Nadeau–Bengio corrected t-test on the per-fold scores of the shared folds (Holm
across the comparisons shown) and an exact McNemar test on the same test images.
Then the decision (``pipeline.evaluate.decision``): each pair's probability of being
best, rank interval and practical equivalence from a bootstrap of train pictures over
every pair's out-of-fold predictions, the winner's figure corrected for its selection,
and each pair's cost (the cost stages') with the cheapest pair practically as good as
the best. Writes the leaderboard as markdown (people), CSV (tables) and JSON (tests
and decision), a few figures per pair for ``dvc metrics show`` (``--summary-dir``),
and copies the best pair's model folder (``model.skops`` and its record) to its own
folder, the project's ``best-classifier`` artifact, once its bytes are the recorded
ones and its backbone is the one whose features are ranked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.common.checks import ReuseError, finite_number, known_labels, require_columns
from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.features import META, read_meta
from pipeline.common.groups import read_groups
from pipeline.common.io import output_set, read_csv, read_json, write_json, writing
from pipeline.common.params import DEFAULT_PARAMS, backbones_section, classifiers_section, load_section
from pipeline.data.carving import read_splits, split_origins
from pipeline.evaluate.decision import cost_of, decide, out_of_fold_correct
from pipeline.evaluate.leaderboard import add_decision, leaderboard, pair_name, render_markdown, summary
from pipeline.evaluate.results import MODEL, RECORD, ModelError, verified_model
from pipeline.evaluate.splits import read_folds

REQUIRED_METRICS = ("cv.accuracy_mean", "cv.accuracy_std", "cv.accuracy_ci95.low", "cv.accuracy_ci95.high",
                    "cv_leaky.accuracy_mean", "test.n", "test.accuracy", "test.accuracy_ci95.low",
                    "test.accuracy_ci95.high", "test.balanced_accuracy", "test.macro_f1", "test.log_loss", "test.ece")


def _has(mapping: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(mapping, dict) or key not in mapping:
            return False
        mapping = mapping[key]
    return True


def check_predictions(frame, path: Path, *, fix: str) -> None:
    """The columns the leaderboard reads, and labels among the classes of its p_<class> columns."""
    require_columns(frame, path, ("image", "split", "true", "predicted"), fix=fix)
    classes = [c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
    if not classes:
        raise ReuseError(f"{path} has no p_<class> probability columns; {fix}")
    known_labels(frame, path, ["true", "predicted"], classes, fix=fix)


def check_out_of_fold(frame, path: Path, first, *, fix: str) -> None:
    """Image, truth and a prediction per CV repetition, over the same train images as the first pair's file."""
    require_columns(frame, path, ("image", "true", "predicted_1"), fix=fix)
    if set(frame["image"]) != set(first["image"]) or len(frame) != len(first):
        raise ReuseError(f"{path} holds other train images than the other pairs' out-of-fold files; {fix}")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the backbones and classifiers to rank")
    parser.add_argument("--features-dir", type=Path, required=True, help="features/<backbone>/meta.json: dim, speed")
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--predictions-dir", type=Path, required=True)
    parser.add_argument("--cv-dir", type=Path, required=True, help="per-fold CV scores of each pair")
    parser.add_argument("--cv-folds", type=Path, default=Path("artifacts/data/folds.csv"),
                        help="the shared grouped fold assignment")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--splits", type=Path, default=None,
                        help="the audit's splits.csv: how valid and test were made (omitted: not said)")
    parser.add_argument("--out-of-fold-dir", type=Path, required=True,
                        help="each pair's out-of-fold predictions on train, <backbone>/<classifier>.csv")
    parser.add_argument("--groups", type=Path, required=True, help="the audit's groups.csv: pictures to resample")
    parser.add_argument("--cost-dir", type=Path, required=True, help="the cost stages' <backbone>.json")
    parser.add_argument("--summary-dir", type=Path, required=True,
                        help="a few figures per pair, <backbone>/<classifier>.json (the DVC metrics)")
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--best-model", type=Path, required=True, help="copy of the best pair's model folder")
    args = parser.parse_args(argv)

    backbones = {name: read_meta(args.features_dir / name / META) for name in backbones_section(args.params)}
    evaluation = load_section("evaluation", args.params)
    metrics, predictions, folds, out_of_fold, costs = {}, {}, {}, {}, {}
    for backbone in backbones:
        cost = read_json(args.cost_dir / f"{backbone}.json", what="Cost file",
                         fix=f"run the cost stage for it (dvc repro cost@{backbone}).")
        for classifier in classifiers_section(args.params):
            pair = pair_name(backbone, classifier)
            fix = f"run the train stage for it (dvc repro train@{backbone}-{classifier})."
            metrics[pair] = read_json(args.metrics_dir / f"{pair}.json", what="Metrics file", fix=fix)
            predictions[pair] = read_csv(args.predictions_dir / f"{pair}.csv", what="Predictions file", fix=fix,
                                         dtype=str, keep_default_na=False)
            folds[pair] = read_csv(args.cv_dir / f"{pair}.csv", what="CV folds file", fix=fix)
            out_of_fold[pair] = read_csv(args.out_of_fold_dir / f"{pair}.csv", what="Out-of-fold file", fix=fix,
                                         dtype=str, keep_default_na=False)
            check_out_of_fold(out_of_fold[pair], args.out_of_fold_dir / f"{pair}.csv",
                              next(iter(out_of_fold.values())), fix=fix)
            if not isinstance(cost, dict) or not isinstance((cost.get("classifiers") or {}).get(classifier), dict):
                raise ReuseError(f"Cost file {args.cost_dir / f'{backbone}.json'} has no figures for {classifier}; "
                                 f"run the cost stage for it (dvc repro cost@{backbone}).")
            costs[pair] = cost_of(cost, classifier)
    for pair, m in metrics.items():
        fix = f"it was not written by the train stage: re-run it (dvc repro train@{pair.replace('/', '-')})."
        path = args.metrics_dir / f"{pair}.json"
        missing = [key for key in REQUIRED_METRICS if not _has(m, key)]  # all of them when m is no JSON object
        if missing:
            raise PipelineError(f"Metrics file {path} lacks {missing}; {fix}")
        for key in REQUIRED_METRICS:
            finite_number(m, key, path, fix=fix)
        check_predictions(predictions[pair], args.predictions_dir / f"{pair}.csv", fix=fix)
    table, tests = leaderboard(metrics, predictions, folds, read_folds(args.cv_folds, None), backbones)
    images, correct = out_of_fold_correct(out_of_fold)
    result = decide(correct, read_groups(args.groups, images), margin=evaluation.equivalence,
                    n_resamples=evaluation.n_bootstrap, seed=evaluation.seed)
    table = add_decision(table, tests, result, list(out_of_fold), costs, margin=evaluation.equivalence)
    best = pair_name(table["backbone"].iloc[0], table["classifier"].iloc[0])
    _, record = verified_model(args.models_dir / best)
    if record.get("backbone_fingerprint") != backbones[table["backbone"].iloc[0]].get("fingerprint"):
        raise ModelError(f"Model {args.models_dir / best} was trained on features of another backbone than "
                         f"{args.features_dir / table['backbone'].iloc[0]} (fingerprints differ); re-run its train "
                         f"stage (dvc repro train@{best.replace('/', '-')}).")
    text = render_markdown(table, tests, splits=split_origins(read_splits(args.splits)) if args.splits else None)
    with output_set() as out:  # the four change together or not at all
        folder = out.path(args.best_model, is_dir=True)
        with writing(args.best_model):
            for name in (MODEL, RECORD):  # file by file: a full disk is one OSError, not copytree's list of them
                shutil.copyfile(args.models_dir / best / name, folder / name)
        out.write_csv(args.csv, table)
        out.write_json(args.json, tests)
        out.write_text(args.markdown, text)
        summaries = out.path(args.summary_dir, is_dir=True)
        with writing(args.summary_dir):
            for row in table.itertuples():
                (summaries / row.backbone).mkdir(exist_ok=True)
                write_json(summaries / row.backbone / f"{row.classifier}.json", summary(row))
    print(f"{text}\nbest: {best} -> {args.best_model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
