"""Stage ``compare``: the leaderboard of every trained classifier, with paired tests on test.

Ranks by grouped-CV accuracy; pairs each classifier with the linear head (and the
best with the runner-up) by an exact McNemar test on the same test images. Writes
the leaderboard as markdown (people), CSV (tables) and JSON (McNemar p-values, a
DVC metrics file), and copies the best model to its own file, the project's
``best-classifier`` artifact.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.common.checks import ReuseError, finite_number, known_labels, require_columns
from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.io import output_set, read_csv, read_json, writing
from pipeline.common.params import DEFAULT_PARAMS, classifiers_section
from pipeline.evaluate.leaderboard import leaderboard, render_markdown

REQUIRED_METRICS = ("cv.accuracy_mean", "cv.accuracy_std", "cv.accuracy_ci95.low", "cv.accuracy_ci95.high",
                    "cv_leaky.accuracy_mean", "test.n", "test.accuracy", "test.accuracy_ci95.low",
                    "test.accuracy_ci95.high", "test.balanced_accuracy", "test.macro_f1", "test.log_loss", "test.ece")
PREDICTION_COLUMNS = ("image", "split", "true", "predicted")


def _has(mapping: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(mapping, dict) or key not in mapping:
            return False
        mapping = mapping[key]
    return True


def check_predictions(frame, path: Path, *, fix: str) -> None:
    """The columns the leaderboard reads, and labels among the classes of its p_<class> columns."""
    require_columns(frame, path, PREDICTION_COLUMNS, fix=fix)
    classes = [c.removeprefix("p_") for c in frame.columns if c.startswith("p_")]
    if not classes:
        raise ReuseError(f"{path} has no p_<class> probability columns; {fix}")
    known_labels(frame, path, ["true", "predicted"], classes, fix=fix)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the classifiers to rank")
    parser.add_argument("--metrics-dir", type=Path, required=True)
    parser.add_argument("--predictions-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--markdown", type=Path, required=True)
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--best-model", type=Path, required=True, help="copy of the best classifier's model")
    args = parser.parse_args(argv)

    metrics, predictions = {}, {}
    for name in classifiers_section(args.params):
        fix = f"run the train stage for it (dvc repro train@{name})."
        metrics[name] = read_json(args.metrics_dir / f"{name}.json", what="Metrics file", fix=fix)
        predictions[name] = read_csv(args.predictions_dir / f"{name}.csv", what="Predictions file", fix=fix,
                                     dtype=str, keep_default_na=False)
    for name, m in metrics.items():
        fix = f"it was not written by the train stage: re-run it (dvc repro train@{name})."
        path = args.metrics_dir / f"{name}.json"
        if not isinstance(m, dict):
            raise PipelineError(f"Metrics file {path} lacks {list(REQUIRED_METRICS)}; {fix}")
        missing = [key for key in REQUIRED_METRICS if not _has(m, key)]
        if missing:
            raise PipelineError(f"Metrics file {path} lacks {missing}; {fix}")
        for key in REQUIRED_METRICS:
            finite_number(m, key, path, fix=fix)
        check_predictions(predictions[name], args.predictions_dir / f"{name}.csv", fix=fix)
    table, paired = leaderboard(metrics, predictions)
    best = str(table["classifier"].iloc[0])
    if not (args.models_dir / f"{best}.joblib").is_file():
        raise PipelineError(f"Model file {args.models_dir / f'{best}.joblib'} not found; re-run its train stage "
                            f"(dvc repro train@{best}).")
    text = render_markdown(table)
    with output_set() as out:  # the four change together or not at all
        with writing(args.best_model):
            shutil.copyfile(args.models_dir / f"{best}.joblib", out.path(args.best_model))
        out.write_csv(args.csv, table)
        out.write_json(args.json, paired)
        out.write_text(args.markdown, text)
    print(f"{text}\nbest: {best} -> {args.best_model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
