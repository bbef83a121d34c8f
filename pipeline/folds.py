"""Stage ``folds``: the grouped CV fold assignment of train, written once for every train stage.

Repeated stratified k-fold grouped by original picture (``cv.folds`` x
``cv.repeats``, seeded). Every ``train@<backbone>-<classifier>`` stage reads this
one file, so all pairs are scored on the very same folds and their per-fold
differences can be tested as pairs (compare's corrected paired t-test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.common.cli import run, stage_parser
from pipeline.common.groups import read_groups
from pipeline.common.io import write_csv
from pipeline.common.params import DEFAULT_PARAMS, load_section
from pipeline.data.dataset import read_manifest
from pipeline.evaluate.splits import assign_folds, folds_frame


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--groups", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folds.csv: path, group, repeat_<r> (the test fold)")
    args = parser.parse_args(argv)

    cv = load_section("cv", args.params)
    train = read_manifest(args.manifest).query("split == 'train'")
    paths = train["path"].tolist()
    groups = read_groups(args.groups, paths)
    y = np.unique(train["label"], return_inverse=True)[1]  # sorted classes, the features' order: the train strata
    assignment = assign_folds(y, groups, folds=cv.folds, repeats=cv.repeats, seed=cv.seed)
    write_csv(args.out, folds_frame(paths, groups, assignment))
    print(f"{len(paths)} train images, {len(np.unique(groups))} pictures -> {cv.folds} folds x {cv.repeats} "
          f"repeat(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
