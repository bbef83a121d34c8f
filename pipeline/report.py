"""Stage ``report``: one self-contained HTML page to look at the results.

Leaderboard, test confusion matrices, per-class precision and recall, a 2-D map
of the embeddings, the misclassified test images of the best classifier, and the
linear head's training curves. Images are embedded, so the file opens anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.common.cli import run, stage_parser
from pipeline.common.io import read_json, write_text
from pipeline.embed import features as features_io
from pipeline.reporting.page import build_report


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--comparison", type=Path, required=True, help="the leaderboard CSV of compare")
    parser.add_argument("--predictions-dir", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--history", type=Path, required=True, help="the linear head's training curve")
    parser.add_argument("--source", type=Path, required=True, help="where prepare found the images (gallery)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    leaderboard = pd.read_csv(args.comparison)
    predictions = {name: pd.read_csv(args.predictions_dir / f"{name}.csv", dtype=str, keep_default_na=False)
                   for name in leaderboard["classifier"]}
    for frame in predictions.values():
        for column in [c for c in frame.columns if c.startswith("p_")]:
            frame[column] = frame[column].astype(float)
    source = read_json(args.source, what="Source file", fix="run the prepare stage (dvc repro prepare).")
    text = build_report(leaderboard=leaderboard, predictions=predictions, feats=features_io.load(args.features),
                        history=pd.read_csv(args.history), image_root=Path(source["root"]))
    write_text(args.out, text)
    print(f"report: {args.out} ({len(text) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
