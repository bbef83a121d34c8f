"""Pairs of 64-bit hashes within a Hamming distance, without comparing every pair.

Multi-index hashing (Norouzi et al., 2012): cut the 64 bits into four 16-bit blocks.
Two hashes within ``max_bits`` bits differ in at most ``max_bits // 4`` bits in at
least one block (pigeonhole), so each query only looks in the buckets of its four
blocks that lie within that radius, and checks those candidates' full distance.
A pair is emitted only from the first block that finds it, so no pair comes twice
and no set is needed. Exact: the same pairs as the all-pairs comparison, in time
about linear in the number of hashes at ``max_bits`` up to 15 on random hashes,
and memory linear in it (the index is four sorted copies of the hashes).

The kernels are compiled with numba (on first use, then cached on disk) and run
on every core, in threads over slices of the queries. Above 15 bits the buckets
searched cover most of the index, so a blocked all-pairs kernel is used instead:
quadratic time, still exact and with memory bounded by the number of hashes.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCKS, BLOCK_BITS = 4, 16
MAX_INDEXED_BITS = 15  # radius 3 per block: 697 buckets of 65,536 per block searched


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pairs_within(queries: np.ndarray, base: np.ndarray, max_bits: int, *, threads: int | None = None,
                 method: str = "auto") -> np.ndarray:
    """Index pairs (a, b), a < b, with ``popcount(queries[a] ^ base[b]) <= max_bits``, sorted, as (k, 2) int64.

    ``queries`` and ``base`` are uint64 arrays of one length (``base`` may be ``queries``).
    ``method``: ``index`` (multi-index hashing), ``scan`` (all pairs, blocked) or ``auto``
    (the index up to ``MAX_INDEXED_BITS`` bits).
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint64)
    base = np.ascontiguousarray(base, dtype=np.uint64)
    if queries.shape != base.shape or queries.ndim != 1:
        raise ValueError(f"queries {queries.shape} and base {base.shape} must be 1-d and of one length")
    if method == "auto":
        method = "index" if max_bits <= MAX_INDEXED_BITS else "scan"
    if method not in ("index", "scan"):
        raise ValueError(f"method={method!r}: use auto, index or scan")
    n = len(queries)
    if n < 2 or max_bits < 0:
        return np.empty((0, 2), dtype=np.int64)
    from pipeline.data import _hamming_kernels as kernels  # numba: imported (and compiled) only when needed

    threads = max(1, min(threads or available_cores(), n))
    if method == "index":
        radius = min(max_bits // BLOCKS, BLOCK_BITS)
        masks = _block_masks(radius)
        base_index = kernels.build_index(base)
        query_index = base_index if queries is base else kernels.build_index(queries)
        size = 1 << BLOCK_BITS  # the threads share out the 16-bit keys

        def work(lo: int, hi: int) -> np.ndarray:
            return kernels.index_join(query_index, base_index, masks, max_bits, radius, lo, hi)
    else:
        size = n

        def work(lo: int, hi: int) -> np.ndarray:
            return kernels.scan_join(queries, base, max_bits, lo, hi)

    # Several slices per thread even out their costs (in the scan, query a compares with n - a hashes).
    bounds = np.unique(np.linspace(0, size, 8 * threads + 1).astype(np.int64))
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(work, bounds[:-1], bounds[1:]))
    pairs = np.concatenate(parts).reshape(-1, 2)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _block_masks(radius: int) -> np.ndarray:
    """Every 16-bit mask with at most ``radius`` bits set, fewest bits first."""
    masks = [sum(1 << b for b in bits) for r in range(radius + 1)
             for bits in itertools.combinations(range(BLOCK_BITS), r)]
    return np.array(masks, dtype=np.uint64)
