"""Where a dataset's images are and which split each one came with.

Five layouts are read (docs/data-and-layouts.md shows the params of each):

- ``<root>/{train,valid,test}/<class>/``: all three splits;
- ``<root>/{train,val}/<class>/``: no test folder (the ImageFolder convention);
- ``<root>/{train,test}/<class>/``: no validation folder;
- ``<root>/<class>/``: no split folders at all (every image comes as train);
- a CSV list ``path,label[,split]`` instead of folders.

Split folders go by their common names in any case (``SPLIT_NAMES``) unless ``data.splits`` names them.
A split the data lacks is not guessed here: the audit carves it from train, by whole picture.
Nothing here reads an image; listing folders costs one directory read each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.common.errors import PipelineError
from pipeline.common.io import read_csv
from pipeline.common.params import SplitNames

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# The names each split goes by in public datasets (Hugging Face's imagefolder, torchvision's ImageFolder),
# matched in any case when data.splits is not set.
SPLIT_NAMES = {"train": ("train", "training"), "valid": ("valid", "val", "validation", "dev"),
               "test": ("test", "testing", "eval")}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
# Files and folders that operating systems drop into datasets; skipped with a log line, never read.
OS_CLUTTER = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx"})
LIST_COLUMNS = ("path", "label")  # and, optionally, "split"
SEARCH_DEPTH = 4  # how many folders deep the split folders are looked for under a dataset


def is_clutter(path: Path) -> bool:
    """Operating-system metadata: .DS_Store, Thumbs.db, desktop.ini, __MACOSX, and macOS's ``._<name>`` forks."""
    return path.name.lower() in OS_CLUTTER or path.name.startswith("._")


class DatasetError(PipelineError):
    """The dataset on disk does not have the expected layout or content."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the images are: ``root`` (manifest paths are relative to it) and how their splits are given."""

    root: Path
    # split -> its folder under root; empty: class folders directly under root, every image train
    folders: dict[str, str]
    list_file: Path | None = None  # a CSV list instead of folders (root is its folder)
    names: SplitNames | None = None  # data.splits: how the list's split column names the splits
    within: Path | None = None  # the folder a list's paths must stay inside: the dataset's (its own, if absolute)

    def place(self, split: str, label: str) -> str:
        """Where the images of one class of one split are, for messages: its class folder, or its list."""
        if self.list_file is not None:
            return f"Class {label!r} of {split} in {self.list_file}"
        return f"Class folder {self.root / self.folders[split] / label if self.folders else self.root / label}"

    def origin(self, split: str) -> str:
        """How the images of a given split were found, for people: ``folder val/``."""
        if self.list_file is not None:
            return f"listed in {self.list_file.name}"
        if not self.folders:
            return "class folders (no split folders)"
        return f"folder {self.folders[split]}/"


def split_names(names: SplitNames | None) -> dict[str, tuple[str, ...]]:
    """The names each split goes by: the one data.splits gives (none for a split it leaves out), else the
    common ones."""
    if names is None:
        return SPLIT_NAMES
    return {split: (value,) if value is not None else () for split, value in dataclasses.asdict(names).items()}


def split_of(name: str, names: SplitNames | None) -> str | None:
    """The split a folder name or list value stands for (the common names in any case), or None."""
    for split, known in split_names(names).items():
        if (name in known) if names is not None else (name.lower() in known):
            return split
    return None


def _recognised(names: SplitNames | None) -> str:
    return ", ".join(f"{split}: {'|'.join(known) or '(none)'}" for split, known in split_names(names).items())


def _folders(folder: Path) -> list[os.DirEntry]:
    """Sub-folders of ``folder`` (clutter left out), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if e.is_dir() and not is_clutter(Path(e.name))), key=lambda e: e.name)


def _holds_images(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES for e in entries)


def split_folders(root: Path, names: SplitNames | None) -> dict[str, str]:
    """The split folders directly under ``root`` (split -> folder name), or ``{}`` when it holds class folders only.

    With ``names`` (data.splits) each named folder must be there; otherwise folders are matched to the common
    names, and two folders of one split, or split folders without a train folder, are errors listing what was
    found. A folder next to the split folders that is not a split is left to the scan (a stray folder).
    """
    found = [e.name for e in _folders(root)]
    if names is not None:
        folders = {split: value for split, value in dataclasses.asdict(names).items() if value is not None}
        for split, value in folders.items():
            if value not in found:
                raise DatasetError(f"data.splits.{split}={value!r}: there is no folder {root / value}; the folders "
                                   f"there are {found}. Name an existing folder, or write null when the data has no "
                                   f"{split} split.")
        return folders
    matched: dict[str, list[str]] = {}
    for name in found:
        split = split_of(name, None)
        if split is not None:
            matched.setdefault(split, []).append(name)
    for split, folders_of_split in matched.items():
        if len(folders_of_split) > 1:
            raise DatasetError(f"{root} has several {split} folders {folders_of_split}; keep one, or name the split "
                              f"folders in data.splits (e.g. data.splits.{split}: {folders_of_split[0]}).")
    if not matched:
        if found and not any(_holds_images(root / name) for name in found):
            raise DatasetError(f"{root} holds neither split folders ({_recognised(None)}) nor class folders of images: "
                               f"its folders {found} hold folders. Name the split folders in data.splits "
                               f"({_suggested_splits(found)}), or point data.layout_dir at the folder that holds "
                               "them.")
        return {}
    if "train" not in matched:
        raise DatasetError(f"{root} has split folders {sorted(n for f in matched.values() for n in f)} but no train "
                          f"folder ({'|'.join(SPLIT_NAMES['train'])}); the found folders are {found}. Add one, or "
                          "name it in data.splits.train.")
    return {split: matched[split][0] for split in SPLITS if split in matched}


def _suggested_splits(found: list[str]) -> str:
    """A ``data.splits`` mapping guessed from folder names that contain a split's word (``training_set`` ->
    train), or an example naming the first folder when none does."""
    guessed: dict[str, str] = {}
    for name in sorted(found):
        words = re.split(r"[^a-z0-9]+", name.lower())
        split = next((s for s, names in SPLIT_NAMES.items() if set(names) & set(words)), None)
        if split is not None:
            guessed.setdefault(split, name)
    if "train" not in guessed:
        return f"e.g. data.splits.train: {found[0]}"
    pairs = ", ".join(f"{split}: {guessed[split]}" for split in SPLITS if split in guessed)
    return f"these look like data.splits: {{{pairs}}}"


def _walk(base: Path, depth: int) -> Iterator[list[Path]]:
    """The folders under ``base``, level by level (``base`` first), ``depth`` levels deep, clutter left out."""
    level = [base]
    for _ in range(depth + 1):
        yield level
        level = [Path(e.path) for folder in level for e in _folders(folder)]
        if not level:
            return


def find_root(base: Path, names: SplitNames | None) -> Path:
    """With data.layout_dir unset: the shallowest folder under ``base`` holding a train folder. Without one,
    the class folders are under ``base``, past any folders that only wrap one folder."""
    for level in _walk(base, SEARCH_DEPTH):
        hits = [folder for folder in level if any(split_of(e.name, names) == "train" for e in _folders(folder))]
        if len(hits) > 1:
            raise DatasetError(f"Split folders are in several places under {base}: "
                              f"{[str(h.relative_to(base)) for h in hits]}; set data.layout_dir to the one to use.")
        if hits:
            log.info("split folders found in %s", hits[0])
            return hits[0]
    root = base
    while True:
        inside = _folders(root)
        if len(inside) != 1 or _holds_images(root):
            return root
        root = Path(inside[0].path)


def read_list(path: Path, names: SplitNames | None) -> pd.DataFrame:
    """The images a CSV list names, as rows of (path, split, label, line): paths as written (relative to the
    CSV's folder, or absolute), the split as one of ``SPLITS`` (train for every row without a split column),
    ``line`` the row's line in the file. Checks the columns and every cell; not the files (the scan does)."""
    fix = "fix the file, or point data.list at another one."
    table = read_csv(path, what="Image list", fix=fix, error=DatasetError, dtype=str, keep_default_na=False)
    missing = [c for c in LIST_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(f"Image list {path} lacks column(s) {missing}; it needs the columns path,label and "
                          f"optionally split (it has {list(table.columns)}).")
    ignored = [c for c in table.columns if c not in (*LIST_COLUMNS, "split")]
    if ignored:
        log.warning("image list %s: column(s) %s ignored (read: path, label, split)", path, ignored)
    if table.empty:
        raise DatasetError(f"Image list {path} lists no image; {fix}")
    columns = [*LIST_COLUMNS, *(["split"] if "split" in table.columns else [])]
    lines = pd.RangeIndex(2, len(table) + 2)  # the header is line 1
    for column in columns:
        empty = table[column].str.strip().eq("").to_numpy()
        if empty.any():
            raise DatasetError(f"Image list {path} line {lines[empty.argmax()]}: the {column} is empty; every row "
                              f"needs a {column}. {fix[0].upper()}{fix[1:]}")
    paths = [PurePosixPath(p.strip()).as_posix() for p in table["path"]]
    seen: dict[str, int] = {}
    for line, p in zip(lines, paths):
        if p in seen:
            raise DatasetError(f"Image list {path} line {line}: {p} is listed already on line {seen[p]}; list each "
                              f"image once. {fix[0].upper()}{fix[1:]}")
        seen[p] = line
    if "split" in table.columns:
        splits = [split_of(value.strip(), names) for value in table["split"]]
        if None in splits:
            i = splits.index(None)
            raise DatasetError(f"Image list {path} line {lines[i]}: split {table['split'].iloc[i]!r} is not a split "
                              f"name (recognised: {_recognised(names)}); fix the row, or name the splits in "
                              "data.splits.")
        if "train" not in splits:
            raise DatasetError(f"Image list {path} has no train rows (its splits: {sorted(set(splits))}); the "
                              "classifiers need train images.")
    else:
        splits = ["train"] * len(table)
    return pd.DataFrame({"path": paths, "split": splits, "label": table["label"].str.strip().to_numpy(),
                         "line": lines})
