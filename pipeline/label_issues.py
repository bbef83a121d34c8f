"""Stage ``label_issues``: train pictures whose label looks wrong, ranked from the best pair's out-of-fold probabilities.

Reads the leaderboard (its first row is the best pair), that pair's out-of-fold probabilities
(written by its train stage) and the picture groups; writes ``label_issues.csv`` (one row per
train picture, most suspect first: picture, images, given and suggested label, score, whether
cleanlab flags it, its paths) and a summary JSON (counts per class, or why no suspect is named).
Nothing is refitted.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.common.cli import run, stage_parser
from pipeline.common.errors import PipelineError
from pipeline.common.groups import read_groups
from pipeline.common.io import output_set, read_csv
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.evaluate.label_issues import find_suspects


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--comparison", type=Path, required=True, help="the leaderboard CSV (compare's)")
    parser.add_argument("--out-of-fold-dir", type=Path, required=True,
                        help="the train stages' out-of-fold probabilities, <backbone>/<classifier>.csv")
    parser.add_argument("--groups", type=Path, required=True, help="the audit's groups.csv")
    parser.add_argument("--out", type=Path, required=True, help="label_issues.csv")
    parser.add_argument("--summary", type=Path, required=True, help="label_issues.json")
    args = parser.parse_args(argv)

    params = load_section("label_issues", args.params)
    board = read_csv(args.comparison, what="Leaderboard", fix="run the compare stage (dvc repro compare).")
    if board.empty or not {"backbone", "classifier"} <= set(board.columns):
        raise PipelineError(f"Leaderboard {args.comparison} has no backbone/classifier rows; run the compare stage "
                            "(dvc repro compare).")
    # the best pair whose folds give probabilities (the SVM's fold models give none)
    for _, best in board.iterrows():
        pair = f"{best['backbone']}/{best['classifier']}"
        fix = f"run its train stage (dvc repro train@{pair.replace('/', '-')})."
        oof = read_csv(args.out_of_fold_dir / f"{pair}.csv", what="Out-of-fold probabilities file", fix=fix,
                       dtype={"image": str, "true": str}, keep_default_na=False, na_values=[""])
        classes = [c[2:] for c in oof.columns if c.startswith("p_")]
        if not {"image", "true"} <= set(oof.columns) or not classes:
            raise PipelineError(f"{args.out_of_fold_dir / f'{pair}.csv'} lacks image, true or p_<class> columns; {fix}")
        if oof[[f"p_{c}" for c in classes]].notna().all(axis=None):
            break
    else:
        raise PipelineError(f"No pair in {args.comparison} has out-of-fold probabilities; train a classifier whose "
                            "folds give them (logreg, head or knn).")
    groups = read_groups(args.groups, oof["image"].tolist())
    pretrained = best.get("pretrained")
    result = find_suspects(oof, groups, classes, pretrained=None if pd.isna(pretrained) else bool(pretrained),
                           alpha=params.alpha)
    summary = {"pair": pair, **result.summary}
    with output_set() as out:  # the two change together
        out.write_csv(args.out, result.table)
        out.write_json(args.summary, summary)
    if summary["structure"]:
        print(f"{pair}: {summary['flagged']} of {summary['pictures']} train pictures flagged as possibly mislabelled "
              f"({summary['flagged_per_class']}); ranked in {args.out}")
    else:
        print(f"{pair}: no suspect named: {summary['why']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
