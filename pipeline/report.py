"""Stage ``report``: one self-contained HTML page to look at the results.

Leaderboard, test confusion matrices, per-class precision and recall, a 2-D map
of the embeddings, the misclassified test images of the best classifier, and the
linear head's training curves. Images are embedded, so the file opens anywhere.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import read_csv, write_text
from pipeline.data.dataset import read_source
from pipeline.embed import features as features_io
from pipeline.reporting.page import build_report, check_history, check_leaderboard, check_predictions


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
    parser.add_argument("--predictions-dir", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="the linear head's training curve")
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images (gallery)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    rerun = "re-run the stages before report (dvc repro)."
    feats = features_io.load(args.features)
    leaderboard = read_csv(args.comparison, what="Leaderboard", fix=rerun)
    text_columns = dict.fromkeys(["image", "split", "true", "predicted"], str)  # a class may be called "NA"
    check_leaderboard(leaderboard, args.comparison, fix=rerun)
    predictions = {name: read_csv(args.predictions_dir / f"{name}.csv", what="Predictions", fix=rerun,
                                  dtype=text_columns, keep_default_na=False) for name in leaderboard["classifier"]}
    for name, frame in predictions.items():
        check_predictions(frame, args.predictions_dir / f"{name}.csv", feats.classes, fix=rerun)
    history = read_csv(args.history, what="Training curve", fix=rerun)
    check_history(history, args.history, fix=rerun)
    source = read_source(args.source)
    text = build_report(leaderboard=leaderboard, predictions=predictions, feats=feats, history=history,
                        image_root=Path(source["root"]), source=source, code_version=code_version())
    write_text(args.out, text)
    print(f"report: {args.out} ({len(text) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
