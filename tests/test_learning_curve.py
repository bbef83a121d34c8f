import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, learning_curve

from pipeline.common.features import Features, SplitFeatures
from pipeline.common.params import CVParams, EvaluationParams, LearningCurveParams
from pipeline.evaluate.classifiers import _GRIDS, parse_classifier_params
from pipeline.evaluate.learning_curve import (
    curve_folds,
    curve_points,
    draw_pictures,
    full_point,
    learning_curve_scores,
    reading,
)
from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold
from pipeline.evaluate.training import train_classifier

CV = CVParams(folds=4, repeats=1, inner_folds=2, seed=0, n_jobs=1)


def copies_dataset(*, n_pictures=80, copies=5, dim=16, seed=0, signal=0.0):
    """Pictures each present as near-identical copies; labels random unless ``signal`` > 0 moves each class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n_pictures)
    originals = rng.normal(size=(n_pictures, dim)) + signal * np.eye(4, dim)[labels]
    X = (np.repeat(originals, copies, axis=0) + rng.normal(scale=0.01, size=(n_pictures * copies, dim)))
    y = np.repeat(labels, copies)
    groups = np.repeat([f"p{i:03d}" for i in range(n_pictures)], copies)
    held = SplitFeatures(X=rng.normal(size=(16, dim)).astype(np.float32), y=np.arange(16) % 4,
                         paths=[f"h{i}.jpg" for i in range(16)])
    train = SplitFeatures(X=X.astype(np.float32), y=y, paths=[f"t{i}.jpg" for i in range(len(X))])
    return Features(splits={"train": train, "valid": held, "test": held}, classes=list("ABCD"), meta={}), groups


def test_row_sliced_learning_curve_sits_above_the_picture_sliced_one_when_copies_are_near_identical():
    """Random labels: nothing to learn. sklearn's curve slices rows, so each test fold holds copies of
    training pictures and 1-NN recalls them; the curve by pictures sees chance at every size."""
    feats, groups = copies_dataset()
    X, y = feats["train"].X, feats["train"].y
    fractions = [0.25, 0.5, 0.75]
    params = parse_classifier_params("knn", {"n_neighbors": [1]})
    sizes, _, test_scores = learning_curve(_GRIDS["knn"].pipeline().set_params(clf__n_neighbors=1), X, y,
                                           train_sizes=fractions, cv=StratifiedKFold(4, shuffle=True, random_state=0),
                                           shuffle=True, random_state=0)
    rows, skipped = learning_curve_scores("knn", params, features=feats, groups=groups, cv=CV, use_views=False,
                                          curve=LearningCurveParams(enabled=True, fractions=fractions, draws=1, seed=0))
    assert skipped == []
    by_pictures = rows.groupby("fraction")["accuracy"].mean()
    row_sliced = test_scores.mean(axis=1)
    assert (row_sliced > 0.6).all() and row_sliced[-1] > 0.9  # copies of its training rows, recalled
    assert (by_pictures < 0.45).all()  # chance is 0.25
    assert (row_sliced > by_pictures.to_numpy() + 0.3).all()
    assert (rows["images"] == 5 * rows["pictures"]).all()  # whole pictures: every copy came along
    assert sizes.tolist() == [75, 150, 225]  # sklearn's x-axis counts rows, copies included


def test_curve_folds_keep_whole_pictures_and_never_put_a_picture_on_both_sides():
    feats, groups = copies_dataset(n_pictures=60, copies=3)
    y = feats["train"].y
    plan, skipped = curve_folds(y, groups, fractions=[0.25, 0.5], draws=3, seed=0, cv=CV)
    assert len(plan) == 6 and skipped == []
    for point in plan:
        kept = groups[point.rows]
        assert np.array_equal(np.flatnonzero(np.isin(groups, kept)), point.rows)  # every copy of a kept picture
        assert len(np.unique(kept)) == point.pictures
        assert len(point.splits) == CV.folds and point.cv.repeats == 1
        for train, test in point.splits:
            assert not set(kept[train]) & set(kept[test])
            assert len(train) + len(test) == len(point.rows)


def test_draws_are_stratified_seeded_and_nested_within_a_draw():
    feats, groups = copies_dataset(n_pictures=60, copies=3)
    y = feats["train"].y
    a = draw_pictures(y, groups, fractions=[0.25, 0.5], seed=0, draw=0)
    assert set(a[0.25]) < set(a[0.5])
    labels = pd.Series(y, index=groups).groupby(level=0).first()
    per_class = labels.value_counts()
    kept = labels.loc[a[0.5]].value_counts()
    for c, n in per_class.items():
        assert kept[c] == max(1, int(np.floor(0.5 * n + 0.5)))
    assert all(np.array_equal(a[f], draw_pictures(y, groups, fractions=[0.25, 0.5], seed=0, draw=0)[f]) for f in a)
    assert not np.array_equal(a[0.5], draw_pictures(y, groups, fractions=[0.5], seed=0, draw=1)[0.5])


def test_a_fraction_too_small_for_the_folds_is_skipped_with_its_reason_and_the_rest_runs(caplog):
    feats, groups = copies_dataset(n_pictures=24, copies=2)
    plan, skipped = curve_folds(feats["train"].y, groups, fractions=[0.1, 0.5], draws=1, seed=0, cv=CV)
    assert [point.fraction for point in plan] == [0.5]
    [point] = skipped
    assert point["fraction"] == 0.1 and point["pictures"] == 4
    assert point["reason"].startswith("learning_curve.fractions: 0.1 of the pictures (4, draw 0) skipped: too few")
    assert point["reason"] in caplog.text


def test_the_full_point_is_the_train_stage_grouped_cv_figure_and_closes_the_curve():
    feats, groups = copies_dataset(n_pictures=40, copies=3, signal=3.0)
    params = parse_classifier_params("knn", {"n_neighbors": [1, 3]})
    cv = CVParams(folds=3, repeats=2, inner_folds=2, seed=0, n_jobs=1)
    y = feats["train"].y
    folds = list(RepeatedStratifiedGroupKFold(n_splits=3, n_repeats=2, random_state=0).split(y, y, groups))
    trained = train_classifier("knn", params, features=feats, groups=groups, folds=folds, cv=cv,
                               evaluation=EvaluationParams(n_bootstrap=100, ece_bins=10, seed=0, equivalence=0.01), use_views=False)
    metrics = trained.evaluation.metrics
    full = full_point("knn", metrics, n_images=len(groups))
    scores, _ = learning_curve_scores("knn", params, features=feats, groups=groups, cv=CV, use_views=False,
                                      curve=LearningCurveParams(enabled=True, fractions=[0.5, 1.0], draws=2, seed=0))
    assert set(scores["fraction"]) == {0.5}  # 1.0 is never recomputed
    points = curve_points("knn", scores, full)
    assert points["pictures"].tolist() == [sum(max(1, int(n / 2 + 0.5)) for n in np.bincount(
        feats["train"].y[::3])), 40]  # half of each class, rounded
    last = points.iloc[-1]
    assert last["accuracy"] == metrics["cv"]["accuracy_mean"] and last["source"] == "train stage"
    assert (last["accuracy_low"], last["accuracy_high"]) == tuple(metrics["cv"]["accuracy_ci95"].values())
    first = points.iloc[0]
    assert first["folds"] == 2 * CV.folds and first["accuracy_low"] < first["accuracy"] < first["accuracy_high"]
    assert first["accuracy"] > 0.6  # the signal is learnable even from half the pictures


def _points(*accuracies, half_width=0.05):
    return pd.DataFrame({"pictures": [50 * (i + 1) for i in range(len(accuracies))], "accuracy": accuracies,
                         "accuracy_low": [a - half_width for a in accuracies],
                         "accuracy_high": [a + half_width for a in accuracies]})


@pytest.mark.parametrize(("accuracies", "trend", "start"), [
    ((0.5, 0.6, 0.7), "rising", "Still rising at 100%"),
    ((0.5, 0.69, 0.7), "flat", "Flat over the last two points"),
    ((0.5, 0.8, 0.7), "falling", "Lower at 100%"),
])
def test_reading_follows_the_rule_on_the_last_step(accuracies, trend, start):
    """Noise = the two standard errors (half-width / 1.96) in quadrature: 0.036 here."""
    read = reading(_points(*accuracies))
    assert read["trend"] == trend and read["sentence"].startswith(start)
    assert read["noise"] == pytest.approx(np.hypot(0.05 / 1.959964, 0.05 / 1.959964), rel=1e-5)
    assert "from 100 to 150 pictures" in read["sentence"]


def test_reading_of_a_single_point_says_there_is_no_trend():
    assert reading(_points(0.5))["trend"] == "none"
