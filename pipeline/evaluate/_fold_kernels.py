"""The compiled greedy step behind ``pipeline.evaluate.splits.StratifiedGroupKFold`` (numba; cached on disk).

scikit-learn's arithmetic, operation for operation, so the chosen fold, ties included, is its own:
for each trial fold, the per-class std over folds of the class shares (sums over folds in fold
order, as numpy reduces that axis), then their mean over classes (numpy's pairwise sum). Never compile
these with ``fastmath``: the exact rounding decides ties.
"""

from __future__ import annotations

import numba
import numpy as np


MAX_CLASSES = 128  # numpy sums up to 128 values in one block; more would need its recursion (left to numpy)


@numba.njit(cache=True)
def _pairwise_sum(values):
    """numpy's pairwise summation of up to 128 values (its order, hence its rounding)."""
    n = len(values)
    if n < 8:
        total = 0.0
        for i in range(n):
            total += values[i]
        return total
    r = values[:8].copy()
    i = 8
    while i < n - (n % 8):
        for j in range(8):
            r[j] += values[i + j]
        i += 8
    total = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        total += values[i]
        i += 1
    return total


@numba.njit(cache=True)
def best_fold(counts, class_totals, group):
    """The fold whose class shares stay most even with ``group``'s counts added (the least filled on a near tie)."""
    n_folds, n_classes = counts.shape
    shares = np.empty(n_folds)
    stds = np.empty(n_classes)
    best, min_eval, min_samples = -1, np.inf, np.inf
    for trial in range(n_folds):
        for c in range(n_classes):
            total = 0.0
            for f in range(n_folds):
                count = counts[f, c] + group[c] if f == trial else counts[f, c]
                shares[f] = count / class_totals[c]
                total += shares[f]
            mean = total / n_folds
            squares = 0.0
            for f in range(n_folds):
                deviation = shares[f] - mean
                squares += deviation * deviation
            stds[c] = np.sqrt(squares / n_folds)
        evaluation = _pairwise_sum(stds) / n_classes
        samples = 0.0
        for c in range(n_classes):
            samples += counts[trial, c]
        close = min_eval != np.inf and abs(evaluation - min_eval) <= 1e-8 + 1e-5 * abs(min_eval)  # np.isclose
        if evaluation < min_eval or (close and samples < min_samples):
            best, min_eval, min_samples = trial, evaluation, samples
    return best
