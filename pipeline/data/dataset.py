"""Find the image dataset and describe it as a manifest (one row per image).

The manifest holds a content hash per image, so DVC re-runs downstream stages
when any image changes, and its rows fix the order every later array follows.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.common.checks import known_splits, require_columns
from pipeline.common.io import read_csv, read_json
from pipeline.common.params import DataParams, SplitNames
from pipeline.data.grouping import THUMBNAIL, Hashes, image_hashes
from pipeline.data.images import ImageError, load_rgb, read_image_bytes, resized_too_large
from pipeline.data.layouts import (
    IMAGE_SUFFIXES,
    SPLITS,
    DatasetError,
    Layout,
    find_root,
    is_clutter,
    read_list,
    split_folders,
)
from pipeline.data.pool import ordered_map

log = logging.getLogger(__name__)


MANIFEST_COLUMNS = ["path", "split", "label", "sha256", "width", "height"]
# What the audit needs from the pixels, computed by prepare in the same decode: the 64-bit
# difference hash (16 hex digits), that of the mirror image, and whether it carries information.
HASH_COLUMNS = ["dhash", "dhash_mirrored", "informative", "thumbnail"]  # thumbnail: base64 of THUMBNAIL² grey bytes


class BadImage(DatasetError):
    """One file that cannot be used as an image; ``why`` completes a sentence about it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} {why}.")
        self.why = why


def dataset_folder(data: DataParams) -> Path:
    """The dataset as it came: ``data.root`` (a local copy) wins; otherwise kagglehub fetches the pinned
    handle, or reuses its cache (``KAGGLEHUB_CACHE``) without network."""
    if data.root is not None:
        base = Path(data.root).expanduser()
        if not base.is_dir():
            raise DatasetError(f"data.root={data.root!r} is not a folder; point it at a copy of the dataset.")
        return base
    import kagglehub

    try:
        return Path(kagglehub.dataset_download(data.handle))
    except Exception as err:  # kagglehub raises requests/HTTP errors of many kinds
        raise DatasetError(
            f"kagglehub could not fetch {data.handle!r} ({type(err).__name__}: {err}). "
            "Offline, set data.root to a local copy in Kaggle's layout, or pre-seed the "
            "kagglehub cache (KAGGLEHUB_CACHE) as the README describes."
        ) from err


def dataset_origin(data: DataParams) -> dict[str, str | None]:
    """What the data is, for ``source.json`` and the report: the Kaggle handle kagglehub fetched, or the local
    folder or list that ``data.root`` / ``data.list`` named (then no handle: it was not used)."""
    if data.list is not None:
        return {"dataset": f"local list {data.list}", "handle": None}
    if data.root is not None:
        return {"dataset": f"local folder {data.root}", "handle": None}
    return {"dataset": f"Kaggle {data.handle}", "handle": data.handle}


def resolve_layout(data: DataParams) -> Layout:
    """Where the images are and how their splits are given: a CSV list (``data.list``), or folders under
    ``data.layout_dir`` (found under the dataset when it is null)."""
    if data.list is not None:
        listed = Path(data.list).expanduser()
        within = None if listed.is_absolute() else dataset_folder(data)  # None: the list's own folder
        csv = listed if within is None else within / listed
        if not csv.is_file():
            raise DatasetError(f"data.list={data.list!r}: {csv} is not a file; point data.list at the CSV that lists "
                               "the images (relative to the dataset folder, or absolute).")
        return Layout(root=csv.parent, folders={}, list_file=csv, names=data.splits, within=within or csv.parent)
    base = dataset_folder(data)
    if data.layout_dir is None:
        root = find_root(base, data.splits)
    else:
        root = base / data.layout_dir
        if not root.is_dir():
            raise DatasetError(
                f"{root} does not exist: expected data.layout_dir={data.layout_dir!r} inside {base}; set it to "
                "the folder that holds the split (or class) folders, or to null to have it found."
            )
    return Layout(root=root, folders=split_folders(root, data.splits))


def scan_layout(root: Path, folders: dict[str, str], *, skipped: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """List ``root/<split folder>/<class>/<image>`` files as rows of (path, split, label), ``folders`` mapping
    each split to its folder; with no split folders (``folders`` empty), ``root/<class>/<image>``, every image
    train.

    A non-image file is an error, or, when a ``skipped`` list is given, recorded there.
    """
    rows = []
    classes_by_split: dict[str, list[str]] = {}

    def bad_entry(entry: Path, message: str, reason: str) -> None:
        """An error naming ``entry``, or, in skip mode, a row of skipped.csv."""
        if skipped is None:
            raise DatasetError(message)
        skipped.append((entry.relative_to(root).as_posix(), reason))

    names = list(folders.values())
    for stray in sorted(p for p in root.iterdir() if folders and p.name not in names and not is_clutter(p)):
        kind = "folder" if stray.is_dir() else "file"
        bad_entry(stray, f"Stray {kind} {stray} sits next to the split folders {names}; move it away, name the "
                  "split folders in data.splits, or set data.on_bad_image: skip.",
                  f"a {kind} next to the split folders")
    for split, split_dir in ({s: root / name for s, name in folders.items()} or {"train": root}).items():
        if not split_dir.is_dir():
            raise DatasetError(f"Split folder {split_dir} is missing; expected {names} under {root}.")
        for stray in sorted(p for p in split_dir.iterdir() if not p.is_dir() and not is_clutter(p)):
            bad_entry(stray, f"Stray file {stray} sits outside any class folder; move it into one, or away, or set "
                      "data.on_bad_image: skip.", "outside any class folder")
        classes_by_split[split] = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not is_clutter(p))
        if not classes_by_split[split]:
            raise DatasetError(f"{'Split folder' if folders else 'Dataset folder'} {split_dir} has no class folders.")
        for class_dir in (split_dir / name for name in classes_by_split[split]):
            images = []
            for file in sorted(class_dir.iterdir()):
                if is_clutter(file):
                    log.info("skipping operating-system metadata file %s", file)
                elif file.is_dir():
                    bad_entry(file, f"Unexpected folder {file}: class folders must hold image files only; move "
                              "it out, or set data.on_bad_image: skip.", "a folder inside a class folder")
                elif file.suffix.lower() not in IMAGE_SUFFIXES:
                    bad_entry(file, f"{file} is not an image file (allowed: {sorted(IMAGE_SUFFIXES)}); move it out "
                              "of the class folder, or set data.on_bad_image: skip.", "not an image file")
                else:
                    images.append(file)
            if not images:
                raise DatasetError(f"Class folder {class_dir} is empty.")
            rows += [(f.relative_to(root).as_posix(), split, class_dir.name) for f in images]
    _check_classes(classes_by_split)
    return pd.DataFrame(rows, columns=["path", "split", "label"])


def scan_list(list_file: Path, root: Path, *, skipped: list[tuple[str, str]] | None = None,
              names: SplitNames | None = None, within: Path | None = None) -> pd.DataFrame:
    """The images of a CSV list (``layouts.read_list``) as rows of (path, split, label), ordered by split,
    class, path; a listed file that is missing, not an image, or outside ``within`` (the dataset folder,
    default ``root``: a list is data, so it may not reach past it with ``..``, an absolute path or a link)
    is an error naming its line, or, when a ``skipped`` list is given, recorded there."""
    listed = read_list(list_file, names)
    inside = Path(within or root).resolve()
    keep = []
    for path, line in zip(listed["path"], listed["line"]):
        file = root / path
        problem = ("does not exist" if not (file.exists() or file.is_symlink()) else
                   f"lies outside the dataset folder {inside} (a '..', an absolute path or a link leads out)"
                   if not file.resolve().is_relative_to(inside) else
                   f"is not an image file (allowed: {sorted(IMAGE_SUFFIXES)})" if file.suffix.lower() not in
                   IMAGE_SUFFIXES else None)
        if problem and skipped is None:
            raise DatasetError(f"Image list {list_file} line {line}: {path} {problem} (looked for {file}); fix the "
                               "row, or set data.on_bad_image: skip.")
        if problem:
            skipped.append((path, f"{problem.split(' (')[0]} (listed on line {line})"))
        keep.append(not problem)
    frame = listed[keep].drop(columns="line")
    order = frame["split"].map(SPLITS.index)
    frame = frame.assign(order=order).sort_values(["order", "label", "path"], kind="stable").drop(columns="order")
    _check_classes({split: sorted(set(part["label"])) for split, part in frame.groupby("split", sort=False)})
    return frame.reset_index(drop=True)


def _check_classes(classes_by_split: dict[str, list[str]]) -> None:
    train = set(classes_by_split.get("train", []))
    for split, names in classes_by_split.items():
        extra = sorted(set(names) - train)
        if extra:
            raise DatasetError(f"Class(es) {extra} appear in {split} but not in train; no model can predict them.")
        absent = sorted(train - set(names))
        if absent:
            warnings.warn(f"Class(es) {absent} of train have no images in {split}.", stacklevel=3)


def inspect_image(path: Path, *, resize: int | None = None) -> tuple[str, int, int, str, str, bool, str]:
    """Everything later stages need from an image's bytes and pixels, from one read and one decode.

    (sha256, width, height, dhash, mirrored dhash, informative, thumbnail); a file that cannot be read or
    decoded raises ``BadImage``, and so does, with ``resize`` (the extraction's), one whose resized
    size is beyond the bound extract and predict apply.
    """
    try:
        data = read_image_bytes(path)
        image = load_rgb(data)
    except ImageError as err:  # unreadable, not a regular file (a FIFO, a device), or not a decodable image
        raise BadImage(path, str(err)) from err
    refused = resized_too_large(image.size, resize) if resize else None
    if refused:
        raise BadImage(path, refused)
    plain, mirrored, informative, thumbnail = image_hashes(image)
    return (hashlib.sha256(data).hexdigest(), *image.size, f"{plain:016x}", f"{mirrored:016x}", informative,
            base64.b64encode(thumbnail).decode("ascii"))


def _inspect_or_why(path: Path, resize: int | None = None) -> tuple | str:
    """``inspect_image`` in a worker: a bad file comes back as its reason, to be handled in manifest order."""
    try:
        return inspect_image(path, resize=resize)
    except BadImage as err:
        return err.why


def build_manifest(layout: Layout, *, on_bad_image: str = "error", workers: int = 1,
                   resize: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Scan ``layout`` and describe every image; rows ordered by split, class, path. ``resize``: the extraction's
    resize size, so an image extract would refuse is caught here, before extraction.

    Each image is read and decoded once, on ``workers`` processes; the results are taken
    in manifest order, so the output (and the first bad file reported) does not depend
    on the worker count. Returns the manifest and the files skipped (path, reason):
    with ``on_bad_image="error"`` the first bad file raises instead, so none are.
    """
    root = layout.root
    skipped: list[tuple[str, str]] | None = [] if on_bad_image == "skip" else None
    if layout.list_file is not None:
        frame = scan_list(layout.list_file, root, skipped=skipped, names=layout.names, within=layout.within)
    else:
        frame = scan_layout(root, layout.folders, skipped=skipped)
    scanned = frame[["split", "label"]].drop_duplicates()
    described, keep = [], []
    # closing: an error, Ctrl-C or the first bad file stops the workers before it is reported
    inspect = functools.partial(_inspect_or_why, resize=resize)
    with contextlib.closing(ordered_map(inspect, (root / p for p in frame["path"]), workers)) as results:
        for path, result in zip(frame["path"], tqdm(results, total=len(frame), desc="reading images", unit="img")):
            keep.append(not isinstance(result, str))  # a string: why the file is bad
            if keep[-1]:
                described.append(result)
            elif skipped is None:
                raise DatasetError(f"{root / path} {result}. Fix or remove it, or set data.on_bad_image: skip.")
            else:
                skipped.append((path, result))
    frame = frame[keep].reset_index(drop=True)
    columns = ["sha256", "width", "height", *HASH_COLUMNS]
    frame[columns] = pd.DataFrame(described, index=frame.index, columns=columns, dtype=object)
    present = set(zip(frame["split"], frame["label"]))
    for split, label in scanned.itertuples(index=False):
        if (split, label) not in present:
            raise DatasetError(f"{layout.place(split, label)} has no readable image left after skipping.")
    skipped_frame = pd.DataFrame(skipped or [], columns=["path", "reason"])
    if len(skipped_frame):
        warnings.warn(f"Skipped {len(skipped_frame)} bad file(s) (data.on_bad_image: skip): "
                      f"{skipped_frame['path'].tolist()[:5]}", stacklevel=2)
    log.info("manifest: %s", frame.groupby("split").size().to_dict())
    types = {"width": int, "height": int, "informative": bool}
    return frame[MANIFEST_COLUMNS + HASH_COLUMNS].astype(types), skipped_frame


def manifest_hashes(manifest: pd.DataFrame) -> Hashes:
    """The perceptual hashes prepare recorded in the manifest (no image is decoded again)."""
    missing = [c for c in HASH_COLUMNS if c not in manifest.columns]
    if missing:
        raise DatasetError(f"The manifest lacks column(s) {missing}: it was written before prepare recorded "
                           "perceptual hashes; run the prepare stage (dvc repro prepare).")

    def as_uint64(column: str) -> np.ndarray:
        try:
            return np.array([int(h, 16) for h in manifest[column]], dtype=np.uint64)
        except (TypeError, ValueError, OverflowError) as err:
            raise DatasetError(f"The manifest's {column} column holds a value that is not a 64-bit hex hash "
                               f"({err}); run the prepare stage (dvc repro prepare).") from err

    if manifest["informative"].dtype != bool:
        raise DatasetError("The manifest's informative column must hold True or False only; "
                           "run the prepare stage (dvc repro prepare).")
    side = THUMBNAIL * THUMBNAIL
    encoded = manifest["thumbnail"].astype(str)
    if len(encoded) and not encoded.str.len().eq(side * 4 // 3).all():
        raise DatasetError(f"The manifest's thumbnail column holds a value that is not {side} base64-encoded bytes; "
                           "run the prepare stage (dvc repro prepare).")
    try:  # one decode for the column: each value is whole 3-byte blocks, so the values join without padding
        thumbnails = np.frombuffer(base64.b64decode("".join(encoded), validate=True), dtype=np.uint8)
    except ValueError as err:
        raise DatasetError(f"The manifest's thumbnail column is not base64 ({err}); run the prepare stage "
                           "(dvc repro prepare).") from err
    return Hashes(plain=as_uint64("dhash"), mirrored=as_uint64("dhash_mirrored"),
                  informative=manifest["informative"].to_numpy(dtype=bool), thumbnails=thumbnails.reshape(-1, side))


def read_manifest(path: Path) -> pd.DataFrame:
    """Load a manifest written by ``prepare`` (or the audit's, with the final splits), checking its columns."""
    fix = "run the stages that write it (dvc repro audit: prepare, then audit)."
    frame = read_csv(path, what="Manifest", fix=fix, error=DatasetError,
                     dtype={"path": str, "split": str, "label": str, "sha256": str, "dhash": str,
                            "dhash_mirrored": str, "thumbnail": str}, keep_default_na=False)
    require_columns(frame, path, MANIFEST_COLUMNS, fix=fix)
    known_splits(frame, path, SPLITS, fix=fix)
    return frame


def read_source(path: Path) -> dict:
    """``source.json``, written by prepare: where the images are (``root``), the dataset handle and how each
    split the data came with was found (``splits``: split -> "folder val/", ...)."""
    source = read_json(path, what="Source file", fix="run the prepare stage (dvc repro prepare).", error=DatasetError)
    if not isinstance(source, dict) or not isinstance(source.get("root"), str):
        raise DatasetError(f"Source file {path} has no \"root\" (the folder holding the split folders); "
                           "run the prepare stage (dvc repro prepare).")
    splits = source.get("splits", {})
    if not isinstance(splits, dict) or not all(k in SPLITS and isinstance(v, str) for k, v in splits.items()):
        raise DatasetError(f"Source file {path} has \"splits\" {splits!r}; it maps each of {list(SPLITS)} the "
                           "data came with to how it was found. Run the prepare stage (dvc repro prepare).")
    return source
