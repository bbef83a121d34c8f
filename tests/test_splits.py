import numpy as np
import pytest

from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold


def _data(n_groups=40, copies=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), copies)
    y = np.repeat(rng.integers(0, 4, n_groups), copies)
    return np.zeros((len(y), 2)), y, groups


def test_no_group_is_ever_on_both_sides_and_every_image_is_tested_once_per_repeat():
    X, y, groups = _data()
    cv = RepeatedStratifiedGroupKFold(n_splits=5, n_repeats=3, random_state=0)
    splits = list(cv.split(X, y, groups))
    assert len(splits) == cv.get_n_splits() == 15
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    for r in range(3):
        tested = np.concatenate([test for _, test in splits[r * 5:(r + 1) * 5]])
        assert sorted(tested) == list(range(len(y)))


def test_repeats_shuffle_differently_and_are_reproducible():
    X, y, groups = _data()
    a = [t.tolist() for _, t in RepeatedStratifiedGroupKFold(n_splits=4, n_repeats=2, random_state=1).split(X, y, groups)]
    b = [t.tolist() for _, t in RepeatedStratifiedGroupKFold(n_splits=4, n_repeats=2, random_state=1).split(X, y, groups)]
    assert a == b
    assert a[:4] != a[4:]


def test_more_splits_than_groups_is_a_clear_error():
    X, y, groups = _data(n_groups=3)
    with pytest.raises(ValueError, match="n_splits=5 greater than the number of groups: 3"):
        list(RepeatedStratifiedGroupKFold(n_splits=5).split(X, y, groups))


def test_groups_are_required():
    X, y, _ = _data()
    with pytest.raises(ValueError, match="needs groups"):
        list(RepeatedStratifiedGroupKFold().split(X, y, None))


def test_the_shared_assignment_gives_back_the_splitters_own_folds(tmp_path):
    """What the folds stage writes, read back by every train stage, is exactly what the splitter made."""
    from pipeline.evaluate.splits import assign_folds, folds_frame, read_folds

    X, y, groups = _data()
    paths = [f"train/{i}.jpg" for i in range(len(y))]
    assignment = assign_folds(y, groups, folds=4, repeats=2, seed=3)
    folds_frame(paths, groups, assignment).to_csv(tmp_path / "folds.csv", index=False)
    expected = list(RepeatedStratifiedGroupKFold(n_splits=4, n_repeats=2, random_state=3).split(X, y, groups))
    shared = read_folds(tmp_path / "folds.csv", paths)
    assert len(shared) == len(expected) == 8
    for (train, test), (train_e, test_e) in zip(shared, expected):
        np.testing.assert_array_equal(train, train_e)
        np.testing.assert_array_equal(test, test_e)
    from pipeline.evaluate.splits import FoldsError

    with pytest.raises(FoldsError, match="lists other train images"):
        read_folds(tmp_path / "folds.csv", paths[::-1])
