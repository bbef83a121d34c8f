"""The ``k`` smallest values of each row, sorted, in one compiled pass (numba; cached on disk).

``np.argpartition`` and the gather of the chosen scores cost 8 to 18 ns an element (three runs) on the IVF index's
blocks of (queries x a list's rows) (``benchmarks/knn_search.py`` at 8,500 and 34,000 rows prints both
selections); at 64,000 rows that was 12.4 s of a 44.1 s kNN fold. One pass keeping each row's best ``k``
in a sorted buffer rejects most elements with one comparison: about ``k ln(m / k)`` insertions a row of
``m`` in random order, ``m k`` moves at worst (descending rows). Ties are broken by the smaller column,
so the result is defined whatever the data; NaN sorts after every number, as in numpy's sorts.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _before(a, b):
    """``a`` sorts before ``b``: smaller, or a number against NaN."""
    return a < b or (b != b and a == a)


@numba.njit(cache=True, nogil=True)
def _smallest_sorted(values, k):
    n, m = values.shape
    best = np.empty((n, k), values.dtype)
    columns = np.empty((n, k), np.int64)
    for r in range(n):
        held_values, held_columns = best[r], columns[r]
        held = 0
        for j in range(m):
            value = values[r, j]
            if held == k:
                if not _before(value, held_values[k - 1]):
                    continue  # the usual case once the buffer holds k: one comparison
                slot = k - 1
            else:
                slot = held
                held += 1
            while slot > 0 and _before(value, held_values[slot - 1]):  # after equal values: the smaller column first
                held_values[slot] = held_values[slot - 1]
                held_columns[slot] = held_columns[slot - 1]
                slot -= 1
            held_values[slot] = value
            held_columns[slot] = j
    return best, columns


def smallest_sorted(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, columns) of the ``k`` smallest entries of each row of a 2-d array, smallest first (ties: the smaller
    column first). ``k`` must be between 1 and the number of columns."""
    values = np.ascontiguousarray(values)
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the {values.shape[1]} columns.")
    return _smallest_sorted(values, k)
