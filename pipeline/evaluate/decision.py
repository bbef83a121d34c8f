"""Which pair to use, and how sure one can be: probability of being best, the pairs practically as good as the
best, and the best pair's figure corrected for having been picked.

Everything comes from one bootstrap of train *pictures* over the out-of-fold predictions that every pair made
on the shared grouped folds: a resample draws pictures with replacement and takes all their images along, as
the folds kept them together, and every pair is scored on the same draw, so the comparison stays paired.

What it leaves out: the variance of training on another sample of pictures (the fold models are the ones the
folds trained; a resample only re-weights the images they scored), and the test split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.evaluate.statistics import CONFIDENCE

METHOD = ("bootstrap of train pictures (all of a picture's images together) over every pair's out-of-fold "
          "predictions on the shared grouped folds, averaged over the CV repetitions; paired")
LEAVES_OUT = ("the variance of training on another sample of pictures (the fold models are fixed) and the test "
              "split")
SELECTION_METHOD = ("bootstrap bias-corrected CV (BBC-CV, Tsamardinos et al. 2018): in each resample the best pair "
                    "on the drawn pictures is scored on the pictures not drawn")


def picture_totals(correct: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per picture, each pair's number of right predictions (pictures, pairs) and its number of images.

    ``correct`` is (images, pairs): 1 right, 0 wrong, or the share of repetitions in which it was right.
    """
    _, picture = np.unique(groups, return_inverse=True)
    right = np.zeros((picture.max() + 1, correct.shape[1]))
    np.add.at(right, picture, correct)
    return right, np.bincount(picture).astype(float)


def resample_weights(n_pictures: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each picture is drawn, resample by resample, in blocks that hold about 4M counts."""
    rng = np.random.default_rng(seed)
    block = max(1, 2**22 // n_pictures)
    for start in range(0, n_resamples, block):
        yield rng.multinomial(n_pictures, np.full(n_pictures, 1 / n_pictures), size=min(block, n_resamples - start))


def _winner_shares(scores: np.ndarray) -> np.ndarray:
    """Each pair's share of first place in each row: 1 for a sole winner, 1/k for k tied winners."""
    top = scores >= scores.max(axis=1, keepdims=True)
    return top / top.sum(axis=1, keepdims=True)


def equivalent_set(observed: np.ndarray, resampled: np.ndarray, *, margin: float) -> np.ndarray:
    """The pairs no other pair is shown to beat by more than ``margin``: a confidence set for the best within it.

    For every ordered pair (k, j) the lower bound of acc_k - acc_j comes from simultaneous studentised bootstrap
    bounds (the 95% quantile of the largest standardised deviation over all pairs), so with
    probability about 95% every bound holds at once, and then the truly best pair is in the set
    whatever the data picked as best.
    """
    difference = observed[:, None] - observed[None, :]
    spread = resampled[:, :, None] - resampled[:, None, :]
    se = spread.std(axis=0)
    varies = se > 0
    if varies.any():
        deviation = (spread[:, varies] - difference[varies]) / se[varies]
        critical = float(np.quantile(deviation.max(axis=1), CONFIDENCE))
    else:
        critical = 0.0
    lower = difference - critical * se  # a difference the resamples never vary is known: its bound is itself
    return (lower <= margin + 1e-12).all(axis=0)


def decide(correct: np.ndarray, groups: np.ndarray, *, margin: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """P(best), rank interval and practical equivalence of each pair (columns of ``correct``), and the
    winner's-curse correction, from ``n_resamples`` resamples of pictures (``groups``).

    Returns arrays in column order: ``accuracy`` (observed), ``p_best`` (summing to 1), ``rank_low`` and
    ``rank_high`` (the 95% interval of its rank, 1 = best; tied pairs share the better rank),
    ``equivalent``; and ``selection``: the best observed accuracy and its BBC-CV estimate with a percentile
    interval.
    """
    right, images = picture_totals(correct, groups)
    observed = right.sum(axis=0) / images.sum()
    resampled, held_out = [], []
    for weights in resample_weights(len(images), n_resamples, seed):
        drawn = (weights @ right) / (weights @ images)[:, None]
        resampled.append(drawn)
        left = weights == 0  # the pictures a resample did not draw score its pick
        unseen = (left @ right) / np.maximum(left @ images, 1)[:, None]
        held_out.append((_winner_shares(drawn) * unseen).sum(axis=1))
    resampled, held_out = np.concatenate(resampled), np.concatenate(held_out)
    ranks = 1 + (resampled[:, None, :] > resampled[:, :, None]).sum(axis=2)
    tail = (1 - CONFIDENCE) / 2
    return {
        "accuracy": observed,
        "p_best": _winner_shares(resampled).mean(axis=0),
        "rank_low": np.quantile(ranks, tail, axis=0, method="lower").astype(int),
        "rank_high": np.quantile(ranks, 1 - tail, axis=0, method="higher").astype(int),
        "equivalent": equivalent_set(observed, resampled, margin=margin),
        "selection": {"observed": float(observed.max()), "corrected": float(held_out.mean()),
                      "corrected_ci95": [float(v) for v in np.quantile(held_out, [tail, 1 - tail])],
                      "pairs": int(correct.shape[1]), "method": SELECTION_METHOD},
    }


def out_of_fold_correct(frames: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """The train images every pair scored and, per pair (column), the share of CV repetitions that got each right.

    ``frames``: each pair's out-of-fold file (``image``, ``true``, ``predicted_<r>`` per repetition), all over the
    same images (checked by the caller)."""
    images = list(next(iter(frames.values()))["image"])
    columns = []
    for frame in frames.values():
        frame = frame.set_index("image").loc[images]
        predicted = frame.filter(regex=r"^predicted_\d+$").to_numpy()
        columns.append((predicted == frame["true"].to_numpy()[:, None]).mean(axis=1))
    return images, np.stack(columns, axis=1)


def cost_of(cost: dict[str, Any], classifier: str) -> dict[str, Any]:
    """A pair's cost columns from its backbone's ``cost`` stage record; the cost axis is ``ms_per_image``, the
    backbone's forward pass and the classifier's prediction of one image."""
    own = cost.get("classifiers", {}).get(classifier, {})
    speed = cost.get("images_per_second")
    ms = own.get("ms_per_1000")
    return {"params_millions": cost.get("params_millions"), "gflops": cost.get("gflops"), "images_per_second": speed,
            "classifier_ms_per_1000": ms, "model_bytes": own.get("model_bytes"),
            "ms_per_image": 1000 / speed + ms / 1000 if speed and ms is not None else None,
            "load_average": cost.get("load_average")}
