"""A bounded, stratified sample of a backbone's embeddings, for pictures that need not see every image.

The embedding map is a picture: 2,000 points show the structure as well as a million, and a million
would cost gigabytes once converted for the PCA. Only the sampled rows are read, so a memory-mapped
features folder stays on disk. O(n) in the labels, O(limit x dim) in the embeddings.
"""

from __future__ import annotations

import numpy as np

from pipeline.common import features as features_io


def stratified_sample(cells: np.ndarray, *, limit: int, minimum: int = 5, seed: int = 0) -> np.ndarray:
    """Sorted row indices, ``limit`` of them: every cell (an integer code per row) in proportion to its size,
    with at least ``minimum`` rows (or all it has) so that a small class or split still shows. All rows when
    they fit."""
    codes, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    if len(cells) <= limit:
        return np.arange(len(cells))
    floor = np.minimum(counts, min(minimum, limit // len(codes)))
    rest = counts - floor
    share = (limit - floor.sum()) * rest / rest.sum()  # below rest in every cell, as there are more rows than limit
    quota = floor + np.floor(share).astype(int)
    quota[np.argsort(np.floor(share) - share)[:limit - quota.sum()]] += 1  # largest remainders: limit rows exactly
    rng = np.random.default_rng(seed)
    order = np.argsort(inverse, kind="stable")  # rows grouped by cell, in file order within each
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = [rng.choice(order[starts[k]:starts[k + 1]], size=quota[k], replace=False) for k in range(len(codes))]
    return np.sort(np.concatenate(chosen))


def embedding_sample(feats: features_io.Features, *, limit: int) -> tuple[np.ndarray, list[str], list[str], int]:
    """Embeddings, class names and split names of a sample stratified by (split, class), and how many images
    there were in all; each split's array is indexed at the sampled rows only."""
    splits = list(feats.splits)
    sizes = [len(feats[s].y) for s in splits]
    cells = np.concatenate([i * len(feats.classes) + feats[s].y for i, s in enumerate(splits)])
    rows = stratified_sample(cells, limit=limit)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    X, labels, names = [], [], []
    for i, split in enumerate(splits):
        local = rows[(rows >= bounds[i]) & (rows < bounds[i + 1])] - bounds[i]
        X.append(np.asarray(feats[split].X[local]))
        labels += [feats.classes[c] for c in feats[split].y[local]]
        names += [split] * len(local)
    return np.concatenate(X), labels, names, int(bounds[-1])
