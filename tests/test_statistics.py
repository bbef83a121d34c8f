import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipeline.evaluate.statistics import (
    balanced_accuracy_from_counts,
    bootstrap_intervals,
    confusion_counts,
    corrected_cv_interval,
    corrected_paired_ttest,
    expected_calibration_error,
    held_out_metrics,
    holm,
    macro_f1_from_counts,
    mcnemar_exact,
    wilson_interval,
)


def test_wilson_interval_of_21_of_38_matches_the_closed_form():
    low, high = wilson_interval(21, 38)
    assert (round(low, 3), round(high, 3)) == (0.397, 0.699)
    z, n, p = 1.959964, 38, 21 / 38
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert low == pytest.approx(centre - half, abs=1e-6) and high == pytest.approx(centre + half, abs=1e-6)


def test_wilson_interval_stays_inside_unit_range_at_the_extremes():
    assert wilson_interval(0, 38)[0] == pytest.approx(0.0)
    assert wilson_interval(38, 38)[1] == pytest.approx(1.0)
    assert 0 < wilson_interval(0, 38)[1] < 0.1


def test_mcnemar_exact_on_hand_made_tables():
    # A alone right on 1 image, B alone right on 7, both right on 20, both wrong on 10.
    a = np.array([1] * 1 + [0] * 7 + [1] * 20 + [0] * 10, bool)
    b = np.array([0] * 1 + [1] * 7 + [1] * 20 + [0] * 10, bool)
    result = mcnemar_exact(a, b)
    assert result == {"a_only": 1, "b_only": 7, "p_value": pytest.approx(18 / 256)}
    assert mcnemar_exact(np.zeros(6, bool), np.ones(6, bool))["p_value"] == pytest.approx(2 / 64)
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_corrected_cv_interval_applies_nadeau_bengio_variance():
    low, high = corrected_cv_interval(np.array([0.5, 0.6, 0.7, 0.6, 0.6]), test_fraction=0.2)
    assert (low, high) == pytest.approx((0.46830, 0.73170), abs=1e-4)
    naive_half = 2.776445 * np.sqrt(0.005 / 5)
    assert high - 0.6 > naive_half  # wider than the naive interval, as it must be


def test_expected_calibration_error_on_two_predictions():
    proba = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(np.array([0, 1]), proba, n_bins=10) == pytest.approx(0.35)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_metrics_equal_sklearn_even_with_missing_classes(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, size=(50, 12))  # label 3 never true
    y_pred = rng.integers(0, 4, size=(50, 12))
    cm = confusion_counts(y_true, y_pred, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_bal = [balanced_accuracy_score(t, p) for t, p in zip(y_true, y_pred)]
    expected_f1 = [f1_score(t, p, average="macro", zero_division=0) for t, p in zip(y_true, y_pred)]
    np.testing.assert_allclose(balanced_accuracy_from_counts(cm), expected_bal)
    np.testing.assert_allclose(macro_f1_from_counts(cm), expected_f1)


def _noisy_predictions(seed=0, n=38, right=0.7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    return y, np.where(rng.random(n) < right, y, (y + rng.integers(1, 4, n)) % 4)


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded():
    y, pred = _noisy_predictions()
    a = bootstrap_intervals(y, pred, n_classes=4, n_resamples=500, seed=1)
    assert a == bootstrap_intervals(y, pred, n_classes=4, n_resamples=500, seed=1)
    assert a != bootstrap_intervals(y, pred, n_classes=4, n_resamples=500, seed=2)
    assert a["balanced_accuracy"]["low"] < balanced_accuracy_score(y, pred) < a["balanced_accuracy"]["high"]
    assert a["balanced_accuracy"]["method"] == a["macro_f1"]["method"] == "BCa"


@pytest.mark.parametrize(("name", "score"), [
    ("balanced_accuracy", balanced_accuracy_score),
    ("macro_f1", lambda t, p: f1_score(t, p, average="macro", zero_division=0)),
])
def test_bca_interval_equals_scipy_bootstrap_of_the_sklearn_score_on_the_same_pairs(name, score):
    """Worked numbers: 38 images, 4 classes, ~70% right. scipy resamples (truth, prediction) pairs and
    scores each resample with sklearn, one at a time; ours scores them all at once from confusion counts."""
    y, pred = _noisy_predictions(seed=3)

    def statistic(t, p):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resample may lack a class
            return score(t, p)

    common = dict(paired=True, vectorized=False)
    result = stats.bootstrap((y, pred), statistic, n_resamples=300, method="BCa", rng=np.random.default_rng(7),
                             **common)
    ours = bootstrap_intervals(y, pred, n_classes=4, n_resamples=300, seed=7)[name]
    assert ours["method"] == "BCa"
    expected = result.confidence_interval
    assert (ours["low"], ours["high"]) == pytest.approx((expected.low, expected.high), abs=1e-12)
    percentile = stats.bootstrap((y, pred), statistic, n_resamples=0, method="percentile", bootstrap_result=result,
                                 **common).confidence_interval  # the same resamples, read the old way
    assert (ours["low"], ours["high"]) != pytest.approx((percentile.low, percentile.high), abs=1e-6)


def test_bca_falls_back_to_percentile_and_says_so_when_every_prediction_is_right():
    y, _ = _noisy_predictions()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the degenerate case is handled, not warned about
        intervals = bootstrap_intervals(y, y, n_classes=4, n_resamples=300, seed=0)
    for interval in intervals.values():
        assert interval["method"] == "percentile"
        assert interval["fallback"] == "BCa undefined: every resample gives the same score"
        assert (interval["low"], interval["high"]) == (1.0, 1.0)
    one_wrong = y.copy()
    one_wrong[0] = (y[0] + 1) % 4  # the scores vary again: BCa is defined
    assert bootstrap_intervals(y, one_wrong, n_classes=4, n_resamples=300, seed=0)["macro_f1"]["method"] == "BCa"


def test_held_out_metrics_report_every_key_with_intervals():
    y = np.array([0, 1, 2, 3] * 5)
    proba = np.eye(4)[y] * 0.7 + 0.075
    m = held_out_metrics(y, proba, proba.argmax(1), n_bootstrap=200, ece_bins=10, seed=0)
    assert m["accuracy"] == 1.0 and m["n"] == 20
    assert set(m["accuracy_ci95"]) == {"low", "high"}
    assert m["balanced_accuracy_ci95"]["method"] == m["macro_f1_ci95"]["method"] == "percentile"  # all right
    assert m["macro_f1_ci95"]["fallback"].startswith("BCa undefined")
    assert m["ece"] == pytest.approx(0.225)
    assert m["log_loss"] == pytest.approx(-np.log(0.775), rel=1e-6)


def test_corrected_paired_ttest_on_worked_numbers():
    """Differences 0.10, -0.02, 0.10, 0.05, 0.05 over 5 folds, a fold 1/5 of the data: mean 0.056, s^2 0.00243,
    corrected variance (1/5 + 0.2/0.8) s^2 = 0.0010935, t = 0.056 / 0.033068 = 1.6935 on 4 degrees of freedom."""
    a = np.array([0.80, 0.70, 0.90, 0.85, 0.75])
    b = np.array([0.70, 0.72, 0.80, 0.80, 0.70])
    result = corrected_paired_ttest(a, b, test_fraction=0.2)
    assert result["mean_difference"] == pytest.approx(0.056)
    assert result["t"] == pytest.approx(1.69347, abs=1e-4) and result["df"] == 4
    assert result["p_value"] == pytest.approx(2 * stats.t.sf(1.69347, 4), abs=1e-5)
    naive = stats.ttest_rel(a, b).pvalue  # the uncorrected test is overconfident on overlapping folds
    assert naive < result["p_value"]
    assert corrected_paired_ttest(a, a, test_fraction=0.2)["p_value"] == 1.0
    assert corrected_paired_ttest(b, a, test_fraction=0.2)["t"] == pytest.approx(-result["t"])


def test_holm_on_worked_numbers():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04; running maximum 0.02, 0.03, 0.06, 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert holm([]).shape == (0,)
