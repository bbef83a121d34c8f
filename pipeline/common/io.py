"""Write outputs whole or not at all, and together; read the small JSON files stages exchange.

Every file or folder a stage produces goes to a temporary sibling first and is
renamed into place only when complete, so an interrupted run never leaves an
output that looks valid (DVC would otherwise hash and cache it). A stage with
several outputs stages them all in one ``output_set`` and renames them only once
every one is written, so a failure at any point leaves the previous set whole,
never a mix of two runs. Any ``OSError`` on the way (a full disk, a file-size
limit, a read-only folder, a file where a folder should be) becomes one
``OutputError`` naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common.errors import PipelineError

_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is too large (the disk is full, or a file-size limit such as ulimit -f is reached)",
    errno.EACCES: "permission denied (the folder is read-only for you)",
    errno.EPERM: "permission denied (the folder is read-only for you)",
    errno.EROFS: "the filesystem is read-only",
    errno.ENOTDIR: "a file stands where a folder should be",
    errno.EEXIST: "a file stands where a folder should be",
    errno.EISDIR: "a folder stands where a file should be",
}


class OutputError(PipelineError):
    """An output cannot be written: the disk is full, a folder is read-only, a file is in the way."""


def output_error(target: Path, err: OSError) -> OutputError:
    """One line naming the output, the cause and the way out."""
    cause = _CAUSES.get(err.errno or 0, err.strerror or str(err))
    obstacle = _obstacle(target) if err.errno in (errno.ENOTDIR, errno.EEXIST) else None
    where = f" ({obstacle} is a file)" if obstacle else ""
    return OutputError(f"Cannot write {target}: {cause}{where} [{type(err).__name__}: {err.strerror or err}]. "
                       "Free disk space, make the folder writable or move the obstacle away, then re-run; "
                       "the previous outputs are left as they were.")


def _obstacle(target: Path) -> Path | None:
    """The nearest ancestor of ``target`` that exists but is not a folder."""
    for parent in target.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
        if parent.is_symlink():
            return parent
    return None


@contextlib.contextmanager
def writing(target: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``target`` into one ``OutputError`` line."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        raise output_error(target, err) from err


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class OutputSet:
    """Outputs of one stage staged under temporary names, renamed into place together by ``commit``."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, bool]] = []  # (temporary, target, is_dir)

    def path(self, target: Path, *, is_dir: bool = False) -> Path:
        """A temporary path next to ``target`` to write its content to (a folder when ``is_dir``)."""
        with writing(target):
            if not is_dir and target.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
            target.parent.mkdir(parents=True, exist_ok=True)
            prefix = f".{target.name}.tmp-"
            for stale in target.parent.glob(f"{glob.escape(prefix)}*"):  # left by a killed run (one writer at a time)
                _remove(stale)
            if is_dir:
                tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
                os.close(fd)
                tmp = Path(name)
            self._staged.append((tmp, target, is_dir))
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod((0o777 if is_dir else 0o666) & ~umask)  # mkstemp/mkdtemp create private files
        return tmp

    def write_text(self, target: Path, text: str) -> None:
        with writing(target):
            self.path(target).write_text(text, encoding="utf-8")

    def write_json(self, target: Path, data: Any) -> None:
        self.write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def write_csv(self, target: Path, frame: pd.DataFrame) -> None:
        with writing(target):
            frame.to_csv(self.path(target), index=False)

    def commit(self) -> None:
        """Rename every staged output into place; if a rename fails, put back the outputs already replaced."""
        placed: list[tuple[Path, Path | None]] = []  # (target, backup of its previous content)
        current: Path | None = None
        try:
            for tmp, target, _ in self._staged:
                current = target
                backup = None
                if target.exists() or target.is_symlink():
                    backup = target.with_name(f".{target.name}.tmp-old-{uuid.uuid4().hex[:8]}")
                    target.rename(backup)
                placed.append((target, backup))  # from here on, a failure puts the backup back (below)
                tmp.rename(target)
        except OSError as err:
            for target, backup in reversed(placed):
                with contextlib.suppress(OSError):
                    _remove(target)
                    if backup is not None:
                        backup.rename(target)
            raise output_error(current, err) from err
        for _, backup in placed:
            if backup is not None:
                with contextlib.suppress(OSError):
                    _remove(backup)
        self._staged = []

    def discard(self) -> None:
        """Remove what is still staged (after a failure)."""
        for tmp, _, _ in self._staged:
            with contextlib.suppress(OSError):
                _remove(tmp)
        self._staged = []


@contextlib.contextmanager
def output_set() -> Iterator[OutputSet]:
    """Stage a stage's outputs; they replace the previous ones together, only if the block completes."""
    outputs = OutputSet()
    try:
        yield outputs
        outputs.commit()
    finally:
        outputs.discard()


@contextlib.contextmanager
def atomic_path(target: Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; move it onto ``target`` on success."""
    with output_set() as outputs:
        tmp = outputs.path(target, is_dir=is_dir)
        with writing(target):
            yield tmp


def reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now, so a full disk is an ``OSError`` here rather than a
    SIGBUS when a page of the mapping is written later (no-op where the system cannot)."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # these: not supported here
                    raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def file_sha256(path: Path) -> str:
    """sha256 of a file read in blocks: weights and feature arrays may be gigabytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, *, what: str, fix: str, error: type[PipelineError] = PipelineError) -> Any:
    """Parse a JSON file another stage wrote; a missing or damaged one is a one-line ``error``."""
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not valid JSON ({err}); {fix}") from err


def read_csv(path: Path, *, what: str, fix: str, error: type[PipelineError] = PipelineError,
             **options: Any) -> pd.DataFrame:
    """Read a CSV file another stage wrote; a missing, empty or damaged one is a one-line ``error``."""
    if not path.is_file():
        raise error(f"{what} {path} not found; {fix}")
    try:
        return pd.read_csv(path, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not a readable CSV file ({str(err).strip().splitlines()[0]}); "
                    f"{fix}") from err
