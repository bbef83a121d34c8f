import json
import shutil

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from pipeline.common.params import CarveParams
from pipeline.data.dataset import HASH_COLUMNS, build_manifest, inspect_image, manifest_hashes
from pipeline.data.carving import read_splits, split_origins
from pipeline.data.grouping import (
    confirmed_pairs,
    near_duplicate_pairs,
    original_name,
    picture_groups,
    star_groups,
    thumbnail_correlation,
)
from pipeline.evaluate.leaderboard import held_out_line
from pipeline.data.leakage import audit_dataset
from tests.conftest import picture, run_stage, split_layout, write_params


def perceptual_hashes(paths):
    """The hashes prepare records for these image files, read back as the audit reads them."""
    rows = [inspect_image(p) for p in paths]
    return manifest_hashes(pd.DataFrame(rows, columns=["sha256", "width", "height", *HASH_COLUMNS]))


def test_original_name_follows_the_aug_naming():
    assert original_name("train/happy/aug-31-039.jpg") == "train/happy/039.jpg"
    assert original_name("train/happy/039.jpg") == "train/happy/039.jpg"
    assert original_name("train/happy/augment.jpg") == "train/happy/augment.jpg"


def test_near_duplicates_found_without_naming_hints(tmp_path):
    rng = np.random.default_rng(3)
    originals = [picture(rng, i % 4, size=(160, 120)) for i in range(6)]
    base = originals[0]
    copies = {
        "resized.jpg": base.resize((80, 60)),
        "reencoded.jpg": base,
        "mirrored.png": ImageOps.mirror(base),
        "cropped.jpg": base.crop((4, 3, 156, 117)),
    }
    paths = []
    for i, image in enumerate(originals):
        paths.append(tmp_path / f"original_{i}.png")
        image.save(paths[-1])
    for name, image in copies.items():
        paths.append(tmp_path / name)
        image.save(paths[-1], **({"quality": 60} if name.endswith(".jpg") else {}))
    hashes = perceptual_hashes(paths)
    confirmed = confirmed_pairs(hashes, 11, 0.85)[0]
    pairs = {tuple(p) for p in confirmed.tolist()}
    copy_indices = range(len(originals), len(paths))
    assert all((0, j) in pairs for j in copy_indices), pairs
    # distinct pictures are never linked
    assert not any(i < len(originals) and j < len(originals) for i, j in pairs)
    groups = picture_groups([p.name for p in paths], star_groups(len(paths), confirmed))
    assert len(set(groups)) == len(originals)


def _same_gradient_signs(magnitudes: np.ndarray, signs: np.ndarray) -> Image.Image:
    """A picture whose 9x8 difference hash is set by ``signs`` alone: steps of those signs and these sizes."""
    grid = np.concatenate([np.full((8, 1), 128.0), 128 + np.cumsum(signs * magnitudes, axis=1)], axis=1)
    grid = (grid - grid.min()) / (grid.max() - grid.min()) * 235 + 10
    return Image.fromarray(grid.astype(np.uint8)).resize((180, 160), Image.Resampling.NEAREST).convert("RGB")


def test_a_hash_candidate_that_the_thumbnails_do_not_confirm_is_not_linked(tmp_path):
    rng = np.random.default_rng(1)
    signs, magnitudes = rng.choice([-1, 1], size=(8, 8)), rng.uniform(3, 60, size=(8, 8))
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    _same_gradient_signs(magnitudes, signs).save(paths[0])
    _same_gradient_signs(63 - magnitudes, signs).save(paths[1])  # the same gradient signs, other pixels
    hashes = perceptual_hashes(paths)
    assert near_duplicate_pairs(hashes, 11).tolist() == [[0, 1]]  # within the hash radius: a candidate
    assert thumbnail_correlation(hashes, np.array([[0, 1]]))[0] < 0.85
    confirmed, candidates = confirmed_pairs(hashes, 11, 0.85)
    assert candidates == 1 and len(confirmed) == 0
    assert picture_groups(["a.png", "b.png"], star_groups(2, confirmed)) == ["a.png", "b.png"]


def test_links_do_not_chain_strangers_into_one_picture():
    # A~B, B~C, C~D, D~E: a chain whose ends are far apart
    chain = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    groups = star_groups(5, chain)
    assert not any(0 in g and 4 in g for g in groups)
    linked = {tuple(pair) for pair in chain.tolist()} | {tuple(pair[::-1]) for pair in chain.tolist()}
    for g in groups:  # every member is linked to one member of its group, the centre, that all others are linked to
        assert any(all(m == c or (c, m) in linked for m in g) for c in g), g
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3, 4]]
    # a copy of both ends' picture (B near A and C) is the centre of all three: the rule allows it
    assert star_groups(3, np.array([[0, 1], [1, 2]])) == [[0, 1, 2]]
    paths = [f"{c}.jpg" for c in "abcde"]
    assert len(set(picture_groups(paths, groups))) == 2


def test_picture_groups_merge_augmented_copies_with_their_original():
    paths = ["train/a/01.jpg", "train/a/aug-1-01.jpg", "train/a/aug-2-01.jpg", "train/a/02.jpg",
             "train/b/aug-5-07.jpg", "train/b/aug-6-07.jpg"]  # 07.jpg itself absent
    groups = picture_groups(paths, np.empty((0, 2), dtype=np.int64))
    assert groups[:3] == ["train/a/01.jpg"] * 3
    assert groups[3] == "train/a/02.jpg"
    assert groups[4] == groups[5]


def test_audit_counts_pictures_and_finds_exact_duplicates(dataset):
    layout = dataset / "Master Folder"
    shutil.copy(layout / "train" / "happy" / "aug-130-013.jpg", layout / "train" / "happy" / "aug-999-013.jpg")
    manifest = build_manifest(split_layout(layout))[0]
    result = audit_dataset(manifest, manifest_hashes(manifest), near_duplicate_bits=11,
                           near_duplicate_correlation=0.85, carve=CarveParams(valid=0.15, test=0.15, seed=0),
                           given={})  # the data has all three splits: nothing is carved
    report = result.report
    assert report["images_per_split"] == {"train": 49, "valid": 8, "test": 8}
    assert report["groups_per_split"] == {"train": 16, "valid": 8, "test": 8}
    assert report["exact_duplicate_groups"] == [["train/happy/aug-130-013.jpg", "train/happy/aug-999-013.jpg"]]
    assert report["cross_split_leaks"] == []


def _leak_and_prepare(dataset, tmp_path, monkeypatch, on_leak: str):
    """A mirrored, resized copy of a train picture slipped into test under another name; prepare run on it."""
    layout = dataset / "Master Folder"
    with Image.open(layout / "train" / "Sad" / "009.jpg") as image:
        ImageOps.mirror(image).resize((84, 72)).save(layout / "test" / "Sad" / "zz_new.jpg", quality=80)
    params = write_params(tmp_path / "params.yaml", {"data.root": str(dataset), "audit.on_leak": on_leak})
    monkeypatch.chdir(tmp_path)
    assert run_stage("prepare", params) == 0
    return params


def test_injected_train_test_leak_fails_the_stage_after_writing_the_report(dataset, tmp_path, monkeypatch):
    params = _leak_and_prepare(dataset, tmp_path, monkeypatch, "error")
    assert run_stage("audit", params) == 1
    report = json.loads((tmp_path / "artifacts" / "audit.json").read_text())
    assert report["cross_split_leaks"][0]["splits"] == ["train", "test"]
    assert "test/Sad/zz_new.jpg" in report["cross_split_leaks"][0]["paths"]
    assert "LEAK" in (tmp_path / "artifacts" / "audit.md").read_text()
    write_params(params, {"data.root": str(dataset), "audit.on_leak": "warn"})
    assert run_stage("audit", params) == 0


def test_on_leak_drop_removes_the_leaked_copy_from_test_and_says_so(dataset, tmp_path, monkeypatch):
    assert run_stage("audit", _leak_and_prepare(dataset, tmp_path, monkeypatch, "drop")) == 0
    data = tmp_path / "artifacts" / "data"
    splits = read_splits(data / "splits.csv")
    row = splits[splits["path"] == "test/Sad/zz_new.jpg"].iloc[0]
    assert row["split"] == "test" and row["why"].startswith("dropped:") and "is in train" in row["why"]
    assert "test/Sad/zz_new.jpg" not in pd.read_csv(data / "split_manifest.csv")["path"].tolist()
    report = json.loads((tmp_path / "artifacts" / "audit.json").read_text())
    assert report["dropped"] == ["test/Sad/zz_new.jpg"] and report["images_per_split"]["test"] == 8
    assert "1 image(s) of them were dropped" in (tmp_path / "artifacts" / "audit.md").read_text()
    origins = split_origins(splits)
    assert origins["test"]["images"] == 8 and origins["test"]["dropped"] == 1
    assert "(1 dropped: their picture is in an earlier split)" in held_out_line(origins)
