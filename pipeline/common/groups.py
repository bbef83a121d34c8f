"""The picture groups the audit wrote (``groups.csv``), read by every stage that splits or scores by picture.

Kept apart from ``pipeline.data`` so that the train stages read them without importing the image code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.common.errors import PipelineError
from pipeline.common.io import read_csv


class GroupsError(PipelineError):
    """The picture groups are missing, malformed or do not cover the images."""


def read_groups(path: Path, paths: Sequence[str]) -> np.ndarray:
    """The original-picture id of each image in ``paths``, from the audit's ``groups.csv``."""
    table = read_csv(path, what="Groups file", fix="run the audit stage (dvc repro audit).", error=GroupsError,
                     dtype=str, keep_default_na=False)
    missing_columns = [c for c in ("path", "group") if c not in table.columns]
    if missing_columns:
        raise GroupsError(f"Groups file {path} lacks column(s) {missing_columns}; it needs 'path' and 'group' "
                            "(one row per image, the id of its original picture).")
    empty = table["path"].eq("") | table["group"].eq("")
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0])
        raise GroupsError(f"Groups file {path} has an empty path or group in row {row + 1}; every image needs the "
                          "id of its original picture. Re-run the audit stage (dvc repro audit).")
    repeated = table["path"][table["path"].duplicated()]
    if len(repeated):
        raise GroupsError(f"Groups file {path} lists {repeated.iloc[0]!r} more than once; one row per image. "
                          "Re-run the audit stage (dvc repro audit).")
    table = table.set_index("path")["group"]
    missing = [p for p in paths if p not in table.index]
    if missing:
        raise GroupsError(f"{len(missing)} image(s) have no group in {path}, e.g. {missing[:3]}; "
                            "the features and the audit come from different manifests. Re-run dvc repro.")
    return table.loc[list(paths)].to_numpy()
