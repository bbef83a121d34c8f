import json
import shutil

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.dataset import build_manifest
from pipeline.data.grouping import near_duplicate_pairs, original_name, perceptual_hashes, picture_groups
from pipeline.data.leakage import audit_dataset
from tests.conftest import picture, run_stage, write_params


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
    pairs = {tuple(p) for p in near_duplicate_pairs(hashes, 10).tolist()}
    copy_indices = range(len(originals), len(paths))
    assert all((0, j) in pairs for j in copy_indices), pairs
    # distinct pictures are never linked
    assert not any(i < len(originals) and j < len(originals) for i, j in pairs)
    groups = picture_groups([p.name for p in paths], np.array(sorted(pairs)))
    assert len(set(groups)) == len(originals)


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
    manifest = build_manifest(layout)[0]
    result = audit_dataset(manifest, perceptual_hashes(layout / p for p in manifest["path"]), near_duplicate_bits=10)
    report = result.report
    assert report["images_per_split"] == {"train": 49, "valid": 8, "test": 8}
    assert report["groups_per_split"] == {"train": 16, "valid": 8, "test": 8}
    assert report["exact_duplicate_groups"] == [["train/happy/aug-130-013.jpg", "train/happy/aug-999-013.jpg"]]
    assert report["cross_split_leaks"] == []


def test_injected_train_test_leak_fails_the_stage_after_writing_the_report(dataset, tmp_path, monkeypatch):
    layout = dataset / "Master Folder"
    # a mirrored, resized copy of a train picture slipped into test under another name
    with Image.open(layout / "train" / "Sad" / "009.jpg") as image:
        ImageOps.mirror(image).resize((84, 72)).save(layout / "test" / "Sad" / "zz_new.jpg", quality=80)
    params = write_params(tmp_path / "params.yaml", {"data.root": str(dataset), "audit.on_leak": "error"})
    monkeypatch.chdir(tmp_path)
    assert run_stage("prepare", params) == 0
    assert run_stage("audit", params) == 1
    report = json.loads((tmp_path / "artifacts" / "audit.json").read_text())
    assert report["cross_split_leaks"][0]["splits"] == ["test", "train"]
    assert "test/Sad/zz_new.jpg" in report["cross_split_leaks"][0]["paths"]
    assert "LEAK" in (tmp_path / "artifacts" / "audit.md").read_text()
    write_params(params, {"data.root": str(dataset), "audit.on_leak": "warn"})
    assert run_stage("audit", params) == 0
