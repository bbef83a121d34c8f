"""Uncertainty for small evaluation sets: intervals, calibration and paired tests.

With 38 test images one image moves accuracy by 2.6 points, so every score the
pipeline reports carries an interval, and "A beats B" needs a paired test.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

CONFIDENCE = 0.95  # of every interval and set: the outputs' keys say ci95


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound even at 0/n or n/n, unlike the normal one)."""
    if n == 0:
        return (float("nan"), float("nan"))
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return (float(ci.low), float(ci.high))


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices of many label vectors at once: (..., n) -> (..., k, k), rows = truth."""
    lead = y_true.shape[:-1]
    flat = y_true.reshape(-1, y_true.shape[-1]) * n_classes + y_pred.reshape(-1, y_pred.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * n_classes * n_classes
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * n_classes * n_classes)
    return counts.reshape(*lead, n_classes, n_classes)


def balanced_accuracy_from_counts(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the truth (sklearn's definition)."""
    support = cm.sum(axis=-1)
    recall = np.divide(np.diagonal(cm, axis1=-2, axis2=-1), support, out=np.zeros(support.shape), where=support > 0)
    return recall.sum(axis=-1) / np.maximum((support > 0).sum(axis=-1), 1)


def macro_f1_from_counts(cm: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes present in truth or prediction (sklearn, zero_division=0)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denominator = cm.sum(axis=-1) + cm.sum(axis=-2)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    return f1.sum(axis=-1) / np.maximum((denominator > 0).sum(axis=-1), 1)


BOOTSTRAP_METRICS = {"balanced_accuracy": balanced_accuracy_from_counts, "macro_f1": macro_f1_from_counts}


def bootstrap_interval(y_true: np.ndarray, y_pred: np.ndarray, metric: Callable[[np.ndarray], np.ndarray], *,
                       n_classes: int, n_resamples: int, seed: int) -> dict[str, Any]:
    """BCa bootstrap interval of ``metric`` (confusion counts -> score), resampling (truth, prediction) pairs.

    The percentile interval is too narrow on a few dozen images; BCa corrects its bias
    and skew. BCa is undefined when the resampled scores do not vary (every prediction
    right, say): then the percentile interval of the same resamples is returned, and
    ``method`` and ``fallback`` say so.
    """

    def statistic(true: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
        return metric(confusion_counts(np.moveaxis(true, axis, -1), np.moveaxis(pred, axis, -1), n_classes))

    common = dict(paired=True, vectorized=True, confidence_level=CONFIDENCE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # handled below
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 in the acceleration of a constant jackknife
        result = stats.bootstrap((y_true, y_pred), statistic, n_resamples=n_resamples, method="BCa",
                                 rng=np.random.default_rng(seed), **common)
    low, high = result.confidence_interval
    if np.isfinite(low) and np.isfinite(high):
        return {"low": float(low), "high": float(high), "method": "BCa"}
    # the same resamples, read by percentile (bootstrap_result with no new resamples)
    percentile = stats.bootstrap((y_true, y_pred), statistic, n_resamples=0, method="percentile",
                                 bootstrap_result=result, **common)
    why = ("every resample gives the same score" if np.ptp(result.bootstrap_distribution) == 0
           else "its bias correction or acceleration is not finite on these data")
    low, high = percentile.confidence_interval
    return {"low": float(low), "high": float(high), "method": "percentile", "fallback": f"BCa undefined: {why}"}


def bootstrap_intervals(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int, n_resamples: int,
                        seed: int) -> dict[str, dict[str, Any]]:
    """BCa intervals of balanced accuracy and macro-F1; both read the same seeded resamples of images."""
    return {name: bootstrap_interval(y_true, y_pred, metric, n_classes=n_classes, n_resamples=n_resamples, seed=seed)
            for name, metric in BOOTSTRAP_METRICS.items()}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, *, n_bins: int = 10) -> float:
    """Top-label ECE: the bin-weighted gap between confidence and accuracy."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test on paired right/wrong outcomes of two classifiers on the same images.

    Only discordant images count: ``b`` where A alone is right, ``c`` where B alone
    is right. Under the null each is Binomial(b + c, 1/2).
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired outcomes differ in length: {correct_a.shape} vs {correct_b.shape}")
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": p}


def corrected_cv_interval(scores: np.ndarray, *, test_fraction: float) -> tuple[float, float]:
    """Interval for a mean over (repeated) k-fold scores, with Nadeau & Bengio's correction.

    Folds share training data, so their scores are correlated and the naive
    std/sqrt(J) interval is too narrow; the corrected variance is
    (1/J + n_test/n_train) * s^2.
    """
    scores = np.asarray(scores, float)
    j = len(scores)
    if j < 2:
        return (float("nan"), float("nan"))
    ratio = test_fraction / (1 - test_fraction)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df=j - 1) * np.sqrt((1 / j + ratio) * scores.var(ddof=1))
    mean = scores.mean()
    return (float(max(0.0, mean - half)), float(min(1.0, mean + half)))


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def held_out_metrics(y_true: np.ndarray, proba: np.ndarray, y_pred: np.ndarray, *,
                     n_bootstrap: int, ece_bins: int, seed: int) -> dict[str, object]:
    """Scores on a held-out split, each with its 95% interval, plus calibration."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    intervals = bootstrap_intervals(y_true, y_pred, n_classes=proba.shape[1], n_resamples=n_bootstrap, seed=seed)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "accuracy_ci95": dict(zip(("low", "high"), wilson_interval(int(np.sum(y_true == y_pred)), len(y_true)))),
        "balanced_accuracy": balanced,
        "balanced_accuracy_ci95": intervals["balanced_accuracy"],
        "macro_f1": macro_f1(y_true, y_pred),
        "macro_f1_ci95": intervals["macro_f1"],
        "log_loss": float(log_loss(y_true, proba, labels=np.arange(proba.shape[1]))),
        "ece": expected_calibration_error(y_true, proba, n_bins=ece_bins),
    }


def corrected_paired_ttest(scores_a: np.ndarray, scores_b: np.ndarray, *, test_fraction: float) -> dict[str, float]:
    """Nadeau & Bengio's corrected resampled t-test on per-fold scores of two models on the *same* folds.

    The differences d_j of J folds are correlated (the training sets overlap), so the
    variance of their mean is (1/J + n_test/n_train) * s^2, not s^2/J; t has J - 1
    degrees of freedom. Two-sided. Identical scores on every fold give p = 1.
    """
    diff = np.asarray(scores_a, float) - np.asarray(scores_b, float)
    if diff.ndim != 1 or len(diff) < 2:
        raise ValueError(f"need the same two or more folds for both models, got {np.shape(scores_a)} and "
                         f"{np.shape(scores_b)}")
    j, mean, var = len(diff), float(diff.mean()), float(diff.var(ddof=1))
    ratio = test_fraction / (1 - test_fraction)
    if var == 0:
        return {"mean_difference": mean, "t": 0.0 if mean == 0 else float(np.sign(mean) * np.inf),
                "p_value": 1.0 if mean == 0 else 0.0, "df": j - 1}
    t = mean / np.sqrt((1 / j + ratio) * var)
    return {"mean_difference": mean, "t": float(t), "p_value": float(2 * stats.t.sf(abs(t), df=j - 1)), "df": j - 1}


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: family-wise error held at alpha across all the comparisons shown."""
    p = np.asarray(p_values, float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted
