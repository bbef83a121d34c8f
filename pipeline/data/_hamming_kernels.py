"""Compiled loops behind ``pipeline.data.neighbours`` (numba; cached on disk after the first run).

``nogil`` lets threads run them side by side on slices of the queries.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

BLOCKS, BLOCK_BITS, BLOCK_MASK = 4, 16, 0xFFFF


@intrinsic
def popcount(typingctx, x):
    """The CPU's population count of a uint64 (LLVM's ctpop)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@numba.njit(cache=True, nogil=True)
def build_index(base):
    """Per block, the hashes sorted by that block's 16 bits (a stable counting sort).

    Returns ``starts`` (4, 65537): bucket offsets; ``order`` (4, n): original indices, ascending
    within a bucket; ``values`` (4, n): the hashes in that order (read contiguously by the join).
    """
    n = base.size
    buckets = 1 << BLOCK_BITS
    starts = np.zeros((BLOCKS, buckets + 1), np.int64)
    order = np.empty((BLOCKS, n), np.int64)
    values = np.empty((BLOCKS, n), np.uint64)
    for k in range(BLOCKS):
        shift = np.uint64(BLOCK_BITS * k)
        for t in range(n):
            starts[k, np.int64((base[t] >> shift) & np.uint64(BLOCK_MASK)) + 1] += 1
        for key in range(buckets):
            starts[k, key + 1] += starts[k, key]
        fill = starts[k, :buckets].copy()
        for t in range(n):
            key = np.int64((base[t] >> shift) & np.uint64(BLOCK_MASK))
            order[k, fill[key]] = t
            values[k, fill[key]] = base[t]
            fill[key] += 1
    return starts, order, values


@numba.njit(cache=True, nogil=True)
def _grow(out, size):
    if size < out.size:
        return out
    bigger = np.empty(out.size * 2, np.int64)
    bigger[: out.size] = out
    return bigger


@numba.njit(cache=True, nogil=True)
def index_join(query_index, base_index, masks, max_bits, radius, key_lo, key_hi):
    """Flat (a, b, a, b, ...) with a < b within ``max_bits`` bits, for the queries whose block key is in [key_lo, key_hi).

    Works bucket against bucket: the queries sharing a block's key all search the same
    buckets of the base, so both sides are read contiguously, from cache. A candidate
    from block k is kept only if no earlier block is within ``radius``: that block found it.
    """
    q_starts, q_order, q_values = query_index
    b_starts, b_order, b_values = base_index
    out = np.empty(1024, np.int64)
    size = 0
    limit = np.uint64(max_bits)
    rad = np.uint64(radius)
    for k in range(BLOCKS):
        for qkey in range(key_lo, key_hi):
            q0, q1 = q_starts[k, qkey], q_starts[k, qkey + 1]
            if q0 == q1:
                continue
            for m in range(masks.size):
                key = np.int64(np.uint64(qkey) ^ masks[m])
                b0, b1 = b_starts[k, key], b_starts[k, key + 1]
                for s in range(q0, q1):
                    a = q_order[k, s]
                    q = q_values[k, s]
                    for t in range(b0, b1):
                        x = q ^ b_values[k, t]
                        if popcount(x) > limit:
                            continue
                        b = b_order[k, t]
                        if b <= a:
                            continue
                        first = True
                        for k2 in range(k):
                            if popcount((x >> np.uint64(BLOCK_BITS * k2)) & np.uint64(BLOCK_MASK)) <= rad:
                                first = False
                                break
                        if first:
                            out = _grow(out, size + 2)
                            out[size] = a
                            out[size + 1] = b
                            size += 2
    return out[:size].copy()


@numba.njit(cache=True, nogil=True)
def scan_join(queries, base, max_bits, lo, hi):
    """The all-pairs comparison, for lo <= a < hi and every b > a (any ``max_bits``)."""
    out = np.empty(1024, np.int64)
    size = 0
    limit = np.uint64(max_bits)
    n = base.size
    for a in range(lo, hi):
        q = queries[a]
        for b in range(a + 1, n):
            if popcount(q ^ base[b]) <= limit:
                out = _grow(out, size + 2)
                out[size] = a
                out[size + 1] = b
                size += 2
    return out[:size].copy()
