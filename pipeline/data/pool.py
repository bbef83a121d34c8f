"""Map a function over many items on a pool of processes, results in input order, memory bounded.

With one worker the items are processed in this process (no pool, nothing to start).
Workers ignore Ctrl-C: the main process receives it alone, stops the pool and reports
one ``interrupted`` line (``pipeline.common.cli``), instead of every worker printing a
traceback. The function must catch what it wants reported per item and return it.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pipeline.data.neighbours import available_cores

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(num_workers: int | str) -> int:
    """``auto``: the cores this process may use, less one for the main process (at least 1)."""
    return max(1, available_cores() - 1) if num_workers == "auto" else max(1, int(num_workers))


def ordered_map(func: Callable[[T], R], items: Iterable[T], workers: int, *, chunk: int = 16) -> Iterator[R]:
    """``func(item)`` for each item, in order. Workers hold at most ``chunk`` items each at a time,
    and results wait only for the slowest earlier item, so memory does not grow with the count.
    """
    if workers <= 1:
        yield from map(func, items)
        return
    pool = multiprocessing.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        yield from pool.imap(func, items, chunksize=chunk)
        pool.close()
    finally:
        pool.terminate()  # on an error, Ctrl-C or an early stop by the caller: no worker outlives the stage
        pool.join()
