import numpy as np
import pytest

from pipeline.classifiers import CLASSIFIERS, build_classifier, select_and_fit, selected_params
from pipeline.params import ParamsError

GRIDS = {"logreg": {"C": [0.01, 1.0]}, "svm": {"C": [0.1, 1.0]}, "knn": {"n_neighbors": [3, 7], "weights": ["uniform"]}}


def clusters(n_per_class, seed, dim=64, k=4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(k, dim)) * 3
    y = np.repeat(np.arange(k), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_each_classifier_learns_constructed_embeddings(name):
    X, y = clusters(30, seed=0)
    Xt, yt = clusters(20, seed=1)
    pipeline, grid = build_classifier(name, GRIDS[name])
    groups = np.arange(len(y)) // 2
    model = select_and_fit(pipeline, grid, X, y, groups, inner_folds=3, seed=0)
    assert (model.predict(Xt) == yt).mean() > 0.9
    assert set(selected_params(model, grid)) == set(GRIDS[name])


def test_svm_probabilities_are_calibrated_on_grouped_folds():
    X, y = clusters(30, seed=0)
    groups = np.arange(len(y)) // 3
    pipeline, grid = build_classifier("svm", {"C": [1.0]})
    chosen = select_and_fit(pipeline, grid, X, y, groups, inner_folds=3, seed=0)
    model = CLASSIFIERS["svm"].finalize(chosen, X, y, groups, inner_folds=3, seed=0)
    for train, test in model.cv:
        assert not set(groups[train]) & set(groups[test])
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == model.predict(X)).all()


@pytest.mark.parametrize(
    ("name", "grid", "message"),
    [
        ("forest", {"n": [1]}, r"Unknown classifier 'forest'; choose one of \['knn', 'logreg', 'svm'\]"),
        ("svm", {"gamma": [1]}, r"Unknown key\(s\) \['classical.svm.gamma'\]; allowed: \['C'\]"),
        ("svm", {"C": [-1.0]}, r"classical.svm.C=\[-1.0\] is invalid: values must be positive numbers"),
        ("knn", {"n_neighbors": [0]}, r"classical.knn.n_neighbors=\[0\] is invalid: values must be integers >= 1"),
        ("knn", {"weights": ["near"]}, r"classical.knn.weights=\['near'\] is invalid"),
        ("logreg", {}, r"classical.logreg must map grid keys"),
    ],
)
def test_bad_grids_name_the_parameter(name, grid, message):
    with pytest.raises(ParamsError, match=message):
        build_classifier(name, grid)


def test_knn_k_larger_than_the_smallest_training_fold_is_refused_before_fitting():
    from pipeline.classifiers import check_grid_fits, smallest_training_fold

    y = np.repeat(np.arange(4), 10)
    groups = np.arange(40) // 2
    smallest = smallest_training_fold(y, groups, folds=4, repeats=1, inner_folds=2, seed=0)
    assert 10 <= smallest <= 20  # 3/4 of 40 rows, then about half of that
    assert smallest_training_fold(y, groups, folds=4, repeats=1, inner_folds=2, seed=0, copies=3) == 3 * smallest
    _, grid = build_classifier("knn", {"n_neighbors": [3, smallest + 1]})
    with pytest.raises(ParamsError, match=rf"classical.knn.n_neighbors=\[{smallest + 1}\] is larger than the "
                                          rf"smallest training fold \({smallest} rows"):
        check_grid_fits("knn", grid, smallest)
    check_grid_fits("knn", build_classifier("knn", {"n_neighbors": [smallest]})[1], smallest)
