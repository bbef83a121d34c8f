"""How do the train stages grow with the number of rows? Makes its own features (no network).

``--rows N [N ...]``: for each N, synthetic 1280-d embeddings in the features format: N train
rows (pictures of ``--copies`` near-identical copies each, so the grouped CV has real groups
to keep whole), 4 classes, 400 valid and 400 test rows, with ``groups.csv`` and ``folds.csv``
as the audit and folds stages write them. Then each ``train@<backbone>-<classifier>`` stage runs
in a fresh process, as dvc runs it, with the project's params (``--set key=value`` overrides,
e.g. ``--set cv.n_jobs=1``), and one line per stage gives its wall time, the peak RSS of the
largest process and the stage's own summary (which search or SVM ran). The table at the end
has the slope of each classifier's log-log fit of time against rows.

``--engine local ray``: run every stage once per ``cv.engine`` (ray: a local Ray instance).

One line per figure. The machine may be shared: compare figures of one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stage_run import PROJECT, run_stage

CLASSES = ["Angry", "Other", "Sad", "happy"]
BACKBONE = "synthetic"
DIM = 1280
HELD_OUT_ROWS = 400


def synthetic_split(rng: np.random.Generator, centres: np.ndarray, n: int, copies: int, prefix: str):
    """``n`` rows in pictures of ``copies``: class centre + picture noise + a little copy noise (float32)."""
    pictures = -(-n // copies)
    labels = rng.integers(0, len(centres), size=pictures)
    picture = centres[labels] + rng.standard_normal((pictures, centres.shape[1]), dtype=np.float32)
    rows = np.repeat(np.arange(pictures), copies)[:n]
    X = picture[rows] + 0.3 * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    paths = [f"{prefix}/{CLASSES[labels[p]]}/p{p:07d}-{i % copies}.jpg" for i, p in enumerate(rows)]
    return np.maximum(X, 0).astype(np.float32), [CLASSES[labels[p]] for p in rows], paths, rows


def write_features(work: Path, rows: int, copies: int, params: dict, seed: int = 0) -> None:
    """features/<backbone>/, artifacts/data/groups.csv and folds.csv, as the pipeline's stages write them."""
    from pipeline.common.io import file_sha256, write_csv
    from pipeline.evaluate.splits import assign_folds, folds_frame

    rng = np.random.default_rng(seed)
    centres = 0.12 * rng.standard_normal((len(CLASSES), DIM), dtype=np.float32)
    out = work / "features" / BACKBONE
    out.mkdir(parents=True)
    index, hashes = [], {}
    for split, n in [("train", rows), ("valid", HELD_OUT_ROWS), ("test", HELD_OUT_ROWS)]:
        X, labels, paths, pictures = synthetic_split(rng, centres, n, copies if split == "train" else 1, split)
        np.save(out / f"{split}.npy", X)
        hashes[f"{split}.npy"] = file_sha256(out / f"{split}.npy")
        index.append(pd.DataFrame({"split": split, "path": paths, "label": labels}))
        if split == "train":
            groups = np.array([f"{split}/{p}" for p in pictures])
            train_paths, y = paths, np.array([CLASSES.index(c) for c in labels])
    write_csv(out / "index.csv", pd.concat(index, ignore_index=True))
    (out / "meta.json").write_text(json.dumps({"backbone": BACKBONE, "classes": CLASSES, "dim": DIM,
                                               "pretrained": False, "sha256": hashes}))
    data = work / "artifacts" / "data"
    data.mkdir(parents=True)
    write_csv(data / "groups.csv", pd.DataFrame({"path": train_paths, "group": groups}))
    cv = params["cv"]
    assignment = assign_folds(y, groups, folds=cv["folds"], repeats=cv["repeats"], seed=cv["seed"])
    write_csv(data / "folds.csv", folds_frame(train_paths, groups, assignment))


def stage_args(classifier: str) -> list[str]:
    """The train stage's command line, as dvc.yaml writes it (less the manifest check: no manifest here)."""
    a = f"artifacts/{{}}/{BACKBONE}/{classifier}"
    return ["--backbone", BACKBONE, "--classifier", classifier, "--features", f"features/{BACKBONE}",
            "--groups", "artifacts/data/groups.csv", "--cv-folds", "artifacts/data/folds.csv",
            "--model", a.format("models"), "--metrics", a.format("metrics") + ".json",
            "--predictions", a.format("predictions") + ".csv", "--confusion", a.format("plots/confusion") + ".csv",
            "--folds", a.format("cv") + ".csv", "--selection", f"artifacts/selection/{classifier}/{BACKBONE}.csv"]


def set_key(params: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", required=True, metavar="N")
    parser.add_argument("--classifiers", nargs="+", default=["logreg", "knn", "svm", "head"])
    parser.add_argument("--copies", type=int, default=3, help="train rows per picture")
    parser.add_argument("--engine", nargs="+", default=["local"], choices=["local", "ray"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override")
    args = parser.parse_args()

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["backbones"] = {BACKBONE: params["backbones"][next(iter(params["backbones"]))]}
    params["backbones"][BACKBONE].update(weights=None)
    for assignment in args.set:
        set_key(params, assignment)
    table = []
    for rows in args.rows:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            work = Path(tmp)
            write_features(work, rows, args.copies, params)
            for engine in args.engine:
                if engine != "local" or "engine" in params["cv"]:
                    params["cv"]["engine"] = engine
                (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
                for classifier in args.classifiers:
                    wall, rss, out = run_stage(work, "pipeline.train", stage_args(classifier))
                    summary = out.strip().splitlines()[-1]
                    print(f"train@{BACKBONE}-{classifier} rows={rows:,} engine={engine}: {wall:.1f} s, "
                          f"peak RSS {rss:.0f} MiB ({summary})", flush=True)
                    table.append({"classifier": classifier, "engine": engine, "rows": rows, "seconds": wall,
                                  "rss_mib": rss})
    frame = pd.DataFrame(table)
    print("\n| classifier | engine | " + " | ".join(f"{r:,} rows" for r in args.rows) + " | slope | peak RSS |")
    print("|---|---|" + "---:|" * (len(args.rows) + 2))
    for (classifier, engine), part in frame.groupby(["classifier", "engine"], sort=False):
        slope = np.polyfit(np.log(part["rows"]), np.log(part["seconds"]), 1)[0] if len(part) > 1 else float("nan")
        cells = " | ".join(f"{s:.1f} s" for s in part["seconds"])
        print(f"| {classifier} | {engine} | {cells} | {slope:.2f} | {part['rss_mib'].max():.0f} MiB |")
    total = frame.groupby(["engine", "rows"])["seconds"].sum()
    for (engine, rows), seconds in total.items():
        print(f"all train stages, engine={engine}, rows={rows:,}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
