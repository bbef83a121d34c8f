"""The split of every image: the one it came with, or, for a split the data lacks, carved from train.

Carving moves whole pictures (the audit's groups: an original with its augmented copies and
near-duplicates), stratified by class, drawn with a seed: the same share of each class's
train pictures goes to each missing split, so no copy of a picture ever sits on two sides.
Pure functions over the audit's groups; ``pipeline.audit`` writes the result
(``splits.csv``: path, split, why) and the manifest with these splits, which every later stage
reads. Cost: a sort of the pictures of each class, O(n log n) in the images; no image is read.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from pipeline.common.checks import known_splits, require_columns
from pipeline.common.errors import PipelineError
from pipeline.common.io import read_csv
from pipeline.common.params import CarveParams
from pipeline.data.layouts import SPLITS

CARVED_FIRST = ("test", "valid")  # the order in which each class's shuffled pictures are dealt out
SPLITS_COLUMNS = ["path", "split", "why"]
DROPPED = "dropped:"  # how a why of splits.csv begins for an image the audit dropped for a leak


class CarveError(PipelineError):
    """``data.carve`` cannot be met by the pictures there are."""


@dataclasses.dataclass(frozen=True)
class Assignment:
    split: pd.Series  # the final split of each row of the groups table, same index
    origins: dict[str, str]  # split -> how its images were made, for people; in SPLITS order


def assign_splits(groups: pd.DataFrame, *, carve: CarveParams, given: dict[str, str]) -> Assignment:
    """The final split of each row of ``groups`` (path, split, label, group; split as the data gave it).

    Each of valid and test the data lacks is carved from the pictures wholly in train: per class (a
    picture's class is that of most of its images, the first name on a tie), round(fraction x the class's
    pictures), shuffled with ``carve.seed``. A class that would be left with no picture in a split, train
    included, is an error naming the key to change. ``given``: how each given split was found (prepare's).
    """
    present = [s for s in SPLITS if s in set(groups["split"])]
    missing = [s for s in CARVED_FIRST if s not in present]
    split = groups["split"]
    origins = {s: given.get(s, "as given") for s in present}
    if missing:
        if "train" not in present:
            raise CarveError("The manifest has no train images to carve "
                             f"{' and '.join(missing)} from; run the prepare stage (dvc repro prepare).")
        fractions = {s: getattr(carve, s) for s in missing}
        carved = groups["group"].map(_carve(groups, fractions=fractions, seed=carve.seed))
        split = carved.where(carved.notna(), split)
        origins.update({s: f"carved from train: {fractions[s] * 100:g}% of each class's pictures (whole pictures), "
                           f"seed {carve.seed}" for s in missing})
    return Assignment(split=split, origins={s: origins[s] for s in SPLITS if s in origins})


def _carve(groups: pd.DataFrame, *, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Picture -> carved split, for the pictures dealt out of train."""
    sides = groups.groupby("group", sort=True)["split"].agg(lambda s: set(s) == {"train"})
    in_train = groups[groups["group"].isin(sides.index[sides])]  # a picture also in valid/test stays where it is
    label_of = in_train.groupby("group", sort=True)["label"].agg(_majority)
    rng = np.random.default_rng(seed)
    out: dict[str, str] = {}
    for label in sorted(label_of.unique()):
        pictures = label_of.index[label_of == label].to_numpy()
        n = len(pictures)
        counts = {s: math.floor(fractions[s] * n + 0.5) for s in CARVED_FIRST if s in fractions}
        for s, count in counts.items():
            if count == 0:
                raise CarveError(f"data.carve.{s}={fractions[s]:g} leaves class {label!r} with no picture in {s}: "
                                 f"train has {n} picture(s) of it, and {fractions[s]:g} x {n} rounds to 0. Raise "
                                 f"data.carve.{s} to at least {math.ceil(50 / n) / 100:g}, or add pictures of "
                                 f"{label!r}.")
        if n - sum(counts.values()) < 1:
            keys = " and ".join(f"data.carve.{s}={fractions[s]:g}" for s in counts)
            raise CarveError(f"{keys} leave class {label!r} with no picture in train: it has {n} picture(s), "
                             f"{', '.join(f'{c} to {s}' for s, c in counts.items())}. Lower them, or add pictures "
                             f"of {label!r}.")
        dealt = np.split(pictures[rng.permutation(n)], np.cumsum(list(counts.values())))  # the rest stays in train
        for s, part in zip(counts, dealt):
            out.update(dict.fromkeys(part, s))
    return out


def _majority(labels: pd.Series) -> str:
    counts = labels.value_counts()
    return min(counts.index[counts == counts.max()])


def split_manifest(manifest: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    """The manifest with each image's final split, rows ordered train, valid, test (manifest order within
    each): the order of the features. With the splits as given, the manifest itself."""
    final = manifest.assign(split=split.to_numpy())
    order = final["split"].map(SPLITS.index).to_numpy()
    return final.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)


def read_splits(path) -> pd.DataFrame:
    """``splits.csv`` as the audit wrote it (path, split, why)."""
    fix = "run the audit stage (dvc repro audit)."
    table = read_csv(path, what="Splits file", fix=fix, error=PipelineError, dtype=str, keep_default_na=False)
    require_columns(table, path, SPLITS_COLUMNS, fix=fix)
    known_splits(table, path, SPLITS, fix=fix)
    return table


def split_origins(splits: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Split -> {how: how its images were made, images: how many, dropped: how many the audit dropped for a
    leak (``audit.on_leak: drop``)}, in SPLITS order, from ``splits.csv``."""
    out: dict[str, dict[str, object]] = {}
    dropped = splits["why"].str.startswith(DROPPED)
    for s in SPLITS:
        rows = splits[(splits["split"] == s) & ~dropped]
        if len(rows):
            out[s] = {"how": str(rows["why"].iloc[0]), "images": len(rows),
                      "dropped": int((dropped & (splits["split"] == s)).sum())}
    return out
