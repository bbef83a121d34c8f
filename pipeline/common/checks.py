"""Check files another stage wrote, where they are read: columns, labels, finite numbers.

A reuse file edited by hand, written by another producer or left by an older run
must fail with one line naming the file and the value, not deep inside pandas or
scikit-learn with a traceback (or, worse, give a report computed on nonsense).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.errors import PipelineError


class ReuseError(PipelineError):
    """A file another stage wrote lacks something, or holds a value that cannot be right."""


def require_columns(frame: pd.DataFrame, path: Path, columns: Iterable[str], *, fix: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReuseError(f"{path} lacks column(s) {missing}; {fix}")


def finite_columns(frame: pd.DataFrame, path: Path, columns: Iterable[str], *, fix: str) -> None:
    """Every value of ``columns`` a finite number."""
    for column in columns:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = frame[column].iloc[row]
            value = value.item() if isinstance(value, np.generic) else value
            raise ReuseError(f"{path} has {column}={value!r} in row {row + 1}: a finite number is "
                             f"needed; {fix}")


def known_labels(frame: pd.DataFrame, path: Path, columns: Iterable[str], classes: list[str], *, fix: str) -> None:
    """Every value of ``columns`` one of ``classes``."""
    for column in columns:
        unknown = sorted(set(frame[column].astype(str)) - set(classes))
        if unknown:
            raise ReuseError(f"{path} has {column} value(s) {unknown[:5]} that are not among the classes "
                             f"{classes}; {fix}")


def known_splits(frame: pd.DataFrame, path: Path, splits: Iterable[str], *, fix: str) -> None:
    """Every value of the ``split`` column one of ``splits`` (a hand-edited manifest or splits file)."""
    unknown = sorted(set(frame["split"].astype(str)) - set(splits))
    if unknown:
        raise ReuseError(f"{path} names split(s) {unknown}; the splits are {list(splits)}: {fix}")


def finite_number(mapping: Mapping[str, Any], dotted: str, path: Path, *, fix: str) -> float:
    """The number at ``dotted`` (``cv.accuracy_mean``) of a JSON object: present, a number, finite."""
    value: Any = mapping
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise ReuseError(f"{path} lacks {dotted}; {fix}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReuseError(f"{path} has {dotted}={value!r}: a finite number is needed; {fix}")
    return float(value)
