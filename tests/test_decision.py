"""The decision statistics checked by simulation: datasets drawn from pairs whose true accuracies are known."""

import functools

import numpy as np

from pipeline.evaluate.decision import decide, equivalent_set, picture_totals

PICTURES = 150
RESAMPLES = 400


def simulate(rng, true_accuracy, *, pictures=PICTURES):
    """Right/wrong of each pair on every image: pictures of 1 to 3 images, a difficulty per picture shared by
    every pair (so the pairs are correlated, as classifiers on one dataset are), each pair's true accuracy."""
    copies = rng.integers(1, 4, size=pictures)
    groups = np.repeat(np.arange(pictures), copies)
    ease = rng.normal(0, 1.0, size=pictures)[groups]  # one picture is hard for every pair
    # logit shift per pair chosen so that its mean accuracy over pictures is its true accuracy
    shifts = [_shift_for(a) for a in true_accuracy]
    p = 1 / (1 + np.exp(-(ease[:, None] + np.asarray(shifts)[None, :])))
    return (rng.random(p.shape) < p).astype(float), groups


@functools.cache
def _shift_for(accuracy, draws=200_000):
    ease = np.random.default_rng(123).normal(0, 1.0, size=draws)
    low, high = -6.0, 6.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if np.mean(1 / (1 + np.exp(-(ease + mid)))) < accuracy else (low, mid)
    return (low + high) / 2


def run(true_accuracy, *, simulations, seed=0, margin=0.01, pictures=PICTURES):
    rng = np.random.default_rng(seed)
    return [decide(*simulate(rng, true_accuracy, pictures=pictures), margin=margin, n_resamples=RESAMPLES, seed=s)
            for s in range(simulations)]


def test_pairs_of_equal_accuracy_share_the_probability_of_being_best_and_none_is_left_out():
    results = run([0.6] * 4, simulations=600, seed=5)
    p_best = np.array([r["p_best"] for r in results])
    assert np.allclose(p_best.sum(axis=1), 1)
    assert np.abs(p_best.mean(axis=0) - 0.25).max() < 0.05  # near uniform, pair by pair
    everyone = np.mean([r["equivalent"].all() for r in results])
    assert everyone >= 0.95, everyone  # no pair is called worse than the best
    assert all(r["rank_low"].min() == 1 and r["rank_high"].max() == 4 for r in results[:20])


def test_a_pair_better_by_a_wide_margin_is_nearly_surely_best_and_alone_equivalent():
    results = run([0.75, 0.55, 0.55, 0.5], simulations=50)
    p_best = np.array([r["p_best"][0] for r in results])
    assert np.median(p_best) > 0.99 and p_best.min() > 0.95
    assert np.mean([r["equivalent"].tolist() == [True, False, False, False] for r in results]) >= 0.9
    assert all(r["rank_low"][0] == r["rank_high"][0] == 1 for r in results)


def test_the_equivalent_set_holds_the_truly_best_pair_in_at_least_95_percent_of_datasets():
    truth = [0.62, 0.61, 0.6, 0.58, 0.55, 0.62 - 0.001]  # a near tie for best, and pairs around it
    results = run(truth, simulations=300, seed=1)
    covered = np.mean([r["equivalent"][0] for r in results])
    assert covered >= 0.95, covered


def test_with_24_equal_pairs_the_winners_figure_is_inflated_and_the_corrected_one_is_not():
    results = run([0.6] * 24, simulations=60, seed=2)
    raw = np.mean([r["selection"]["observed"] for r in results])
    corrected = np.mean([r["selection"]["corrected"] for r in results])
    assert raw > 0.63  # the best of 24 equal pairs, picked on the folds that score it
    assert abs(corrected - 0.6) < 0.015, corrected
    for r in results[:5]:
        low, high = r["selection"]["corrected_ci95"]
        assert low < r["selection"]["corrected"] < high


def test_pictures_are_resampled_whole():
    correct = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    right, images = picture_totals(correct, np.array(["a", "a", "b"]))
    assert right.tolist() == [[2.0, 0.0], [0.0, 1.0]] and images.tolist() == [2.0, 1.0]


def test_identical_pairs_tie_and_a_single_pair_is_its_own_best():
    correct = np.tile((np.arange(40) % 3 > 0).astype(float)[:, None], (1, 2))
    result = decide(correct, np.arange(40), margin=0.01, n_resamples=200, seed=0)
    assert np.allclose(result["p_best"], 0.5) and result["equivalent"].all()
    assert result["rank_low"].tolist() == result["rank_high"].tolist() == [1, 1]
    alone = decide(correct[:, :1], np.arange(40), margin=0.01, n_resamples=200, seed=0)
    assert alone["p_best"].tolist() == [1.0] and alone["equivalent"].tolist() == [True]


def test_a_known_difference_is_its_own_bound():
    # pair 0 right everywhere pair 1 is, and on 10 more images: the resamples still vary the difference
    observed = np.array([0.8, 0.6])
    resampled = np.array([[0.8, 0.6]] * 100)  # no variation at all: the bounds are the differences themselves
    assert equivalent_set(observed, resampled, margin=0.01).tolist() == [True, False]
    assert equivalent_set(observed, resampled, margin=0.25).tolist() == [True, True]
