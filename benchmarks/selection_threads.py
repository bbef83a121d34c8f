"""The final selection of a grid classifier alone, on one BLAS/OpenMP thread and on two, alternating.

Why the train stage runs it on one thread (``pipeline.evaluate.training.select_beside``): beside the
folds a second thread only contends with them, and alone it is not always faster. Synthetic features
in the features format (as ``benchmarks/train.py`` writes them), the shipped params; prints seconds
per run and the selected cell. No network.

    python benchmarks/selection_threads.py --rows 16000 --classifiers svm logreg knn
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from threadpoolctl import threadpool_limits

from train import BACKBONE, PROJECT, write_features

from pipeline.common.params import load_section
from pipeline.common.groups import read_groups
from pipeline.common import features as features_io
from pipeline.evaluate.classifiers import get_classifier, parse_classifier_params
from pipeline.evaluate.training import timed_select, training_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16000)
    parser.add_argument("--classifiers", nargs="+", default=["svm", "logreg", "knn"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    cv = load_section("cv", PROJECT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_features(work, args.rows, 3, params)
        feats = features_io.load(work / "features" / BACKBONE, mmap=True)
        groups = read_groups(work / "artifacts" / "data" / "groups.csv", feats["train"].paths)
        for name in args.classifiers:
            spec, grid = get_classifier(name), parse_classifier_params(name, params["classifiers"][name])
            for round_ in range(args.rounds):
                for threads in (1, 2):
                    with threadpool_limits(limits=threads):
                        selection, seconds = timed_select(spec, grid, training_data(feats, groups, views=None), cv)
                    print(f"{name}, {args.rows:,} rows, round {round_ + 1}, {threads} thread(s): {seconds:.1f} s, "
                          f"selected {selection.selected}", flush=True)


if __name__ == "__main__":
    main()
