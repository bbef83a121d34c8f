import hashlib
import os
import shutil

import pytest

from pipeline.common.params import CarveParams, DataParams
from pipeline.data.dataset import DatasetError, build_manifest, resolve_layout
from tests.conftest import split_layout

HANDLE = "anshtanwar/pets-facial-expression-dataset/versions/11"


def data_params(root: str | None) -> DataParams:
    return DataParams(handle=HANDLE, root=root, layout_dir="Master Folder", on_bad_image="error", num_workers=1,
                      carve=CarveParams(valid=0.15, test=0.15, seed=0))


def test_manifest_describes_every_image_in_order(dataset):
    root = dataset / "Master Folder"
    manifest = build_manifest(split_layout(root))[0]
    assert list(manifest.columns) == ["path", "split", "label", "sha256", "width", "height",
                                      "dhash", "dhash_mirrored", "informative", "thumbnail"]
    assert manifest["split"].unique().tolist() == ["train", "valid", "test"]
    assert len(manifest) == 4 * 4 * 3 + 4 * 2 * 2
    row = manifest.iloc[0]
    assert row["sha256"] == hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
    assert (row["width"], row["height"]) == (56, 48)
    assert manifest.equals(build_manifest(split_layout(root))[0])


def test_local_root_is_used_and_missing_root_is_named(dataset, tmp_path):
    assert resolve_layout(data_params(str(dataset))).root == dataset / "Master Folder"
    with pytest.raises(DatasetError, match="data.root='.*nowhere' is not a folder"):
        resolve_layout(data_params(str(tmp_path / "nowhere")))


def test_kagglehub_uses_a_pre_seeded_cache_offline(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "kagglehub"
    base = cache / "datasets" / "anshtanwar" / "pets-facial-expression-dataset"
    shutil.copytree(dataset, base / "versions" / "11")
    (base / "11.complete").touch()  # kagglehub's completion marker for that version
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    root = resolve_layout(data_params(None)).root
    assert root == base / "versions" / "11" / "Master Folder"


def test_unreachable_kagglehub_says_what_to_do_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # fail fast even where a network exists
    with pytest.raises(DatasetError, match="kagglehub could not fetch .*set data.root"):
        resolve_layout(data_params(None))


def test_missing_split_is_named(dataset):
    shutil.rmtree(dataset / "Master Folder" / "valid")
    with pytest.raises(DatasetError, match=r"Split folder .*valid is missing"):
        build_manifest(split_layout(dataset / "Master Folder"))[0]


def test_empty_class_folder_is_named(dataset):
    folder = dataset / "Master Folder" / "test" / "Sad"
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DatasetError, match=r"Class folder .*test/Sad is empty"):
        build_manifest(split_layout(dataset / "Master Folder"))[0]


def test_unreadable_image_is_named(dataset):
    bad = dataset / "Master Folder" / "train" / "Angry" / "broken.jpg"
    bad.write_bytes((dataset / "Master Folder" / "train" / "Angry" / "001.jpg").read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"broken.jpg is not a readable image"):
        build_manifest(split_layout(dataset / "Master Folder"))[0]


def test_non_image_file_is_named_but_os_clutter_is_skipped(dataset):
    folder = dataset / "Master Folder" / "train" / "Angry"
    (folder / ".DS_Store").write_bytes(b"\0\0")
    n = len(build_manifest(split_layout(dataset / "Master Folder"))[0])
    assert n == 64
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes.txt is not an image file"):
        build_manifest(split_layout(dataset / "Master Folder"))[0]


def test_class_only_in_test_is_an_error_and_missing_in_test_a_warning(dataset):
    layout = dataset / "Master Folder"
    shutil.copytree(layout / "test" / "Sad", layout / "test" / "Surprised")
    with pytest.raises(DatasetError, match=r"\['Surprised'\] appear in test but not in train"):
        build_manifest(split_layout(layout))[0]
    shutil.rmtree(layout / "test" / "Surprised")
    shutil.rmtree(layout / "test" / "Sad")
    with pytest.warns(UserWarning, match=r"\['Sad'\] of train have no images in test"):
        build_manifest(split_layout(layout))[0]


def test_skip_mode_leaves_bad_files_out_and_lists_them(dataset):
    layout = dataset / "Master Folder"
    (layout / "train" / "Sad" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (layout / "test" / "happy" / "readme.txt").write_text("notes")
    with pytest.raises(DatasetError, match=r"readme.txt is not an image file.*set data.on_bad_image: skip"):
        build_manifest(split_layout(layout))
    (layout / "test" / "happy" / "readme.txt").rename(dataset / "readme.txt")
    with pytest.raises(DatasetError, match=r"broken.jpg is not a readable image .*set data.on_bad_image: skip"):
        build_manifest(split_layout(layout))
    (dataset / "readme.txt").rename(layout / "test" / "happy" / "readme.txt")
    with pytest.warns(UserWarning, match=r"Skipped 2 bad file\(s\)"):
        manifest, skipped = build_manifest(split_layout(layout), on_bad_image="skip")
    assert len(manifest) == 64 and "train/Sad/broken.jpg" not in set(manifest["path"])
    assert sorted(skipped["path"]) == ["test/happy/readme.txt", "train/Sad/broken.jpg"]
    assert skipped.set_index("path").loc["test/happy/readme.txt", "reason"] == "not an image file"


def test_skip_mode_still_refuses_a_class_left_empty(dataset):
    folder = dataset / "Master Folder" / "valid" / "Other"
    for image in folder.iterdir():
        image.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"valid/Other has no readable image left after skipping"):
        build_manifest(split_layout(dataset / "Master Folder"), on_bad_image="skip")


def test_stray_file_outside_class_folders_is_named_or_listed(dataset):
    layout = dataset / "Master Folder"
    (layout / "train" / "Thumbs.db").write_bytes(b"\0")  # OS clutter: ignored
    (layout / "train" / "stray.jpg").write_bytes((layout / "train" / "Sad" / "009.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"Stray file .*train/stray.jpg sits outside any class folder"):
        build_manifest(split_layout(layout))
    with pytest.warns(UserWarning):
        manifest, skipped = build_manifest(split_layout(layout), on_bad_image="skip")
    assert skipped["path"].tolist() == ["train/stray.jpg"] and len(manifest) == 64


def test_nested_folder_inside_a_class_is_named(dataset):
    (dataset / "Master Folder" / "train" / "Sad" / "more").mkdir()
    with pytest.raises(DatasetError, match=r"Unexpected folder .*train/Sad/more"):
        build_manifest(split_layout(dataset / "Master Folder"))


def test_stray_files_and_folders_next_to_the_splits_follow_one_rule(dataset):
    """Both are bad entries: an error naming them, or, in skip mode, rows of skipped.csv (never silence)."""
    layout = dataset / "Master Folder"
    (layout / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"Stray file .*notes.txt sits next to the split folders"):
        build_manifest(split_layout(layout))
    (layout / "notes.txt").unlink()
    (layout / "extra").mkdir()
    with pytest.raises(DatasetError, match=r"Stray folder .*extra sits next to the split folders"):
        build_manifest(split_layout(layout))
    (layout / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"Skipped 2 bad file\(s\)"):
        _, skipped = build_manifest(split_layout(layout), on_bad_image="skip")
    assert skipped.set_index("path")["reason"].to_dict() == {"extra": "a folder next to the split folders",
                                                             "notes.txt": "a file next to the split folders"}


def test_a_fifo_named_like_an_image_is_a_bad_entry_never_opened(dataset):
    fifo = dataset / "Master Folder" / "train" / "Sad" / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=r"pipe.jpg is not a regular file \(a FIFO\)"):
        build_manifest(split_layout(dataset / "Master Folder"))  # returns at once: a FIFO would block a reader for ever
    with pytest.warns(UserWarning, match=r"Skipped 1 bad file"):
        _, skipped = build_manifest(split_layout(dataset / "Master Folder"), on_bad_image="skip")
    assert skipped["path"].tolist() == ["train/Sad/pipe.jpg"]


def test_an_image_of_extreme_aspect_ratio_is_refused_for_the_resize_extract_will_do(dataset):
    from PIL import Image

    Image.new("L", (1, 50000)).save(dataset / "Master Folder" / "train" / "Sad" / "thin.png")
    layout = split_layout(dataset / "Master Folder")
    with pytest.raises(DatasetError, match=r"thin.png has an extreme aspect ratio \(1x50000\): resized to 255 "
                                           r"pixels on its shorter side it would be 255x12,750,000"):
        build_manifest(layout, resize=255)
    manifest, _ = build_manifest(layout)  # no resize given: only the pixel limit applies
    assert "train/Sad/thin.png" in set(manifest["path"])


def test_a_list_reaches_no_image_outside_the_dataset_folder_and_skip_mode_says_why(dataset, tmp_path):
    """Paths in a CSV list are data: '..', an absolute path or a link that leads out of the dataset folder is
    refused, or skipped with the reason; one inside it, absolute or through '..' from the list's folder, is read."""
    from pipeline.data.dataset import scan_list

    root = dataset / "Master Folder"
    images = sorted((root / "train" / "Sad").glob("*.jpg"))
    angry = sorted((root / "train" / "Angry").glob("*.jpg"))[0]
    shutil.copy(images[0], tmp_path / "outside.jpg")
    (root / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "lists").mkdir()
    rows = [f"../train/Sad/{images[1].name},Sad", f"{images[2]},Sad", f"../train/Angry/{angry.name},Angry",
            "../../../outside.jpg,Sad", f"{tmp_path / 'outside.jpg'},Sad", "../link.jpg,Sad"]
    (root / "lists" / "images.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    escaped = rows[3].split(",")[0]
    with pytest.raises(DatasetError, match=f"line 5: {escaped} lies outside the dataset folder {root.resolve()}"):
        scan_list(root / "lists" / "images.csv", root / "lists", within=root)
    skipped: list[tuple[str, str]] = []
    frame = scan_list(root / "lists" / "images.csv", root / "lists", skipped=skipped, within=root)
    assert sorted(frame["path"]) == sorted(r.split(",")[0] for r in rows[:3])
    assert [(path, why.split(" (")[0]) for path, why in skipped] == \
        [(r.split(",")[0], f"lies outside the dataset folder {root.resolve()}") for r in rows[3:]]
    assert skipped[-1][1].endswith("(listed on line 7)")
