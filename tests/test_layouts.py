"""Bring your own images: each layout people have, read by prepare, its missing splits carved by the audit.

Every layout is built in tmp_path from real image files (small synthetic photos, as in the rest of the
suite: CI has no copy of the pets data) and run through the prepare and audit stages exactly as dvc.yaml
runs them. Carving is checked for what makes it honest: whole pictures (planted copies go together),
the asked share of each class, the same result for a seed.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ImageOps

from pipeline.common.params import CarveParams, DataParams, SplitNames
from pipeline.data.carving import CarveError, assign_splits
from pipeline.data.dataset import HASH_COLUMNS, MANIFEST_COLUMNS, resolve_layout
from pipeline.data.layouts import DatasetError
from tests.conftest import CLASSES, augment, picture, run_stage, write_params

CARVE = CarveParams(valid=0.25, test=0.25, seed=0)


def write_pictures(folder: Path, rng: np.random.Generator, per_class: int, *, copies: int = 1) -> list[Path]:
    """``folder/<class>/`` with ``per_class`` distinct pictures each, and ``copies`` aug-<n>- copies of each."""
    written = []
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = picture(rng, c)
            stem = f"{name.lower()}{i:02d}"
            image.save(folder / name / f"{stem}.jpg", quality=92)
            written.append(folder / name / f"{stem}.jpg")
            for k in range(copies):
                augment(image, rng).save(folder / name / f"aug-{k}-{stem}.jpg", quality=85)
                written.append(folder / name / f"aug-{k}-{stem}.jpg")
    return written


def write_list(path: Path, files: list[Path], split_of=None) -> Path:
    """A CSV list of ``files`` (path relative to the CSV, label = class folder, split from ``split_of``)."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label", *(["split"] if split_of else [])])
        for file in files:
            row = [file.relative_to(path.parent).as_posix(), file.parent.name]
            out.writerow(row + ([split_of(file)] if split_of else []))
    return path


def three_folders(data: Path, rng) -> dict:
    write_pictures(data / "train", rng, 5)
    write_pictures(data / "valid", rng, 2, copies=0)
    write_pictures(data / "test", rng, 2, copies=0)
    return {}


def train_and_val(data: Path, rng) -> dict:  # torchvision's ImageFolder convention
    write_pictures(data / "train", rng, 8)
    write_pictures(data / "val", rng, 2, copies=0)
    return {}


def training_and_testing(data: Path, rng) -> dict:
    write_pictures(data / "Training", rng, 8)
    write_pictures(data / "Testing", rng, 2, copies=0)
    return {}


def named_folders(data: Path, rng) -> dict:  # names no convention knows: data.splits says them
    write_pictures(data / "training_set", rng, 8)
    write_pictures(data / "test_set", rng, 2, copies=0)
    return {"data.splits": {"train": "training_set", "test": "test_set"}}


def class_folders(data: Path, rng) -> dict:
    write_pictures(data, rng, 8)
    return {}


def list_with_splits(data: Path, rng) -> dict:
    files = write_pictures(data / "images", rng, 10)
    # the first two pictures of each class (with their copies) are listed as validation, the next two as test
    number = {f: int(f.stem.rsplit("-", 1)[-1][-2:]) for f in files}
    write_list(data / "images.csv", files, lambda f: {0: "validation", 1: "validation", 2: "Test",
                                                      3: "Test"}.get(number[f], "training"))
    return {"data.list": "images.csv", "data.layout_dir": None}


def list_without_splits(data: Path, rng) -> dict:
    files = write_pictures(data / "images", rng, 8)
    (data / "meta").mkdir()
    path = data / "meta" / "images.csv"
    with path.open("w", newline="") as f:  # paths relative to the CSV's folder, one absolute
        out = csv.writer(f)
        out.writerow(["label", "path", "source"])  # any column order; an extra column is ignored
        for i, file in enumerate(files):
            out.writerow([file.parent.name, str(file) if i == 0 else f"../images/{file.parent.name}/{file.name}",
                          "web"])
    return {"data.list": "meta/images.csv", "data.layout_dir": None}


# layout -> (builder, the splits it gives, the splits the audit must carve)
LAYOUTS = {
    "train, valid and test folders": (three_folders, {"train", "valid", "test"}, set()),
    "train and val folders": (train_and_val, {"train", "valid"}, {"test"}),
    "Training and Testing folders": (training_and_testing, {"train", "test"}, {"valid"}),
    "folders named in data.splits": (named_folders, {"train", "test"}, {"valid"}),
    "class folders only": (class_folders, {"train"}, {"valid", "test"}),
    "CSV list with a split column": (list_with_splits, {"train", "valid", "test"}, set()),
    "CSV list without a split column": (list_without_splits, {"train"}, {"valid", "test"}),
}


def prepare_and_audit(tmp_path: Path, data: Path, overrides: dict, monkeypatch) -> Path:
    """Run prepare and audit as dvc.yaml does, in ``tmp_path/project``; returns that folder."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    params = write_params(project / "params.yaml", {"data.root": str(data), "data.layout_dir": None,
                                                    "data.carve": vars(CARVE), **overrides})
    monkeypatch.chdir(project)
    assert run_stage("prepare", params) == 0
    assert run_stage("audit", params) == 0
    return project


def read(project: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(project / "artifacts" / "data" / name, dtype=str, keep_default_na=False)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_reaches_the_same_manifest_columns_and_three_whole_splits(tmp_path, monkeypatch, layout):
    build, given, carved = LAYOUTS[layout]
    data = tmp_path / "data"
    overrides = build(data, np.random.default_rng(7))
    project = prepare_and_audit(tmp_path, data, overrides, monkeypatch)
    manifest, final, splits, groups = (read(project, name) for name in
                                       ("manifest.csv", "split_manifest.csv", "splits.csv", "groups.csv"))
    columns = MANIFEST_COLUMNS + HASH_COLUMNS
    assert list(manifest.columns) == list(final.columns) == columns
    assert list(splits.columns) == ["path", "split", "why"]
    assert set(manifest["split"]) == given  # the manifest keeps the splits the data came with
    assert set(final["split"]) == {"train", "valid", "test"}
    assert sorted(final["path"]) == sorted(manifest["path"]) and final["path"].is_unique
    # the split manifest is the manifest with the final splits: same rows, only the split may differ
    merged = manifest.merge(final, on="path", suffixes=("", "_final"))
    assert (merged[[f"{c}_final" for c in columns if c not in ("path", "split")]].to_numpy()
            == merged[[c for c in columns if c not in ("path", "split")]].to_numpy()).all()
    moved = merged[merged["split"] != merged["split_final"]]
    assert set(moved["split"]) <= {"train"} and set(moved["split_final"]) == carved
    # rows train, valid, test, each in the manifest's order: the features' order
    order = final["split"].map(["train", "valid", "test"].index)
    assert order.is_monotonic_increasing
    for split in ("train", "valid", "test"):
        assert final.loc[final["split"] == split, "path"].tolist() == \
            [p for p in manifest["path"] if p in set(final.loc[final["split"] == split, "path"])]
    # splits.csv: the same rows, and why each image is where it is
    assert splits[["path", "split"]].equals(final[["path", "split"]])
    whys = splits.groupby("split")["why"].unique()
    assert all(len(w) == 1 for w in whys)
    for split in carved:
        assert whys[split][0] == "carved from train: 25% of each class's pictures (whole pictures), seed 0"
    for split in given:
        assert not whys[split][0].startswith("carved")
    # no picture on two sides, and each class in every split
    assert groups.groupby("group")["split"].nunique().max() == 1
    assert groups.set_index("path")["split"].to_dict() == final.set_index("path")["split"].to_dict()
    assert final.groupby("split")["label"].nunique().to_dict() == {"train": 4, "valid": 4, "test": 4}
    report = (project / "artifacts" / "audit.md").read_text()
    assert all(f"| {whys[s][0]} |" in report for s in ("train", "valid", "test"))


def test_with_all_three_folders_the_split_manifest_is_the_manifest_byte_for_byte(tmp_path, monkeypatch):
    """So extract, which reads the split manifest, embeds the same rows in the same order as before
    carving existed, and records the same manifest hash: the pets features stay byte-identical."""
    data = tmp_path / "data"
    three_folders(data, np.random.default_rng(1))
    project = prepare_and_audit(tmp_path, data, {}, monkeypatch)
    written = project / "artifacts" / "data"
    assert (written / "split_manifest.csv").read_bytes() == (written / "manifest.csv").read_bytes()
    assert set(read(project, "splits.csv")["why"]) == {"folder train/", "folder valid/", "folder test/"}


def test_the_default_params_read_the_pets_layout_as_before(dataset, tmp_path, monkeypatch):
    """layout_dir "Master Folder" (the shipped value) and null (found under the dataset) give one manifest."""
    project = prepare_and_audit(tmp_path, dataset, {"data.layout_dir": "Master Folder"}, monkeypatch)
    before = (project / "artifacts" / "data" / "manifest.csv").read_bytes()
    project = prepare_and_audit(tmp_path, dataset, {}, monkeypatch)
    assert (project / "artifacts" / "data" / "manifest.csv").read_bytes() == before


def planted(data: Path, rng: np.random.Generator) -> dict[str, set[str]]:
    """Class folders where every picture also has an exact copy and a mirrored copy under unrelated names;
    returns each picture's set of files (relative paths)."""
    sets = {}
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(8):
            image = picture(rng, c, size=(96, 80))
            files = {f"{name}/p{i}.jpg", f"{name}/zz-copy-{i}.jpg", f"{name}/mirror-{i}.png"}
            image.save(data / name / f"p{i}.jpg", quality=92)
            shutil.copy(data / name / f"p{i}.jpg", data / name / f"zz-copy-{i}.jpg")  # the same bytes
            ImageOps.mirror(image).save(data / name / f"mirror-{i}.png")  # found by its hash only
            sets[f"{name}/p{i}.jpg"] = files
    return sets


def test_carving_keeps_planted_copies_together_stratified_and_the_same_for_a_seed(tmp_path, monkeypatch):
    data = tmp_path / "data"
    pictures = planted(data, np.random.default_rng(5))
    project = prepare_and_audit(tmp_path, data, {}, monkeypatch)
    final = read(project, "splits.csv").set_index("path")["split"]
    for files in pictures.values():
        assert len({final[f] for f in files}) == 1, files  # a picture and its copies on one side
    sides = pd.Series({original: final[original] for original in pictures})
    per_class = sides.groupby(sides.index.str.split("/").str[0]).value_counts().unstack()
    assert (per_class["valid"] == 2).all() and (per_class["test"] == 2).all()  # 25% of 8 pictures, every class
    first = (project / "artifacts" / "data" / "splits.csv").read_bytes()
    assert run_stage("audit", project / "params.yaml") == 0
    assert (project / "artifacts" / "data" / "splits.csv").read_bytes() == first  # same seed, same split
    write_params(project / "params.yaml", {"data.root": str(data), "data.layout_dir": None,
                                           "data.carve": {**vars(CARVE), "seed": 1}})
    assert run_stage("audit", project / "params.yaml") == 0
    again = read(project, "splits.csv").set_index("path")["split"]
    assert again.to_dict() != final.to_dict()  # another seed, other pictures
    assert "seed 1" in (project / "artifacts" / "data" / "splits.csv").read_text()


def groups_table(pictures: dict[str, int], *, given: str = "train", copies=(1, 2, 3)) -> pd.DataFrame:
    """path, split, label, group rows: ``pictures[label]`` pictures of each class, 1-3 images each."""
    rows = []
    for label, n in pictures.items():
        for i in range(n):
            for k in range(copies[i % len(copies)]):
                rows.append((f"{label}/{i}-{k}.jpg", given, label, f"{label}/{i}"))
    return pd.DataFrame(rows, columns=["path", "split", "label", "group"])


def test_each_missing_split_gets_the_asked_share_of_each_class_in_whole_pictures():
    groups = groups_table({"a": 10, "b": 20, "c": 7})
    split = assign_splits(groups, carve=CarveParams(valid=0.2, test=0.1, seed=3), given={"train": "x"}).split
    assert groups.assign(split=split).groupby("group")["split"].nunique().max() == 1
    pictures = groups.assign(split=split).drop_duplicates("group").groupby(["label", "split"]).size().unstack()
    # round(share x pictures), half up: test 1, 2, 1 (0.7); valid 2, 4, 1 (1.4)
    assert pictures.to_dict() == {"test": {"a": 1, "b": 2, "c": 1}, "train": {"a": 7, "b": 14, "c": 5},
                                  "valid": {"a": 2, "b": 4, "c": 1}}
    again = assign_splits(groups, carve=CarveParams(valid=0.2, test=0.1, seed=3), given={"train": "x"}).split
    assert again.equals(split)
    other = assign_splits(groups, carve=CarveParams(valid=0.2, test=0.1, seed=4), given={"train": "x"}).split
    assert not other.equals(split)


def test_only_missing_splits_are_carved_and_pictures_already_held_out_stay_put():
    train = groups_table({"a": 8, "b": 8})
    valid = groups_table({"a": 2, "b": 2}, given="valid").assign(group=lambda d: "v" + d["group"])
    leaked = pd.DataFrame([("a/leak-v.jpg", "valid", "a", "a/0")])  # a train picture with a copy in valid
    groups = pd.concat([train, valid, leaked.set_axis(train.columns, axis=1)], ignore_index=True)
    assignment = assign_splits(groups, carve=CarveParams(valid=0.25, test=0.25, seed=0),
                               given={"train": "folder train/", "valid": "folder val/"})
    split = assignment.split
    assert (split[groups["split"] == "valid"] == "valid").all()
    assert set(split[groups["group"] == "a/0"]) == {"train", "valid"}  # reported as a leak, never carved
    assert set(split[groups["split"] == "train"]) == {"train", "test"}
    assert assignment.origins == {"train": "folder train/", "valid": "folder val/",
                                  "test": "carved from train: 25% of each class's pictures (whole pictures), seed 0"}


@pytest.mark.parametrize(("pictures", "carve", "message"), [
    ({"a": 10, "b": 6}, CarveParams(valid=0.2, test=0.05, seed=0),
     r"data.carve.test=0.05 leaves class 'b' with no picture in test: train has 6 picture\(s\) of it, and 0.05 x 6 "
     r"rounds to 0. Raise data.carve.test to at least 0.09"),
    ({"a": 10, "b": 2}, CarveParams(valid=0.4, test=0.4, seed=0),
     r"data.carve.test=0.4 and data.carve.valid=0.4 leave class 'b' with no picture in train: it has 2 picture"),
])
def test_a_share_that_leaves_a_class_without_a_picture_is_refused(pictures, carve, message):
    with pytest.raises(CarveError, match=message):
        assign_splits(groups_table(pictures), carve=carve, given={})


def data_params(**changes) -> DataParams:
    values = {"handle": "someone/cats-and-dogs/versions/3", "root": None, "layout_dir": None, "on_bad_image": "error",
              "num_workers": 1, "carve": CARVE}
    return DataParams(**{**values, **changes})


def test_any_kagglehub_handle_is_read_and_its_split_folders_found_under_the_download(tmp_path, monkeypatch):
    cache = tmp_path / "kagglehub"
    base = cache / "datasets" / "someone" / "cats-and-dogs"
    download = base / "versions" / "3"
    rng = np.random.default_rng(2)
    write_pictures(download / "cats_and_dogs" / "train", rng, 4)
    write_pictures(download / "cats_and_dogs" / "val", rng, 1, copies=0)
    (download / "README.md").write_text("a dataset card")
    (base / "3.complete").touch()  # kagglehub's completion marker for that version
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    layout = resolve_layout(data_params())
    assert layout.root == download / "cats_and_dogs" and layout.folders == {"train": "train", "valid": "val"}
    project = tmp_path / "project"
    project.mkdir()
    params = write_params(project / "params.yaml", {"data.handle": "someone/cats-and-dogs/versions/3",
                                                    "data.layout_dir": None})
    monkeypatch.chdir(project)
    assert run_stage("prepare", params) == 0 and run_stage("audit", params) == 0
    assert set(read(project, "split_manifest.csv")["split"]) == {"train", "valid", "test"}


def test_finding_the_split_folders_refuses_what_it_cannot_decide(tmp_path):
    rng = np.random.default_rng(4)
    write_pictures(tmp_path / "a" / "v1" / "train", rng, 1, copies=0)
    write_pictures(tmp_path / "a" / "v2" / "training", rng, 1, copies=0)
    with pytest.raises(DatasetError, match=r"Split folders are in several places under .*: \['v1', 'v2'\]; set "
                                           r"data.layout_dir"):
        resolve_layout(data_params(root=str(tmp_path / "a")))
    write_pictures(tmp_path / "b" / "val", rng, 1, copies=0)
    write_pictures(tmp_path / "b" / "validation", rng, 1, copies=0)
    write_pictures(tmp_path / "b" / "train", rng, 1, copies=0)
    with pytest.raises(DatasetError, match=r"several valid folders \['val', 'validation'\]"):
        resolve_layout(data_params(root=str(tmp_path / "b")))
    write_pictures(tmp_path / "c" / "training_set" / "inner", rng, 1, copies=0)
    with pytest.raises(DatasetError, match=r"holds neither split folders .* its folders \['training_set'\] hold "
                                           r"folders. Name the split folders in data.splits"):
        resolve_layout(data_params(root=str(tmp_path / "c"), layout_dir=""))
    write_pictures(tmp_path / "e" / "training_set", rng, 1, copies=0)  # a public cats-and-dogs layout
    write_pictures(tmp_path / "e" / "test_set", rng, 1, copies=0)
    with pytest.raises(DatasetError, match=r"these look like data.splits: \{train: training_set, test: test_set\}"):
        resolve_layout(data_params(root=str(tmp_path / "e"), layout_dir=""))
    with pytest.raises(DatasetError, match=r"data.splits.train='trainig': there is no folder"):
        resolve_layout(data_params(root=str(tmp_path / "b"), layout_dir="", splits=SplitNames(train="trainig")))
    write_pictures(tmp_path / "d" / "val", rng, 1, copies=0)
    write_pictures(tmp_path / "d" / "test", rng, 1, copies=0)
    with pytest.raises(DatasetError, match=r"has split folders \['test', 'val'\] but no train folder"):
        resolve_layout(data_params(root=str(tmp_path / "d"), layout_dir=""))


def test_class_folders_inside_wrapper_folders_are_found(tmp_path):
    write_pictures(tmp_path / "download" / "PetImages", np.random.default_rng(6), 1, copies=0)
    (tmp_path / "download" / "__MACOSX" / "PetImages").mkdir(parents=True)  # a zip's macOS shadow: ignored
    layout = resolve_layout(data_params(root=str(tmp_path / "download")))
    assert layout.root == tmp_path / "download" / "PetImages" and layout.folders == {}
