"""What one extraction computes, as one flat list of items, cut into shards that survive a crash.

An item is one image seen one way: every manifest row through the weights' own
transform (split by split, rows in manifest order), then each augmented view of
every train row. One pass over this list serves all splits and views.

Batches are planned once: each segment (a split, a view pass) is cut into batches
from its own start, so the last batch of each segment is the one padded, and every
row sits where a split-by-split extraction (or ``predict`` on that split's folder)
puts it; on the CPU a row's float rounding depends on its place in the batch.
Shards are runs of whole batches, written one by one to a scratch folder keyed by
everything that determines their values, so a rerun after a crash, or a Ray worker,
computes each row exactly as a single pass does. ``merge`` turns finished shards into
the ``features/`` format.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import features
from pipeline.common.errors import PipelineError
from pipeline.common.io import atomic_path, reserve

PLAIN = -1  # the view number of an item seen through the weights' own transform
VIEWS_SPLIT = "train"  # the split whose images have augmented views


@dataclasses.dataclass(frozen=True)
class Work:
    """The items of one extraction, in the order their embeddings are computed and stored."""

    paths: list[Path]  # image file of each item
    views: np.ndarray  # (n_items,) int: PLAIN, or k for the k-th augmented view
    rows: np.ndarray  # (n_items,) int: the image's position within its split (seeds its views)
    splits: dict[str, tuple[int, int]]  # split -> item range of its plain rows
    n_views: int

    def __len__(self) -> int:
        return len(self.paths)

    def segments(self) -> list[tuple[int, int]]:
        """Item ranges that start a fresh batch: each split, then each view pass."""
        return [*self.splits.values(), *(self.view_range(k) for k in range(self.n_views))]

    def view_range(self, k: int) -> tuple[int, int]:
        start, stop = self.splits[VIEWS_SPLIT]
        n_plain = sum(b - a for a, b in self.splits.values())
        return n_plain + k * (stop - start), n_plain + (k + 1) * (stop - start)


def plan_work(manifest: pd.DataFrame, root: Path, *, n_views: int) -> Work:
    """Every manifest row (split by split, in manifest order), then ``n_views`` views of each train row."""
    paths: list[Path] = []
    rows: list[np.ndarray] = []
    splits: dict[str, tuple[int, int]] = {}
    for split, frame in manifest.groupby("split", sort=False):
        splits[str(split)] = (len(paths), len(paths) + len(frame))
        paths += [root / p for p in frame["path"]]
        rows.append(np.arange(len(frame)))
    views = [np.full(len(paths), PLAIN)]
    if n_views:
        if VIEWS_SPLIT not in splits:
            raise PipelineError(f"views.count={n_views} needs a '{VIEWS_SPLIT}' split; "
                                f"the manifest has {list(splits)}.")
        start, stop = splits[VIEWS_SPLIT]
        for k in range(n_views):
            paths += paths[start:stop]
            views.append(np.full(stop - start, k))
            rows.append(np.arange(stop - start))
    return Work(paths=paths, views=np.concatenate(views), rows=np.concatenate(rows) if rows else np.empty(0, int),
                splits=splits, n_views=n_views)


def work_of_paths(paths: list[Path]) -> Work:
    """Image files outside any manifest (predict, benchmarks) as one split, ``images``, without views."""
    return plan_work(pd.DataFrame({"path": [str(p) for p in paths], "split": "images"}), Path(), n_views=0)


def plan_batches(work: Work, batch_size: int) -> list[tuple[int, int]]:
    """Item ranges of at most ``batch_size``, each segment cut from its own start."""
    return [(start, min(start + batch_size, stop)) for first, stop in work.segments()
            for start in range(first, stop, batch_size)]


def shard_ranges(batches: list[tuple[int, int]], shard_rows: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous item ranges of whole batches, ``ceil(shard_rows / batch_size)`` batches each (never padded)."""
    per = batches_per_shard(shard_rows, batch_size)
    return [(batches[i][0], batches[min(i + per, len(batches)) - 1][1]) for i in range(0, len(batches), per)]


def batches_per_shard(shard_rows: int, batch_size: int) -> int:
    return max(1, -(-shard_rows // batch_size))


def batches_within(batches: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The planned batches of shard ``[start, stop)`` (found by bisection: millions of images make many)."""
    first = bisect.bisect_left(batches, (start,))
    last = bisect.bisect_left(batches, (stop,), lo=first)
    return batches[first:last]


def settings_key(settings: dict[str, Any]) -> str:
    """A short hash of everything that determines the embeddings' values."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class ShardStore:
    """Finished shards of one extraction in ``scratch/<key>/``: written atomically, reused only under the same key."""

    def __init__(self, scratch: Path, key: str, dim: int) -> None:
        self.scratch = Path(scratch)
        self.folder = self.scratch / key
        self.dim = dim

    def path(self, start: int, stop: int) -> Path:
        return self.folder / f"rows-{start:09d}-{stop:09d}.npy"

    def finished(self, ranges: list[tuple[int, int]]) -> set[tuple[int, int]]:
        """The ranges whose shard file exists whole (right shape and dtype)."""
        done = set()
        for start, stop in ranges:
            path = self.path(start, stop)
            if not path.is_file():
                continue
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError):
                continue  # not a whole .npy file (an empty one included): recompute it
            if array.shape == (stop - start, self.dim) and array.dtype == np.float32:
                done.add((start, stop))
        return done

    def other_keys(self) -> list[Path]:
        """Scratch folders of other settings (never reused here; they cost disk)."""
        if not self.scratch.is_dir():
            return []
        return sorted(p for p in self.scratch.iterdir() if p.is_dir() and p != self.folder)

    @contextlib.contextmanager
    def writing(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """A float32 (rows, dim) array mapped onto the shard's file, which appears only once it is filled."""
        with atomic_path(self.path(start, stop)) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(stop - start, self.dim))
            reserve(tmp)  # a full disk fails here, not as a SIGBUS when the mapping is filled
            yield out
            out.flush()
            del out

    def write(self, start: int, stop: int, embeddings: np.ndarray) -> None:
        with self.writing(start, stop) as out:
            out[:] = embeddings

    def clear(self) -> None:
        """Remove this key's shards (after a successful merge: features/ now holds them)."""
        if self.folder.is_dir():
            shutil.rmtree(self.folder)
        if self.scratch.is_dir() and not any(self.scratch.iterdir()):
            self.scratch.rmdir()


def merge(store: ShardStore, work: Work, ranges: list[tuple[int, int]], out: Path) -> None:
    """Copy the finished shards into ``out`` in the features format: one array per split, views apart."""
    targets = [((start, stop), features.allocate(out, split, stop - start, store.dim))
               for split, (start, stop) in work.splits.items()]
    if work.n_views:
        start, stop = work.splits[VIEWS_SPLIT]
        views = features.allocate(out, VIEWS_SPLIT, stop - start, store.dim, views=work.n_views)
        targets += [(work.view_range(k), views[k]) for k in range(work.n_views)]
    for (a, b), array in targets:
        for start, stop in ranges:
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                array[lo - a : hi - a] = np.load(store.path(start, stop), mmap_mode="r")[lo - start : hi - start]
    for _, array in targets:
        if isinstance(array, np.memmap):
            array.flush()
