"""Stage ``report``: one self-contained HTML page to look at the results.

Leaderboard of every backbone/classifier pair, accuracy against cost with the
Pareto front and compare's decision, the backbone x classifier grid, test confusion
matrices of the leading pairs, per-class precision and recall, the misclassified test
images of the best pair, the train pictures whose label looks wrong (the label_issues
stage's), the learning curves by original pictures with their
readings, and per backbone a 2-D map of a bounded sample of its embeddings (read
from the memory-mapped arrays) and its linear head's training curve. Images are
embedded, so the file opens anywhere.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

from pipeline.common import features as features_io
from pipeline.common.cli import run, stage_parser
from pipeline.common.io import read_csv, read_json, write_text
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.data.carving import read_splits, split_origins
from pipeline.data.dataset import read_source
from pipeline.reporting.page import (
    build_report,
    check_history,
    check_leaderboard,
    check_predictions,
    label_issues_section,
)


def code_version() -> str:
    """The commit the report was made from (``git describe``), or the package version outside git."""
    try:
        described = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                   timeout=10, cwd=Path(__file__).resolve().parent)
        if described.returncode == 0 and described.stdout.strip():
            return f"git {described.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"package {importlib.metadata.version('frozen-embeddings-pipeline')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown (no git, package not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--comparison", type=Path, required=True, help="the leaderboard CSV of compare")
    parser.add_argument("--comparison-json", type=Path, default=None,
                        help="compare's JSON, for its \"decision\" (omitted or absent there: no sentence)")
    parser.add_argument("--predictions-dir", type=Path, required=True)
    parser.add_argument("--features-dir", type=Path, required=True, help="features/<backbone>/")
    parser.add_argument("--history-dir", type=Path, required=True,
                        help="the linear head's training curve of each backbone (<backbone>.csv)")
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images (gallery)")
    parser.add_argument("--learning-curves", type=Path, default=None,
                        help="folder of the learning_curve stages' curves, <backbone>/<classifier>.csv (omitted: no section)")
    parser.add_argument("--learning-summaries", type=Path, default=None,
                        help="folder of the learning_curve stages' readings, <backbone>/<classifier>.json")
    parser.add_argument("--splits", type=Path, default=None,
                        help="the audit's splits.csv: how each split was made (omitted: not said)")
    parser.add_argument("--label-issues", type=Path, default=None,
                        help="the label_issues stage's CSV (with --label-summary; omitted: no section)")
    parser.add_argument("--label-summary", type=Path, default=None, help="the label_issues stage's JSON")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    rerun = "re-run the stages before report (dvc repro)."
    leaderboard = read_csv(args.comparison, what="Leaderboard", fix=rerun, dtype={"backbone": str, "classifier": str},
                           keep_default_na=False, na_values=[""])
    check_leaderboard(leaderboard, args.comparison, fix=rerun)
    text_columns = dict.fromkeys(["image", "split", "true", "predicted"], str)  # a class may be called "NA"
    backbones = list(dict.fromkeys(leaderboard["backbone"]))
    feats = {name: features_io.load(args.features_dir / name, mmap=True) for name in backbones}
    predictions = {}
    for backbone, classifier in zip(leaderboard["backbone"], leaderboard["classifier"]):
        pair = f"{backbone}/{classifier}"
        path = args.predictions_dir / f"{pair}.csv"
        predictions[pair] = read_csv(path, what="Predictions", fix=rerun, dtype=text_columns, keep_default_na=False)
        check_predictions(predictions[pair], path, feats[backbone].classes, fix=rerun)
    histories = {}
    for name in backbones if "head" in set(leaderboard["classifier"]) else []:
        histories[name] = read_csv(args.history_dir / f"{name}.csv", what="Training curve", fix=rerun)
        check_history(histories[name], args.history_dir / f"{name}.csv", fix=rerun)
    curves, readings = {}, {}
    if args.learning_curves is not None:
        fix = "re-run the learning_curve stages (dvc repro)."
        for pair in predictions:
            curves[pair] = read_csv(args.learning_curves / f"{pair}.csv", what="Learning curve", fix=fix)
            if args.learning_summaries is not None:
                readings[pair] = read_json(args.learning_summaries / f"{pair}.json", what="Learning curve summary",
                                           fix=fix).get("sentence", "")
    decision = read_json(args.comparison_json, what="Comparison", fix=rerun) if args.comparison_json else {}
    source = read_source(args.source)
    splits = split_origins(read_splits(args.splits)) if args.splits else None
    suspects = None
    if args.label_issues is not None and args.label_summary is not None:
        fix = "re-run the label_issues stage (dvc repro label_issues)."
        suspects = label_issues_section(
            read_csv(args.label_issues, what="Label issues", fix=fix, dtype=str, keep_default_na=False,
                     converters={"score": float, "images": int}),
            read_json(args.label_summary, what="Label issues summary", fix=fix), Path(source["root"]),
            show=load_section("label_issues", args.params).show)
    text = build_report(leaderboard=leaderboard, predictions=predictions, feats=feats, histories=histories,
                        image_root=Path(source["root"]), source=source, code_version=code_version(),
                        learning_curves=curves, learning_readings=readings, splits=splits, label_issues=suspects,
                        decision=decision.get("decision") if isinstance(decision, dict) else None)
    write_text(args.out, text)
    print(f"report: {args.out} ({len(text) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
