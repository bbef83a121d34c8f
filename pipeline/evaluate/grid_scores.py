"""The record of a grid search whose folds were scored by our own loop, in ``GridSearchCV``'s terms.

kNN and the approximate SVM score every grid cell on each inner fold themselves (one neighbour
search, one kernel map per fold), so they report, and choose, exactly as ``GridSearchCV`` would
from the same scores: the mean and the population std over folds, ranks with ties sharing the
lowest rank, the first best cell chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.model_selection import ParameterGrid


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cells of a ``clf__<key>`` grid, under their params names, in ``GridSearchCV``'s order."""
    return list(ParameterGrid({key.removeprefix("clf__"): values for key, values in grid.items()}))


def grid_record(cells: list[dict[str, Any]], scores: list[list[float]],
                keys: list[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The chosen cell and the record (one row per cell: values, mean and std of the accuracy, rank).

    ``scores``: one list per fold, one accuracy per cell in ``cells``' order.
    """
    table = np.array(scores, dtype=np.float64).T  # (cells, folds)
    means = np.average(table, axis=1)
    stds = np.sqrt(np.average((table - means[:, None]) ** 2, axis=1))
    ranks = rankdata(-means, method="min").astype(np.int32)
    record = pd.DataFrame(cells)[sorted(keys)].assign(mean_accuracy=means, std_accuracy=stds, rank=ranks)
    return cells[int(np.argmin(ranks))], record
