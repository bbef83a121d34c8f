"""Write outputs whole or not at all; read the small JSON files stages exchange.

Every file or folder a stage produces goes to a temporary sibling first and is
renamed into place only when complete, so an interrupted run never leaves an
output that looks valid (DVC would otherwise hash and cache it).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common.errors import PipelineError


@contextlib.contextmanager
def atomic_path(target: Path | str, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(f"{glob.escape(prefix)}*"):  # left by a killed run (one writer at a time)
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod((0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp create private files
    try:
        yield tmp
        if is_dir:
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            tmp.rename(target)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_json(path: Path | str, *, what: str, fix: str, error: type[PipelineError] = PipelineError) -> Any:
    """Parse a JSON file another stage wrote; a missing or damaged one is a one-line ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not valid JSON ({err}); {fix}") from err


def read_csv(path: Path | str, *, what: str, fix: str, error: type[PipelineError] = PipelineError,
             **options: Any) -> pd.DataFrame:
    """Read a CSV file another stage wrote; a missing, empty or damaged one is a one-line ``error``."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        return pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not a readable CSV file ({str(err).strip().splitlines()[0]}); "
                    f"{fix}") from err
