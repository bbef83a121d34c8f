"""Stage ``compare``: the leaderboard of all classifiers, with paired tests on test.

Writes ``comparison.md`` (people), ``comparison.csv`` (tables) and
``comparison.json`` (McNemar p-values per classifier, a DVC metrics file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline.atomic import write_csv, write_json, write_text
from pipeline.errors import run_cli
from pipeline.leaderboard import leaderboard, render_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classifiers", nargs="+", default=["head", "logreg", "svm", "knn"])
    parser.add_argument("--metrics-dir", type=Path, default=Path("artifacts/metrics"))
    parser.add_argument("--predictions-dir", type=Path, default=Path("artifacts/predictions"))
    parser.add_argument("--out", type=Path, default=Path("artifacts/comparison.md"),
                        help="markdown leaderboard; .csv and .json are written beside it")
    args = parser.parse_args(argv)

    metrics, predictions = {}, {}
    for name in args.classifiers:
        metrics_path = args.metrics_dir / f"{name}.json"
        predictions_path = args.predictions_dir / f"{name}.csv"
        for path in (metrics_path, predictions_path):
            if not path.is_file():
                parser.error(f"{path} not found: run the stage that trains '{name}' first, or drop it "
                             "from --classifiers.")
        metrics[name] = json.loads(metrics_path.read_text())
        predictions[name] = pd.read_csv(predictions_path, dtype=str, keep_default_na=False)
    table, paired = leaderboard(metrics, predictions)
    write_csv(args.out.with_suffix(".csv"), table)
    write_json(args.out.with_suffix(".json"), paired)
    text = render_markdown(table)
    write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
