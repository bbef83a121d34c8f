"""Temperature scaling of a classifier's probabilities, fitted on its grouped out-of-fold probabilities.

One number, the temperature T: calibrated probabilities are softmax(log p / T). T > 1 softens
an over-confident classifier, T < 1 sharpens a timid one; the ranking of the classes never
changes, so accuracy does not either. It is fitted on the out-of-fold probabilities of the
grouped CV (each train image scored by a fold that saw no copy of its picture), never on the
valid or test images it is judged on. A probability of exactly 0 (kNN's votes give them) is
floored at ``FLOOR`` first, else no temperature could lift it and one wrong vote costs an
infinite log loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import log_loss

from pipeline.evaluate.statistics import expected_calibration_error

FLOOR = 1e-4
MAX_LOG_T = np.log(100.0)  # T within [1/100, 100]: beyond, the fit is chasing one image


def scaled(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``proba`` at ``temperature``: softmax(log(max(p, FLOOR)) / T), rows summing to 1."""
    return np.exp(log_softmax(np.log(np.maximum(proba, FLOOR)) / temperature, axis=1))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the log loss of ``proba`` (rows of class probabilities) for labels ``y``."""
    logs = np.log(np.maximum(proba, FLOOR))

    def loss(log_t: float) -> float:
        return -float(np.mean(log_softmax(logs / np.exp(log_t), axis=1)[np.arange(len(y)), y]))

    return float(np.exp(minimize_scalar(loss, bounds=(-MAX_LOG_T, MAX_LOG_T), method="bounded").x))


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance of the probability rows from the one-hot labels."""
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def probability_scores(y: np.ndarray, proba: np.ndarray, *, ece_bins: int) -> dict[str, float]:
    return {"log_loss": float(log_loss(y, proba, labels=np.arange(proba.shape[1]))),
            "ece": expected_calibration_error(y, proba, n_bins=ece_bins), "brier": brier(y, proba)}


def calibration_report(temperature: float, held_out: dict[str, tuple[np.ndarray, np.ndarray]], *,
                       ece_bins: int) -> dict[str, Any]:
    """The temperature and, per held-out split, log loss, ECE and Brier score before and after it."""
    report: dict[str, Any] = {"method": "temperature scaling on the grouped CV's out-of-fold probabilities",
                              "temperature": temperature, "floor": FLOOR}
    for split, (y, proba) in held_out.items():
        report[split] = {"before": probability_scores(y, proba, ece_bins=ece_bins),
                         "after": probability_scores(y, scaled(proba, temperature), ece_bins=ece_bins)}
    return report
