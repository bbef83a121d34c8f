"""Suspected label errors from grouped out-of-fold probabilities, and temperature scaling."""

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.evaluate.calibration import calibration_report, fit_temperature, scaled
from pipeline.evaluate.label_issues import find_suspects, picture_probabilities
from pipeline.evaluate.protocol import cv_scores

CLASSES = ["a", "b", "c", "d"]


def _pictures(rng, *, pictures: int, copies: int, separation: float):
    """Features of ``pictures`` pictures with ``copies`` near-identical images each, classes ``separation`` apart."""
    centres = separation * rng.standard_normal((len(CLASSES), 16))
    labels = np.repeat(np.arange(pictures) % len(CLASSES), copies)
    groups = np.repeat(np.arange(pictures), copies)
    picture_points = centres[np.arange(pictures) % len(CLASSES)] + rng.standard_normal((pictures, 16))
    X = picture_points[groups] + 0.05 * rng.standard_normal((len(groups), 16))
    return X, labels, groups


def _out_of_fold(X, y, groups, seed=0):
    """Grouped 5-fold out-of-fold probabilities of a logistic regression, through the pipeline's own CV code."""
    splits = list(StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(X, y, groups))
    _, _, oof = cv_scores(lambda X, y, g: LogisticRegression(max_iter=500).fit(X, y), X, y, groups, splits)
    paths = [f"train/{CLASSES[label]}/{i}.jpg" for i, label in enumerate(y)]
    frame = pd.DataFrame({"image": paths, "true": [CLASSES[label] for label in y]})
    return pd.concat([frame, pd.DataFrame(oof.proba, columns=[f"p_{c}" for c in CLASSES])], axis=1)


def test_where_the_classifier_is_strong_nearly_every_flipped_picture_is_found():
    rng = np.random.default_rng(0)
    X, y, groups = _pictures(rng, pictures=200, copies=3, separation=3.0)
    flipped = rng.choice(200, size=10, replace=False)
    noisy = y.copy()
    for picture in flipped:  # every copy of the picture gets the same wrong label
        noisy[groups == picture] = (y[groups == picture][0] + 1 + rng.integers(3)) % 4
    result = find_suspects(_out_of_fold(X, noisy, groups), groups, CLASSES, pretrained=True, alpha=0.01)
    assert result.summary["structure"] is True and result.summary["pictures"] == 200
    top = set(result.table["picture"].head(10))
    assert len(top & set(flipped)) >= 9, (sorted(top), sorted(flipped))
    flagged = set(result.table[result.table["flagged"]]["picture"])
    assert len(flagged & set(flipped)) >= 8 and len(flagged - set(flipped)) <= 2, (sorted(flagged), sorted(flipped))
    row = result.table.iloc[0]
    assert row["images"] == 3 and row["suggested"] != row["given"] and len(row["paths"].split(";")) == 3


def test_a_picture_counts_once_whatever_its_copies():
    oof = pd.DataFrame({"image": ["x1", "x2", "x3", "y1"], "true": ["a", "a", "b", "c"],
                        "p_a": [0.6, 0.2, 0.4, 0.1], "p_b": [0.4, 0.8, 0.6, 0.8], "p_c": [0, 0, 0, 0.1]})
    table = picture_probabilities(oof, np.array(["x", "x", "x", "y"]), ["a", "b", "c"])
    assert table["picture"].tolist() == ["x", "y"] and table["images"].tolist() == [3, 1]
    assert table["given"].tolist() == ["a", "c"]  # the most common label of its images
    assert np.allclose(table["p_a"], [0.4, 0.1])


def test_without_structure_no_suspect_is_named():
    rng = np.random.default_rng(1)
    X, y, groups = _pictures(rng, pictures=120, copies=2, separation=0.0)  # features carry no class
    X = rng.standard_normal(X.shape)
    result = find_suspects(_out_of_fold(X, y, groups), groups, CLASSES, pretrained=True, alpha=0.01)
    assert result.summary["structure"] is False and "not above the largest class" in result.summary["why"]
    assert result.table.empty
    strong = _pictures(rng, pictures=120, copies=2, separation=3.0)
    random_weights = find_suspects(_out_of_fold(*strong), strong[2], CLASSES, pretrained=False, alpha=0.01)
    assert random_weights.summary["structure"] is False and "random" in random_weights.summary["why"]


def test_temperature_scaling_recovers_an_overconfident_classifier_and_keeps_its_ranking():
    rng = np.random.default_rng(2)
    logits = 2.0 * rng.standard_normal((4000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(logits / 2.5, axis=1)])  # true probabilities: T = 2.5
    proba = softmax(logits, axis=1)  # what the classifier says: over-confident
    temperature = fit_temperature(proba[:2000], y[:2000])
    assert 2.2 < temperature < 2.8
    calibrated = scaled(proba[2000:], temperature)
    assert np.allclose(calibrated.sum(axis=1), 1) and (calibrated.argmax(axis=1) == proba[2000:].argmax(axis=1)).all()
    report = calibration_report(temperature, {"test": (y[2000:], proba[2000:])}, ece_bins=10)
    before, after = report["test"]["before"], report["test"]["after"]
    assert after["ece"] < before["ece"] / 2 and after["log_loss"] < before["log_loss"]
    assert after["brier"] < before["brier"]
