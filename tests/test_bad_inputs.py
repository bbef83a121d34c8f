"""Every bad input a user can cause ends in one line that names the culprit, exit status 2, and writes nothing.

Each case copies a small finished project, breaks one thing, runs one stage's CLI
(or predict) exactly as dvc.yaml does, and checks: status 2, a single ``error:``
line naming the file or key, no traceback, and no output file created or changed.

The table holds 154 cases (59 before issue 21, whose kinds the added 39 cover: odd files, FIFOs and sockets,
stray files and folders, extreme aspect ratios, size bounds, an unanswering Ray address, outputs blocked
by a file or a folder, swapped or replaced split files, malformed reuse files; issue 22's cover split
folders under unknown or doubled names, CSV lists, carving shares, unpinned handles, damaged split records;
issue 19's the classifiers at scale: cv.engine, exact_max_rows, n_components, the CV fits' Ray address;
issue 33's exported models that misbehave (no features, a fixed batch, NaN, integers, random bytes) and
params files as people save them (UTF-16, Latin-1, a key twice); its small-dataset learning curve now runs;
issue 32's 12 models and files that are not the recorded ones: a model changed by a byte, a pickle with its
record rewritten, a record of another backbone, backbone files pinned to other bytes, list paths leading out of
the dataset; PREDICT_CASES does the same for predict, a planted pickle first);
with the four full-disk runs (a file-size limit on extract, train, compare and report) none ends in a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.common.cli import run as run_cli
from tests.conftest import (
    PROJECT,
    SMALL_RUN,
    make_dataset,
    stage_command,
    stage_process,
    with_overrides,
    write_params,
)

DATA = "data"  # the dataset, inside each case's folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A project folder where every stage has run once, on a small generated dataset."""
    root = tmp_path_factory.mktemp("finished")
    make_dataset(root / DATA, train_per_class=4, held_out_per_class=2, augs=1)
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": DATA})
    warnings.simplefilter("ignore", UserWarning)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage, key in [("prepare", None), ("audit", None), ("folds", None), ("extract", None), *[("train", k) for k in
                           ("head", "logreg", "svm", "knn")], *[("learning_curve", k) for k in ("head", "logreg", "svm",
                           "knn")], ("export", None), ("cost", None), ("compare", None), ("label_issues", None),
                           ("report", None)]:
            assert stage_main(stage, key) == 0, stage
    finally:
        os.chdir(cwd)
    return root


def stage_main(stage: str, key: str | None = None, *extra: str) -> int:
    """A stage's CLI in-process, through the same wrapper as ``python -m``, params from ./params.yaml."""
    import importlib

    module, argv = stage_command(stage, key)
    main = importlib.import_module(module).main
    reads_params = "params" in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage].get("do", {}) or \
        "params" in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]
    return run_cli(main, [*argv, *(["--params", "params.yaml"] if reads_params else []), *extra])


def copy_project(finished: Path, root: Path) -> Path:
    """A copy of the finished project whose recorded image folder is the copy's own."""
    shutil.copytree(finished, root, symlinks=True)
    rewrite_json(root / "artifacts/data/source.json", lambda s: s.update(root=str(root / DATA / "Master Folder")))
    return root


def fingerprint(root: Path) -> dict[str, str]:
    """Hash of every file under the outputs (and the scratch folder), to prove nothing was written."""
    found = {}
    for top in ("artifacts", "features", ".extract-shards"):
        for path in sorted((root / top).rglob("*")) if (root / top).exists() else []:
            if path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def edit_params(root: Path, **changes) -> None:
    """Set keys of the project's params.yaml (``cv__seed`` for ``cv.seed``)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    overrides = {key.replace("__", "."): value for key, value in changes.items()}
    (root / "params.yaml").write_text(yaml.safe_dump(with_overrides(params, overrides), sort_keys=False))


def damage_first_hash(root: Path) -> None:
    """The first row's perceptual hash in the manifest, replaced by something that is not hex."""
    path = root / "artifacts/data/manifest.csv"
    lines = path.read_text().splitlines()
    column = lines[0].split(",").index("dhash")
    cells = lines[1].split(",")
    cells[column] = "not-a-hash"
    path.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")


def first_image(root: Path, split: str = "train") -> Path:
    folder = root / DATA / "Master Folder" / split / "Angry"
    return sorted(folder.iterdir())[0]


def unix_socket_at(path: Path) -> None:
    """A socket file at ``path``, bound by its name from its folder: an absolute path over 107 bytes (a deep
    pytest temp folder) is refused by AF_UNIX."""
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        socket.socket(socket.AF_UNIX).bind(path.name)
    finally:
        os.chdir(cwd)


def held_out_image(root: Path) -> Path:
    return first_image(root, "test")


def corrupt_npy_row(root: Path, name: str, value: float) -> None:
    array = np.load(root / "features" / "efficientnet_b1" / name)
    array[0, 0] = value
    np.save(root / "features" / "efficientnet_b1" / name, array)


def rewrite_yaml(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def fifo_in_place_of(path: Path) -> None:
    """A FIFO where an image was: reading it would wait for a writer for ever."""
    path.unlink()
    os.mkfifo(path)


def thin_image(path: Path, size: tuple[int, int] = (1, 50000)) -> None:
    """An image far under the pixel limit whose resize for the backbone would not be (255x12,750,000 at 255)."""
    Image.new("L", size, 128).save(path, format="PNG")


def folder_in_place_of(path: Path) -> None:
    """A non-empty folder where a stage writes a file."""
    if path.exists():
        path.unlink()
    path.mkdir()
    (path / "keep.txt").write_text("not the stage's")


def file_in_place_of(folder: Path) -> None:
    """A file where a stage writes into a folder."""
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def swap_splits(root: Path, a: str = "valid.npy", b: str = "test.npy") -> None:
    """Two split files exchanged: same shapes on the small dataset, so only their hashes tell."""
    first, second = root / "features" / "efficientnet_b1" / a, root / "features" / "efficientnet_b1" / b
    first.rename(root / "swap.npy")
    second.rename(first)
    (root / "swap.npy").rename(second)


def free_port() -> int:
    """A local port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rerank(root: Path) -> None:
    """Make the svm the best by grouped CV, so compare's new outputs differ from the ones on disk."""
    rewrite_json(root / "artifacts/metrics/efficientnet_b1/svm.json", lambda m: m["cv"].update(accuracy_mean=0.99))


def set_metric(root: Path, value) -> None:
    rewrite_json(root / "artifacts/metrics/efficientnet_b1/svm.json", lambda m: m["cv"].update(accuracy_mean=value))


def edit_csv(path: Path, change) -> None:
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


PORT = free_port()  # for the Ray address where nothing listens


# (case id, stage, classifier key, how to break the project, what the error line must name)
CASES = [
    # prepare: the data
    ("dangling symlink", "prepare", None,
     lambda r: (first_image(r).parent / "gone.jpg").symlink_to(r / "nowhere.jpg"), "gone.jpg cannot be read"),
    ("text file named .jpg", "prepare", None,
     lambda r: (first_image(r).parent / "note.jpg").write_text("not an image"), "note.jpg is not a readable image"),
    ("folder in a class folder", "prepare", None,
     lambda r: (first_image(r).parent / "more").mkdir(), "Unexpected folder"),
    ("stray file in a split folder", "prepare", None,
     lambda r: (r / DATA / "Master Folder" / "train" / "notes.txt").write_text("x"), "notes.txt"),
    ("class only in test", "prepare", None,
     lambda r: shutil.copytree(held_out_image(r).parent, held_out_image(r).parent.with_name("Bored")), "['Bored']"),
    ("empty class folder", "prepare", None,
     lambda r: [p.unlink() for p in first_image(r, "valid").parent.iterdir()], "is empty"),
    ("missing split folder named in data.splits", "prepare", None,
     lambda r: (shutil.rmtree(r / DATA / "Master Folder" / "valid"),
                edit_params(r, data__splits={"train": "train", "valid": "valid", "test": "test"})),
     "data.splits.valid='valid': there is no folder"),
    ("data.root not a folder", "prepare", None, lambda r: edit_params(r, data__root="no/such/folder"), "data.root"),
    ("image above the pixel limit", "prepare", None,
     lambda r: Image.new("L", (9500, 9500)).save(first_image(r).parent / "huge.png"), "huge.png is too large"),
    # prepare: the params, all checked before any work
    ("negative seed", "prepare", None, lambda r: edit_params(r, cv__seed=-1), "cv.seed=-1"),
    ("huge seed", "prepare", None, lambda r: edit_params(r, views__seed=2**40), "views.seed=1099511627776"),
    ("huge init seed", "prepare", None, lambda r: edit_params(r, backbones__efficientnet_b1__init_seed=2**33), "backbones.efficientnet_b1.init_seed"),
    ("head seed", "prepare", None, lambda r: edit_params(r, classifiers__head__seed=-5), "classifiers.head.seed=-5"),
    ("unknown device name", "prepare", None, lambda r: edit_params(r, extract__device="tpu"), "extract.device='tpu'"),
    ("unknown weights", "prepare", None, lambda r: edit_params(r, backbones__efficientnet_b1__weights="IMAGENET9"), "backbones.efficientnet_b1.weights"),
    ("unknown engine", "prepare", None, lambda r: edit_params(r, extract__engine="spark"), "extract.engine"),
    ("knn grid", "prepare", None, lambda r: edit_params(r, classifiers__knn__n_neighbors=[0]),
     "classifiers.knn.n_neighbors"),
    ("unknown classifier", "prepare", None, lambda r: edit_params(r, classifiers__forest={"n": [1]}),
     "Unknown classifier 'forest'"),
    ("unknown section", "prepare", None,
     lambda r: (r / "params.yaml").write_text((r / "params.yaml").read_text() + "extras: {}\n"), "['extras']"),
    ("params not YAML", "prepare", None,
     lambda r: (r / "params.yaml").write_text("data: [unclosed\n"), "params.yaml is not valid YAML"),
    ("text where a number goes", "prepare", None, lambda r: edit_params(r, classifiers__head__lr="fast"),
     "classifiers.head.lr='fast'"),
    ("NaN learning rate", "prepare", None, lambda r: edit_params(r, classifiers__head__lr=float("nan")),
     "classifiers.head.lr=nan must be a finite number"),
    ("NaN flip probability", "prepare", None, lambda r: edit_params(r, views__hflip=float("nan")), "views.hflip=nan"),
    ("head left out of classifiers", "prepare", None,
     lambda r: rewrite_yaml(r / "params.yaml", lambda p: p["classifiers"].pop("head")), "classifiers.head is missing"),
    # audit
    ("manifest missing", "audit", None, lambda r: (r / "artifacts/data/manifest.csv").unlink(), "manifest.csv"),
    ("source.json damaged", "audit", None,
     lambda r: (r / "artifacts/data/source.json").write_text("{not json"), "source.json is not valid JSON"),
    # the audit reads the hashes prepare recorded (it decodes no image): a manifest without them, or damaged
    ("manifest written before prepare recorded hashes", "audit", None,
     lambda r: (r / "artifacts/data/manifest.csv").write_text("\n".join(
         ",".join(line.split(",")[:6]) for line in (r / "artifacts/data/manifest.csv").read_text().splitlines())
         + "\n"), "lacks column(s) ['dhash', 'dhash_mirrored', 'informative', 'thumbnail']"),
    ("manifest written before prepare recorded thumbnails", "audit", None,
     lambda r: (r / "artifacts/data/manifest.csv").write_text("\n".join(
         ",".join(line.split(",")[:9]) for line in (r / "artifacts/data/manifest.csv").read_text().splitlines())
         + "\n"), "lacks column(s) ['thumbnail']"),
    ("manifest with a damaged thumbnail", "audit", None,
     lambda r: (r / "artifacts/data/manifest.csv").write_text(
         (r / "artifacts/data/manifest.csv").read_text().replace(",True,", ",True,@@", 1)),
     "thumbnail column holds a value that is not 144 base64-encoded bytes"),
    ("manifest with a damaged hash", "audit", None, damage_first_hash,
     "manifest's dhash column holds a value that is not a 64-bit hex hash"),
    # extract
    ("device that is not there", "extract", None, lambda r: edit_params(r, extract__device="cuda"),
     "device 'cuda' is not available"),
    ("checkpoint missing", "extract", None, lambda r: edit_params(r, backbones__efficientnet_b1__checkpoint="none.pth"),
     "backbones.efficientnet_b1.checkpoint='none.pth' does not exist"),
    ("checkpoint is a text file", "extract", None,
     lambda r: ((r / "text.pth").write_text("hello"), edit_params(r, backbones__efficientnet_b1__checkpoint="text.pth")),
     "backbones.efficientnet_b1.checkpoint='text.pth' is not a PyTorch state dict file"),
    ("checkpoint is empty", "extract", None,
     lambda r: ((r / "empty.pth").write_bytes(b""), edit_params(r, backbones__efficientnet_b1__checkpoint="empty.pth")),
     "backbones.efficientnet_b1.checkpoint='empty.pth' is an empty file"),
    ("checkpoint full of NaN", "extract", None, lambda r: nan_checkpoint(r), "NaN or infinite values"),
    ("image deleted after prepare", "extract", None, lambda r: held_out_image(r).unlink(), held_out_image),
    # train
    ("groups.csv without a group column", "train", "logreg",
     lambda r: pd.read_csv(r / "artifacts/data/groups.csv").drop(columns="group").to_csv(
         r / "artifacts/data/groups.csv", index=False), "groups.csv lacks column(s) ['group']"),
    ("groups.csv missing rows", "train", "logreg",
     lambda r: pd.read_csv(r / "artifacts/data/groups.csv").iloc[3:].to_csv(r / "artifacts/data/groups.csv",
                                                                             index=False), "have no group"),
    ("meta.json damaged", "train", "logreg", lambda r: (r / "features/efficientnet_b1/meta.json").write_text("{"),
     "meta.json is not valid JSON"),
    ("features index empty", "train", "logreg", lambda r: (r / "features/efficientnet_b1/index.csv").write_text(""),
     "index.csv is not a readable CSV file"),
    ("meta.json without classes", "train", "logreg",
     lambda r: rewrite_json(r / "features/efficientnet_b1/meta.json", lambda m: m.pop("classes")), "meta.json needs \"classes\""),
    ("NaN embedding", "train", "logreg", lambda r: corrupt_npy_row(r, "train.npy", np.nan),
     "train.npy holds 1 row(s) with NaN"),
    ("cv.folds above the pictures", "train", "logreg", lambda r: edit_params(r, cv__folds=50),
     "cv.folds=50 is larger than the number of original pictures"),
    ("cv.inner_folds above the pictures", "train", "logreg", lambda r: edit_params(r, cv__inner_folds=12),
     "cv.inner_folds=12"),
    ("classifier not in params", "train", "forest", lambda r: None, "no classifiers.forest entry"),
    ("features from another manifest", "train", "logreg",
     lambda r: (r / "artifacts/data/split_manifest.csv").write_text(
         (r / "artifacts/data/split_manifest.csv").read_text() + "\n"), "extracted from another manifest"),
    ("manifest missing (train)", "train", "logreg", lambda r: (r / "artifacts/data/split_manifest.csv").unlink(),
     "Manifest artifacts/data/split_manifest.csv not found"),
    ("groups.csv empty", "train", "logreg", lambda r: (r / "artifacts/data/groups.csv").write_text(""),
     "groups.csv is not a readable CSV file"),
    # learning_curve
    ("learning curve without the train metrics", "learning_curve", "logreg",
     lambda r: (r / "artifacts/metrics/efficientnet_b1/logreg.json").unlink(),
     "artifacts/metrics/efficientnet_b1/logreg.json not found"),
    ("learning curve fraction above 1", "prepare", None, lambda r: edit_params(r, learning_curve__fractions=[1.5]),
     "learning_curve.fractions=[1.5] is out of range"),
    ("source.json without a root", "extract", None, lambda r: (r / "artifacts/data/source.json").write_text("{}"),
     'has no "root"'),
    # export, compare, report
    ("export model damaged", "export", None, lambda r: (r / "artifacts/models/efficientnet_b1/head/model.skops").write_bytes(b"junk"),
     "head/model.skops is not a skops model file"),
    # issue 32: models are data, every file the recorded one, backbone files pinned, list paths inside the dataset
    ("export model changed by one byte", "export", None,
     lambda r: flip_byte(r / "artifacts/models/efficientnet_b1/head/model.skops"), "is not the file its record"),
    ("export model a pickle with its record rewritten", "export", None,
     lambda r: plant_pickle(r / "artifacts/models/efficientnet_b1/head/model.skops", r / "marker"),
     "head/model.skops is not a skops model file"),
    ("compared model changed by one byte", "compare", None,
     lambda r: [flip_byte(p) for p in (r / "artifacts/models").glob("*/*/model.skops")], "is not the file its record"),
    ("compared model recorded for another backbone", "compare", None,
     lambda r: [rewrite_json(p, lambda m: m.update(backbone_fingerprint="0" * 64))
                for p in (r / "artifacts/models").glob("*/*/model.json")], "fingerprints differ"),
    ("compared model without its record", "compare", None,
     lambda r: [p.unlink() for p in (r / "artifacts/models").glob("*/*/model.json")], "model.json not found"),
    ("exported backbone with another sha256", "extract", None, lambda r: pinned_pickle_program(r, "0" * 64),
     "not the pinned backbones.efficientnet_b1.sha256"),
    ("checkpoint with another sha256", "extract", None, lambda r: pinned_checkpoint(r, "ab" * 32),
     "not the pinned backbones.efficientnet_b1.sha256"),
    ("sha256 that is not a hash", "prepare", None, lambda r: pinned_checkpoint(r, "d41d8cd9"),
     "backbones.efficientnet_b1.sha256='d41d8cd9' is not a sha256"),
    ("sha256 without a file to pin", "prepare", None, lambda r: edit_params(r, backbones__efficientnet_b1__sha256="0" * 64),
     "backbones.efficientnet_b1.sha256 pins backbones.efficientnet_b1.checkpoint, which is not set"),
    ("CSV list path through .. out of the dataset", "prepare", None, lambda r: listed_outside(r, "../outside.jpg"),
     "../outside.jpg lies outside the dataset folder"),
    ("CSV list absolute path out of the dataset", "prepare", None, lambda r: listed_outside(r, str(r / "outside.jpg")),
     "outside.jpg lies outside the dataset folder"),
    ("CSV list link out of the dataset", "prepare", None, lambda r: listed_outside(r, "link.jpg"),
     "link.jpg lies outside the dataset folder"),
    ("metrics missing", "compare", None, lambda r: (r / "artifacts/metrics/efficientnet_b1/svm.json").unlink(), "svm.json not found"),
    ("metrics damaged", "compare", None, lambda r: (r / "artifacts/metrics/efficientnet_b1/svm.json").write_text("[1]"),
     "svm.json lacks"),
    ("models missing", "compare", None,
     lambda r: [p.unlink() for p in (r / "artifacts/models").glob("*/*/model.skops")], "model.skops not found"),
    # issue 34: the decision's inputs
    ("out-of-fold file missing", "compare", None, lambda r: (r / "artifacts/out_of_fold/efficientnet_b1/svm.csv").unlink(),
     "svm.csv not found"),
    ("out-of-fold file of fewer images", "compare", None,
     lambda r: edit_csv(r / "artifacts/out_of_fold/efficientnet_b1/svm.csv", lambda f: f.iloc[1:]),
     "holds other train images than the other pairs'"),
    ("out-of-fold file without predictions", "compare", None,
     lambda r: edit_csv(r / "artifacts/out_of_fold/efficientnet_b1/knn.csv", lambda f: f.drop(columns="predicted_1")),
     "predicted_1"),
    ("cost file missing", "compare", None, lambda r: (r / "artifacts/cost/efficientnet_b1.json").unlink(),
     "Cost file artifacts/cost/efficientnet_b1.json not found"),
    ("cost file without a classifier", "compare", None, lambda r: (r / "artifacts/cost/efficientnet_b1.json").write_text("[1]"),
     "has no figures for head"),
    ("cost of a model that is missing", "cost", None,
     lambda r: (r / "artifacts/models/efficientnet_b1/knn/model.skops").unlink(), "knn/model.skops not found"),
    ("equivalence above 1", "prepare", None, lambda r: edit_params(r, evaluation__equivalence=2),
     "evaluation.equivalence=2"),
    ("leaderboard missing", "report", None, lambda r: (r / "artifacts/comparison.csv").unlink(),
     "comparison.csv not found"),
    ("training curve damaged", "report", None, lambda r: (r / "artifacts/selection/head/efficientnet_b1.csv").write_text(""),
     "efficientnet_b1.csv is not a readable CSV"),
    # backbones
    ("unknown backbone source", "prepare", None, lambda r: edit_params(r, backbones__efficientnet_b1__source="keras"),
     "backbones.efficientnet_b1.source='keras' is not known"),
    ("unknown torchvision model", "prepare", None, lambda r: edit_params(r, backbones__efficientnet_b1__model="resnet9"),
     "backbones.efficientnet_b1.model='resnet9'"),
    ("backbone name with a dash", "prepare", None,
     lambda r: rewrite_yaml(r / "params.yaml", lambda p: p["backbones"].update({"my-net": {"source": "torchvision"}})),
     "backbones.'my-net'"),
    ("exported file missing", "prepare", None, lambda r: exported_entry(r, "none.pt2"),
     "backbones.efficientnet_b1.file='none.pt2' does not exist"),
    ("checkpoint of another architecture", "extract", None, lambda r: resnet_checkpoint(r),
     "backbones.efficientnet_b1.checkpoint='resnet.pth' does not fit"),
    ("exported model of the wrong shape", "extract", None, lambda r: wrong_shape_model(r),
     "backbones.efficientnet_b1.file='maps.pt'"),
    ("backbone not in params", "extract", "nope", lambda r: None, "has no backbones.nope entry"),
    # issue 33: exported models that misbehave are caught where they are loaded, naming the file's key
    ("exported model returning no features", "extract", None, lambda r: traced_model(r, "empty.pt", lambda x: x[:, 0, :0, 0]),
     "backbones.efficientnet_b1.file='empty.pt': the model returns (2, 0)"),
    ("exported model ignoring the batch size", "extract", None,
     lambda r: traced_model(r, "fixed.pt", lambda x: x.new_ones(2, 8)), "backbones.efficientnet_b1.file='fixed.pt'"),
    ("exported model returning NaN", "extract", None,
     lambda r: traced_model(r, "nan.pt", lambda x: x.mean((2, 3)) * float("nan")),
     "backbones.efficientnet_b1.file='nan.pt': the model returns NaN"),
    ("exported model returning whole numbers", "extract", None,
     lambda r: traced_model(r, "ints.pt", lambda x: x.mean((2, 3)).round().long()),
     "backbones.efficientnet_b1.file='ints.pt': the model returns (2, 3)"),
    ("exported program of random bytes", "extract", None, lambda r: random_bytes_program(r),
     "backbones.efficientnet_b1.file='random.pt2' is not a readable torch.export program"),
    # issue 33: params.yaml as people write it, read as DVC reads it
    ("params.yaml saved as UTF-16", "prepare", None,
     lambda r: (r / "params.yaml").write_bytes((r / "params.yaml").read_text().encode("utf-16")),
     "params.yaml is not UTF-8 text"),
    ("a params key written twice", "prepare", None,
     lambda r: (r / "params.yaml").write_text((r / "params.yaml").read_text().replace("cv:\n", "cv:\n  seed: 1\n", 1)),
     "the key 'seed' is written twice"),
    ("a classifier key written twice", "prepare", None,
     lambda r: (r / "params.yaml").write_text((r / "params.yaml").read_text().replace("  knn:\n", "  knn:\n    weights: [uniform]\n", 1)),
     "the key 'weights' is written twice"),
    ("params.yaml in Latin-1 with an accent", "prepare", None,
     lambda r: (r / "params.yaml").write_bytes(("# réglages\n" + (r / "params.yaml").read_text()).encode("latin-1")),
     "params.yaml is not UTF-8 text (byte 3"),
    ("folds file of other images", "train", "logreg",
     lambda r: pd.read_csv(r / "artifacts/data/folds.csv").iloc[2:].to_csv(r / "artifacts/data/folds.csv", index=False),
     "folds.csv lists other train images"),
    ("folds file missing", "train", "logreg", lambda r: (r / "artifacts/data/folds.csv").unlink(), "folds.csv not found"),
    # issue 21: odd files. Only regular files are read as images; what sits where it should not is named.
    ("FIFO named like an image", "prepare", None, lambda r: os.mkfifo(first_image(r).parent / "pipe.jpg"),
     "pipe.jpg is not a regular file (a FIFO)"),
    ("FIFO in a split folder", "prepare", None, lambda r: os.mkfifo(r / DATA / "Master Folder" / "valid" / "p.png"),
     "Stray file"),
    ("socket named like an image", "prepare", None,
     lambda r: unix_socket_at(first_image(r).parent / "s.jpg"),
     "s.jpg is not a regular file (a socket)"),
    ("stray folder next to the splits", "prepare", None, lambda r: (r / DATA / "Master Folder" / "extra").mkdir(),
     "Stray folder"),
    ("stray file next to the splits", "prepare", None,
     lambda r: (r / DATA / "Master Folder" / "README.txt").write_text("x"), "README.txt sits next to the split"),
    ("image of extreme aspect ratio", "prepare", None, lambda r: thin_image(first_image(r).parent / "thin.png"),
     "thin.png has an extreme aspect ratio (1x50000)"),
    ("wide image of extreme aspect ratio", "prepare", None,
     lambda r: thin_image(first_image(r).parent / "wide.png", (60000, 2)), "wide.png has an extreme aspect ratio"),
    ("image replaced by a FIFO after prepare", "extract", None, lambda r: fifo_in_place_of(held_out_image(r)),
     held_out_image),
    ("image replaced by a thin one after prepare", "extract", None, lambda r: thin_image(held_out_image(r)),
     held_out_image),
    ("checkpoint is a folder", "extract", None,
     lambda r: ((r / "weights.pth").mkdir(), edit_params(r, backbones__efficientnet_b1__checkpoint="weights.pth")),
     "backbones.efficientnet_b1.checkpoint='weights.pth' exists but is a folder"),
    ("checkpoint is a FIFO", "extract", None,
     lambda r: (os.mkfifo(r / "weights.pth"), edit_params(r, backbones__efficientnet_b1__checkpoint="weights.pth")),
     "backbones.efficientnet_b1.checkpoint='weights.pth' exists but is not a regular file"),
    # memory bounds
    ("crop_size above the limit", "prepare", None, lambda r: edit_params(r, extract__crop_size=4096),
     "extract.crop_size=4096 is out of range"),
    ("resize_size above the limit", "prepare", None, lambda r: edit_params(r, extract__resize_size=100000),
     "extract.resize_size=100000 is out of range"),
    ("ray timeout zero", "prepare", None, lambda r: edit_params(r, extract__ray_timeout_s=0), "extract.ray_timeout_s"),
    ("ray timeout as text", "prepare", None, lambda r: edit_params(r, extract__ray_timeout_s="soon"),
     "extract.ray_timeout_s='soon'"),
    # no wait without an end
    ("Ray address where nothing listens", "extract", None,
     lambda r: edit_params(r, extract__engine="ray", extract__ray_address=f"127.0.0.1:{PORT}",
                           extract__ray_timeout_s=0.1), f"No Ray cluster answers at '127.0.0.1:{PORT}'"),
    ("Ray address for the CV fits where nothing listens", "train", "logreg",
     lambda r: edit_params(r, cv__engine="ray", extract__ray_address=f"127.0.0.1:{PORT}", extract__ray_timeout_s=0.1),
     f"No Ray cluster answers at '127.0.0.1:{PORT}'"),
    # the classifiers at scale (issue 19)
    ("unknown cv engine", "train", "logreg", lambda r: edit_params(r, cv__engine="spark"), "cv.engine"),
    ("svm exact_max_rows below the number of classes", "train", "svm",
     lambda r: edit_params(r, classifiers__svm__exact_max_rows=3),
     "classifiers.svm.exact_max_rows=3 is below the number of classes (4)"),
    ("knn exact_max_rows, gone since kNN is exact at every size", "prepare", None,
     lambda r: edit_params(r, classifiers__knn__exact_max_rows=0), "Unknown key(s) ['classifiers.knn.exact_max_rows']"),
    ("Nystroem with no components", "prepare", None, lambda r: edit_params(r, classifiers__svm__n_components=0),
     "classifiers.svm.n_components=0 is invalid"),
    # writes that fail: the outputs of a stage change together or not at all (each run here would change them)
    ("prepare's last output blocked by a folder", "prepare", None,
     lambda r: (shutil.copy(first_image(r), first_image(r).with_name("zz-copy.jpg")),
                folder_in_place_of(r / "artifacts/data/source.json")), "Cannot write artifacts/data/source.json"),
    ("train's last output blocked by a folder", "train", "logreg",
     lambda r: (edit_params(r, classifiers__logreg__C=[1.0]), folder_in_place_of(r / "artifacts/metrics/efficientnet_b1/logreg.json")),
     "Cannot write artifacts/metrics/efficientnet_b1/logreg.json: a folder stands where a file should be"),
    ("train's output folder is a file", "train", "logreg",
     lambda r: (edit_params(r, classifiers__logreg__C=[1.0]), file_in_place_of(r / "artifacts/cv")),
     "(artifacts/cv is a file)"),
    ("compare's last output blocked by a folder", "compare", None,
     lambda r: (rerank(r), folder_in_place_of(r / "artifacts/comparison.md")), "Cannot write artifacts/comparison.md"),
    ("audit's last output blocked by a folder", "audit", None,
     lambda r: (edit_params(r, audit__near_duplicate_bits=0), folder_in_place_of(r / "artifacts/data/groups.csv")),
     "Cannot write artifacts/data/groups.csv"),
    ("report blocked by a folder", "report", None, lambda r: folder_in_place_of(r / "artifacts/report.html"),
     "Cannot write artifacts/report.html"),
    ("scratch folder is a file", "extract", None,
     lambda r: (edit_params(r, extract__batch_size=8), file_in_place_of(r / ".extract-shards")),
     "(.extract-shards is a file)"),
    # reuse files: swapped or replaced splits, classes, groups, finite metrics
    ("valid and test features swapped", "train", "logreg", lambda r: swap_splits(r),
     "valid.npy is not the file extract wrote (it holds what test.npy held"),
    ("train features replaced", "train", "logreg",
     lambda r: np.save(r / "features/efficientnet_b1/train.npy", np.load(r / "features/efficientnet_b1/train.npy")[::-1].copy()),
     "train.npy is not the file extract wrote (its content changed"),
    ("views features replaced", "train", "logreg",
     lambda r: np.save(r / "features/efficientnet_b1/train_views.npy", np.load(r / "features/efficientnet_b1/train_views.npy") * 2),
     "train_views.npy is not the file extract wrote"),
    ("meta.json hashes malformed", "train", "logreg",
     lambda r: rewrite_json(r / "features/efficientnet_b1/meta.json", lambda m: m.update(sha256="abc")), "\"sha256\" 'abc'"),
    ("meta.json lists a class no image has", "train", "logreg",
     lambda r: rewrite_json(r / "features/efficientnet_b1/meta.json", lambda m: m.update(classes=[*m["classes"], "Zebra"])),
     "class(es) ['Zebra'] that no train image"),
    ("meta.json lists a class no image has (report)", "report", None,
     lambda r: rewrite_json(r / "features/efficientnet_b1/meta.json", lambda m: m.update(classes=[*m["classes"], "Zebra"])),
     "['Zebra']"),
    ("meta.json lists a class twice", "train", "logreg",
     lambda r: rewrite_json(r / "features/efficientnet_b1/meta.json", lambda m: m.update(classes=[*m["classes"], "Sad"])),
     "['Sad'] more than once"),
    ("groups.csv with an empty group", "train", "logreg",
     lambda r: edit_csv(r / "artifacts/data/groups.csv", lambda d: d.assign(group="")), "empty path or group"),
    ("groups.csv repeats an image", "train", "logreg",
     lambda r: edit_csv(r / "artifacts/data/groups.csv", lambda d: pd.concat([d, d.iloc[:1]])), "more than once"),
    ("metrics value NaN", "compare", None, lambda r: set_metric(r, float("nan")), "cv.accuracy_mean=nan"),
    ("metrics value infinite", "compare", None, lambda r: set_metric(r, float("inf")), "cv.accuracy_mean=inf"),
    ("metrics value text", "compare", None, lambda r: set_metric(r, "high"), "cv.accuracy_mean='high'"),
    ("metrics value null", "compare", None,
     lambda r: rewrite_json(r / "artifacts/metrics/efficientnet_b1/svm.json", lambda m: m["test"].update(n=None)), "test.n=None"),
    ("predictions lack a column", "compare", None,
     lambda r: edit_csv(r / "artifacts/predictions/efficientnet_b1/svm.csv", lambda d: d.drop(columns="predicted")),
     "svm.csv lacks column(s) ['predicted']"),
    ("predictions name an unknown class", "compare", None,
     lambda r: edit_csv(r / "artifacts/predictions/efficientnet_b1/svm.csv", lambda d: d.assign(predicted="Zebra")), "['Zebra']"),
    ("predictions without probabilities", "compare", None,
     lambda r: edit_csv(r / "artifacts/predictions/efficientnet_b1/svm.csv", lambda d: d[[c for c in d if not c.startswith("p_")]]),
     "svm.csv has no p_<class>"),
    ("leaderboard lacks a column", "report", None,
     lambda r: edit_csv(r / "artifacts/comparison.csv", lambda d: d.drop(columns="classifier")),
     "comparison.csv lacks column(s) ['classifier']"),
    ("leaderboard value NaN", "report", None,
     lambda r: edit_csv(r / "artifacts/comparison.csv", lambda d: d.assign(test_accuracy="nan")),
     "comparison.csv has test_accuracy='nan' in row 1"),
    ("leaderboard value text", "report", None,
     lambda r: edit_csv(r / "artifacts/comparison.csv", lambda d: d.assign(cv_accuracy="high")),
     "comparison.csv has cv_accuracy='high' in row 1"),
    ("leaderboard names an unknown classifier", "report", None,
     lambda r: edit_csv(r / "artifacts/comparison.csv", lambda d: d.assign(classifier="forest")), "forest.csv"),
    ("training curve without losses", "report", None,
     lambda r: (r / "artifacts/selection/head/efficientnet_b1.csv").write_text("a,b\n1,2\n"), "efficientnet_b1.csv lacks column(s)"),
    ("training curve with NaN", "report", None,
     lambda r: edit_csv(r / "artifacts/selection/head/efficientnet_b1.csv", lambda d: d.assign(train_loss="nan")),
     "efficientnet_b1.csv has train_loss=nan"),
    ("report predictions lack a probability", "report", None,
     lambda r: edit_csv(r / "artifacts/predictions/efficientnet_b1/logreg.csv", lambda d: d.drop(columns="p_Angry")), "['p_Angry']"),
    # issue 22: split folders under other names, a CSV list instead of folders, splits carved from train
    ("split folder of an unknown name", "prepare", None,
     lambda r: (r / DATA / "Master Folder" / "valid").rename(r / DATA / "Master Folder" / "holdout"),
     "Master Folder/holdout sits next to the split folders ['train', 'test']"),
    ("two folders of one split", "prepare", None,
     lambda r: shutil.copytree(r / DATA / "Master Folder" / "valid", r / DATA / "Master Folder" / "val"),
     "several valid folders ['val', 'valid']"),
    ("split folder named in data.splits not there", "prepare", None,
     lambda r: edit_params(r, data__splits={"train": "train", "valid": "validation", "test": "test"}),
     "data.splits.valid='validation': there is no folder"),
    ("unknown key under data.splits", "prepare", None,
     lambda r: edit_params(r, data__splits={"train": "train", "validation": "valid"}), "data.splits.validation"),
    ("a CSV list and folders both given", "prepare", None, lambda r: edit_params(r, data__list="images.csv"),
     "data.list='images.csv' and data.layout_dir='Master Folder' are both set"),
    ("CSV list not there", "prepare", None, lambda r: edit_params(r, data__list="nope.csv", data__layout_dir=None),
     "data.list='nope.csv'"),
    ("CSV list without a label column", "prepare", None, lambda r: image_list(r, lambda d: d.drop(columns="label")),
     "images.csv lacks column(s) ['label']"),
    ("CSV list names a file that does not exist", "prepare", None,
     lambda r: image_list(r, lambda d: pd.concat([d, pd.DataFrame([{"path": "gone/x.jpg", "label": "Sad",
                                                                    "split": "train"}])])),
     "gone/x.jpg does not exist"),
    ("CSV list with an unknown split name", "prepare", None,
     lambda r: image_list(r, lambda d: d.assign(split=d["split"].replace("valid", "holdout"))),
     "split 'holdout' is not a split name"),
    ("CSV list with a class only in test", "prepare", None,
     lambda r: image_list(r, lambda d: d.assign(label=d["label"].where(d["split"] != "test", "Bored"))), "['Bored']"),
    ("CSV list with an empty label", "prepare", None,
     lambda r: image_list(r, lambda d: d.assign(label=d["label"].where(d.index != 3, ""))),
     "line 5: the label is empty"),
    ("carve share that leaves a class without a test picture", "audit", None,
     lambda r: (shutil.rmtree(r / DATA / "Master Folder" / "test"), edit_params(r, data__carve__test=0.05),
                stage_main("prepare")), "data.carve.test=0.05 leaves class 'Angry' with no picture in test"),
    ("carve share of zero", "prepare", None, lambda r: edit_params(r, data__carve__valid=0), "data.carve.valid=0"),
    ("carve shares that leave train nothing", "prepare", None,
     lambda r: edit_params(r, data__carve__valid=0.6, data__carve__test=0.5), "add up to 1.1"),
    ("handle without a version", "prepare", None,
     lambda r: edit_params(r, data__handle="anshtanwar/pets-facial-expression-dataset"),
     "data.handle='anshtanwar/pets-facial-expression-dataset' is not pinned to a version"),
    ("manifest names an unknown split", "audit", None,
     lambda r: edit_csv(r / "artifacts/data/manifest.csv",
                        lambda d: d.assign(split=d["split"].replace("valid", "dev"))),
     "names split(s) ['dev']"),
    ("source.json with damaged splits", "audit", None,
     lambda r: rewrite_json(r / "artifacts/data/source.json", lambda s: s.update(splits=["train"])), 'has "splits"'),
    ("splits.csv without its why", "compare", None,
     lambda r: edit_csv(r / "artifacts/data/splits.csv", lambda d: d.drop(columns="why")),
     "splits.csv lacks column(s) ['why']"),
]


def image_list(root: Path, change) -> None:
    """The dataset as a CSV list (path relative to it, label, split), changed by ``change``, and the params to
    read it instead of the folders."""
    base = root / DATA
    rows = [{"path": p.relative_to(base).as_posix(), "label": p.parent.name, "split": p.parent.parent.name}
            for p in sorted((base / "Master Folder").rglob("*.jpg"))]
    change(pd.DataFrame(rows)).to_csv(base / "images.csv", index=False)
    edit_params(root, data__list="images.csv", data__layout_dir=None)


def exported_entry(root: Path, file: str, **pin) -> None:
    rewrite_yaml(root / "params.yaml", lambda p: p["backbones"].update(efficientnet_b1={
        "source": "exported", "file": file, "pretrained": False, "crop_size": 64, "resize_size": 72, **pin}))


class Payload:
    """Unpickled, it creates ``marker``: proof that a loader ran code a file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant_pickle(path: Path, marker: Path) -> None:
    """A pickle at ``path`` that would create ``marker``; beside it, a record naming its bytes (whoever can push a
    model can rewrite its record too)."""
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": Payload(marker)}))
    record = path.with_name("model.json")
    if record.exists():
        rewrite_json(record, lambda m: m.update(sha256=hashlib.sha256(path.read_bytes()).hexdigest()))


def flip_byte(path: Path) -> None:
    """One byte in the middle of the file changed."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def pinned_pickle_program(root: Path, sha256: str) -> None:
    """An exported backbone that is a pickle planted as a ``.pt2`` program (loading it would create the marker),
    pinned to other bytes."""
    plant_pickle(root / "encoder.pt2", root / "marker")
    exported_entry(root, "encoder.pt2", sha256=sha256)


def pinned_checkpoint(root: Path, sha256: str) -> None:
    (root / "weights.pth").write_bytes(b"not the weights you pinned")
    edit_params(root, backbones__efficientnet_b1__checkpoint="weights.pth", backbones__efficientnet_b1__sha256=sha256)


def listed_outside(root: Path, path: str) -> None:
    """The dataset as a CSV list with one more row, ``path``, that leads to an image outside the dataset folder."""
    shutil.copy(first_image(root), root / "outside.jpg")
    (root / DATA / "link.jpg").symlink_to(root / "outside.jpg")
    image_list(root, lambda d: pd.concat([d, pd.DataFrame([{"path": path, "label": "Sad", "split": "train"}])]))


def resnet_checkpoint(root: Path) -> None:
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), root / "resnet.pth")
    edit_params(root, backbones__efficientnet_b1__checkpoint="resnet.pth")


def wrong_shape_model(root: Path) -> None:
    """A TorchScript model that forgot to pool: (n, c, h, w) feature maps instead of (n, d)."""
    import torch

    torch.jit.script(torch.nn.Conv2d(3, 4, 3)).save(str(root / "maps.pt"))
    exported_entry(root, "maps.pt")


def traced_model(root: Path, file: str, forward) -> None:
    """A TorchScript model (traced) whose forward is ``forward`` of the input batch."""
    import torch

    class Model(torch.nn.Module):
        def forward(self, x):
            return forward(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warns about constants: they are what these models are
        torch.jit.trace(Model(), torch.zeros(2, 3, 64, 64)).save(str(root / file))
    exported_entry(root, file)


def random_bytes_program(root: Path) -> None:
    (root / "random.pt2").write_bytes(np.random.default_rng(0).bytes(5000))
    exported_entry(root, "random.pt2")


def nan_checkpoint(root: Path) -> None:
    import torch
    import torchvision

    state = torchvision.models.efficientnet_b1().state_dict()
    state["features.3.0.block.0.0.weight"][0] = float("nan")
    torch.save(state, root / "nan.pth")
    edit_params(root, backbones__efficientnet_b1__checkpoint="nan.pth")


@pytest.mark.parametrize(("case", "stage", "key", "breaking", "culprit"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_ends_in_one_error_line_and_writes_nothing(finished, tmp_path, monkeypatch, capfd, case, stage,
                                                                 key, breaking, culprit):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    name = culprit(root).name if callable(culprit) else culprit  # before the file is broken or gone
    breaking(root)
    before = fingerprint(root)
    capfd.readouterr()
    code = stage_main(stage, key)
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and name in errors[0], errors
    assert "Traceback" not in err
    assert fingerprint(root) == before, "an output was written or changed"
    assert not (root / "marker").exists(), "a planted pickle was loaded"


# (stage, classifier key, file-size limit in bytes, a change that makes the run's outputs differ from those on disk)
FULL_DISK = [
    ("extract", None, 120_000, lambda r: edit_params(r, extract__shard_rows=16)),  # shards fit, train.npy does not
    ("train", "logreg", 20_000, lambda r: edit_params(r, classifiers__logreg__C=[1.0])),
    ("compare", None, 100_000, rerank),
    ("report", None, 50_000, lambda r: edit_params(r, classifiers__logreg__C=[1.0])),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "key", "limit", "change"), FULL_DISK, ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_ends_in_one_line_and_leaves_the_previous_outputs_whole(finished, tmp_path, stage, key, limit,
                                                                          change):
    """A file-size limit (ulimit -f, set in the stage's process only) fails a write the way a full disk does."""
    import resource

    root = copy_project(finished, tmp_path / "project")
    change(root)
    outputs = {k: v for k, v in fingerprint(root).items() if not k.startswith(".extract-shards")}
    module, argv = stage_command(stage, key)
    spec = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]
    cmd = [sys.executable, "-m", module, *argv, *(["--params", "params.yaml"] if "params" in spec.get("do", spec)
                                                 else [])]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(PROJECT)},
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and "Cannot write" in errors[0] and "the file is too large" in errors[0], errors
    assert "Traceback" not in result.stderr
    after = {k: v for k, v in fingerprint(root).items() if not k.startswith(".extract-shards")}
    assert after == outputs, "an output was written, changed or half-replaced"
    assert not [p for p in root.rglob(".*.tmp-*")], "a temporary file was left behind"


def test_the_oversized_image_is_skipped_like_any_bad_image(finished, tmp_path, monkeypatch):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    Image.new("L", (9500, 9500)).save(first_image(root).parent / "huge.png")
    edit_params(root, data__on_bad_image="skip")
    assert stage_main("prepare") == 0
    skipped = pd.read_csv(root / "artifacts/data/skipped.csv")
    assert skipped["path"].str.endswith("huge.png").any()
    assert skipped["reason"].str.contains("is too large: 90,250,000 pixels").any()


def test_skip_mode_covers_every_unreadable_entry_with_reasons_that_never_change(finished, tmp_path, monkeypatch):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    folder = first_image(root).parent
    (folder / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (folder / "note.jpg").write_text("not an image")
    (folder / "more").mkdir()
    (folder / "._001.jpg").write_bytes(b"\x00\x05\x16\x07macOS resource fork")  # ignored, like .DS_Store
    (folder / ".DS_Store").write_bytes(b"\x00")
    edit_params(root, data__on_bad_image="skip")
    assert stage_main("prepare") == 0
    first = (root / "artifacts/data/skipped.csv").read_bytes()
    assert stage_main("prepare") == 0
    assert (root / "artifacts/data/skipped.csv").read_bytes() == first  # no addresses, no times
    skipped = pd.read_csv(root / "artifacts/data/skipped.csv").set_index("path")["reason"]
    assert sorted(p.rsplit("/", 1)[1] for p in skipped.index) == ["gone.jpg", "more", "note.jpg"]
    assert "0x" not in first.decode()


def test_float_params_accept_what_people_type(finished, tmp_path, monkeypatch):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    text = (root / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3")
    text = text.replace("C:\n    - 0.01\n    - 0.1", "C:\n    - 1e-2\n    - 1e-1")
    (root / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["classifiers"]["head"]["lr"] == "1e-3"  # YAML 1.1 reads it as text
    assert yaml.safe_load(text)["classifiers"]["logreg"]["C"] == ["1e-2", "1e-1"]
    assert stage_main("prepare") == 0


def test_predict_classifies_every_readable_image_and_reports_each_bad_one(finished, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(finished)
    photos = tmp_path / "photos"
    shutil.copytree(finished / DATA / "Master Folder" / "test", photos)
    (photos / "Angry" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (photos / "Sad" / "._mac.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata: ignored
    os.mkfifo(photos / "Sad" / "pipe.jpg")  # never opened: reading it would wait for a writer for ever
    capfd.readouterr()
    code = run_cli(__import__("pipeline.predict", fromlist=["main"]).main,
                   [str(photos), "--model", "knn", "--format", "csv"])
    out, err = capfd.readouterr()
    assert code == 2
    frame = pd.read_csv(__import__("io").StringIO(out), keep_default_na=False)
    good = frame[frame["error"] == ""]
    assert len(good) == 8 and (good["predicted"] != "").all()
    bad = frame[frame["error"] != ""]
    assert [name.rsplit("/", 1)[1] for name in bad["image"]] == ["broken.jpg", "pipe.jpg"]
    assert "is not a readable image" in bad["error"].iloc[0]
    assert bad["error"].iloc[1] == "is not a regular file (a FIFO); only image files are read"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "2 of 10" in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "culprit"), [
    (["no/such/folder"], "no/such/folder does not exist"),
    (["--device", "cuda"], "device 'cuda' is not available"),
    (["--device", "gpu9"], "device 'gpu9' is not known"),
    (["--model", "forest"], "No model 'forest'"),
    (["--batch-size", "0"], "argument --batch-size: 0 must be 1 or more"),
    (["--format", "xml"], "argument --format: invalid choice"),
    (["--best-model", "missing.joblib"], "missing.joblib not found"),
    (["--best-model", "artifacts"], "Model file artifacts/model.skops not found"),
    (["--model", "artifacts/data/manifest.csv"], "manifest.csv is not a skops model file"),
])
def test_predict_refuses_bad_arguments_in_one_line(finished, monkeypatch, capfd, argv, culprit):
    monkeypatch.chdir(finished)
    images = str(finished / DATA / "Master Folder" / "test")
    argv = argv if argv[0].startswith("no/") else [images, *argv]
    capfd.readouterr()
    try:
        code = run_cli(__import__("pipeline.predict", fromlist=["main"]).main, argv)
    except SystemExit as usage:  # argparse's mistakes end the process, as they would from the shell
        code = usage.code
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:") and culprit in line]


def untrusted_model(folder: Path) -> None:
    """A skops file (with a record naming its bytes) whose model is of a type the code does not list as trusted."""
    import fractions

    import skops.io

    skops.io.dump({"name": "x", "model": fractions.Fraction(1, 3), "classes": [], "features_meta": {},
                   "selected": {}}, folder / "model.skops")
    rewrite_json(folder / "model.json", lambda m: m.update(sha256=hashlib.sha256(
        (folder / "model.skops").read_bytes()).hexdigest()))


# (case id, how to break the copied project, predict's arguments after the images, what the error line names)
PREDICT_CASES = [
    ("a pickle planted as the best model", lambda r: plant_pickle(r / "artifacts/best_model/model.skops", r / "marker"),
     [], "best_model/model.skops is not a skops model file"),
    ("a joblib file of an older version", lambda r: plant_pickle(r / "artifacts/best_model.joblib", r / "marker"),
     ["--model", "artifacts/best_model.joblib"], "best_model.joblib is not a skops model file"),
    ("a model file with one byte changed", lambda r: flip_byte(r / "artifacts/models/efficientnet_b1/knn/model.skops"),
     ["--model", "knn"], "knn/model.skops is not the file its record"),
    ("a model of a type the code does not trust", lambda r: untrusted_model(r / "artifacts/best_model"), [],
     "fractions.Fraction"),
    ("a record of another backbone", lambda r: rewrite_json(r / "artifacts/models/efficientnet_b1/svm/model.json",
                                                            lambda m: m.update(backbone_fingerprint="0" * 64)),
     ["--model", "svm"], "holds features of another backbone than its record names"),
]


@pytest.mark.parametrize(("case", "breaking", "argv", "culprit"), PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_predict_loads_only_the_recorded_model_and_never_a_pickle(finished, tmp_path, monkeypatch, capfd, case, breaking,
                                                                   argv, culprit):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    breaking(root)
    capfd.readouterr()
    code = run_cli(__import__("pipeline.predict", fromlist=["main"]).main,
                   [str(root / DATA / "Master Folder" / "test"), *argv])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and culprit in errors[0], errors
    assert not (root / "marker").exists(), "a planted pickle was loaded"


def test_no_backbone_is_built_while_torch_may_unpickle_weights_in_full(finished, tmp_path, monkeypatch, capfd):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    before = fingerprint(root)
    capfd.readouterr()
    assert stage_main("extract") == 2
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:") and "unset TORCH_FORCE_NO_WEIGHTS" in line]
    assert fingerprint(root) == before


def test_an_unpinned_exported_backbone_warns_with_the_hash_to_pin(tmp_path):
    """The warning names the file's sha256, ready to paste as the entry's sha256."""
    import torch

    from pipeline.embed.backbone import build_backbone, parse_backbone

    torch.jit.script(torch.nn.Flatten()).save(str(tmp_path / "flat.pt"))
    sha = hashlib.sha256((tmp_path / "flat.pt").read_bytes()).hexdigest()
    entry = {"source": "exported", "file": str(tmp_path / "flat.pt"), "pretrained": True, "crop_size": 8,
             "resize_size": 8}
    with pytest.warns(UserWarning, match=f"is executable code .* not pinned; pin it with backbones.mine.sha256: {sha}"):
        build_backbone("mine", parse_backbone("mine", entry))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # pinned: no warning
        assert build_backbone("mine", parse_backbone("mine", {**entry, "sha256": sha})).info["fingerprint"] == sha


def test_predict_refuses_a_model_trained_on_features_made_elsewhere(tmp_path, monkeypatch, capfd):
    from tests.test_train import foreign_features

    monkeypatch.chdir(tmp_path)
    foreign_features(tmp_path / "features" / "efficientnet_b1", groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    write_params(tmp_path / "params.yaml", SMALL_RUN)
    module, argv = stage_command("train", "knn", without=("--manifest",))
    assert run_cli(__import__(module, fromlist=["main"]).main, [*argv, "--params", "params.yaml"]) == 0
    images = make_dataset(tmp_path / "photos", train_per_class=1, held_out_per_class=1, augs=0)
    capfd.readouterr()
    code = run_cli(__import__("pipeline.predict", fromlist=["main"]).main, [str(images), "--model", "knn"])
    err = capfd.readouterr().err
    assert code == 2 and "features made outside the extract stage" in err and "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_leaves_no_output(tmp_path):
    """Ctrl-C in the middle of a run (a FIFO no longer stalls one: it is refused unread, so the run is made
    long instead: 16 views of each train image, 2 a batch)."""
    data = make_dataset(tmp_path / DATA, train_per_class=10, augs=2)
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data), "extract.batch_size": 2,
                                                     "extract.num_workers": 2, "views.count": 16})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for before in ("prepare", "audit"):
        subprocess.run(stage_process(before, params), cwd=tmp_path, env=env, check=True, capture_output=True)
    # As from a terminal: a shell starts background jobs (`pytest &`) with SIGINT ignored, and children inherit it.
    proc = subprocess.Popen(stage_process("extract", params), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".extract-shards/*/*/.rows-*.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the stage and its loader workers alike
        _, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not (tmp_path / "features" / "efficientnet_b1").exists()
    assert not list(tmp_path.glob(".extract-shards/*/*/*rows-*"))


def test_two_flat_images_in_train_and_test_are_no_leak_but_an_exact_copy_is(finished, tmp_path, monkeypatch):
    root = copy_project(finished, tmp_path / "project")
    monkeypatch.chdir(root)
    Image.new("RGB", (60, 50), (200, 30, 30)).save(first_image(root).parent / "flat_red.png")
    Image.new("RGB", (60, 50), (20, 90, 220)).save(held_out_image(root).parent / "flat_blue.png")
    assert stage_main("prepare") == 0
    assert stage_main("audit") == 0  # audit.on_leak is error: a leak would fail the stage
    report = json.loads((root / "artifacts/audit.json").read_text())
    assert report["cross_split_leaks"] == []
    assert {p.rsplit("/", 1)[1] for p in report["uninformative_hashes"]} == {"flat_red.png", "flat_blue.png"}
    shutil.copy(first_image(root).parent / "flat_red.png", held_out_image(root).parent / "copy_of_red.png")
    assert stage_main("prepare") == 0
    assert stage_main("audit") == 1  # identical bytes are still one picture
    assert json.loads((root / "artifacts/audit.json").read_text())["leaks_into_held_out"] == 1


@pytest.mark.slow
def test_the_stage_processes_print_one_line_too(finished, tmp_path):
    """The same through ``python -m``, as DVC runs it: a fresh interpreter, nothing but the line."""
    root = copy_project(finished, tmp_path / "project")
    edit_params(root, cv__folds=50)
    result = subprocess.run(stage_process("train", Path("params.yaml"), "logreg"), cwd=root, capture_output=True,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(
                                Path(__file__).resolve().parents[1])})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cv.folds=50 is larger")
    assert "Traceback" not in result.stderr
