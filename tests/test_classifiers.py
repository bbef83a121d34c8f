import numpy as np
import pytest

from pipeline.common.params import CVParams, ParamsError
from pipeline.evaluate.classifiers import (
    CLASSIFIERS,
    TrainingData,
    calibrate_grouped,
    parse_classifier_params,
    selected_params,
)
from pipeline.evaluate.grid_scores import fit_chosen

GRIDS = {"logreg": {"C": [0.01, 1.0]}, "svm": {"C": [0.1, 1.0]}, "knn": {"n_neighbors": [3, 7], "weights": ["uniform"]},
         "head": {"dropout": 0.2, "lr": 0.01, "weight_decay": 0.0, "batch_size": 32, "max_epochs": 30, "patience": 5,
                  "seed": 0}}
CV = CVParams(folds=3, repeats=1, inner_folds=3, seed=0, n_jobs=1)


def clusters(n_per_class, seed, dim=64, k=4):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(k, dim)) * 3
    y = np.repeat(np.arange(k), n_per_class)
    return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_every_registered_classifier_has_a_grid_here():
    assert set(CLASSIFIERS) == set(GRIDS)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_each_classifier_selects_and_learns_constructed_embeddings(name):
    X, y = clusters(30, seed=0)
    Xv, yv = clusters(5, seed=2)
    Xt, yt = clusters(20, seed=1)
    data = TrainingData(X=X, y=y, groups=np.arange(len(y)) // 2, X_valid=Xv, y_valid=yv, n_classes=4,
                        n_images=len(y), copies=1)
    selection = CLASSIFIERS[name].select(parse_classifier_params(name, GRIDS[name]), data, CV)
    assert (selection.model.predict(Xt) == yt).mean() > 0.9
    np.testing.assert_allclose(selection.model.predict_proba(Xt).sum(1), 1, rtol=1e-5)
    expected = {"epochs"} if name == "head" else set(GRIDS[name])
    assert set(selection.selected) == expected
    assert len(selection.record) >= 1
    fold = selection.fit_fold(X[::2], y[::2], data.groups[::2])  # the whole procedure on a fold
    assert (fold.predict(Xt) == yt).mean() > 0.8


def test_grid_search_records_one_scored_row_per_candidate():
    X, y = clusters(30, seed=0)
    data = TrainingData(X=X, y=y, groups=np.arange(len(y)) // 2, X_valid=X[:4], y_valid=y[:4], n_classes=4,
                        n_images=len(y), copies=1)
    record = CLASSIFIERS["logreg"].select(parse_classifier_params("logreg", {"C": [0.01, 0.1, 1.0]}), data, CV).record
    assert record["C"].tolist() == [0.01, 0.1, 1.0]
    assert record["mean_accuracy"].between(0, 1).all() and record["rank"].min() == 1


def test_svm_probabilities_are_calibrated_on_grouped_folds():
    from pipeline.evaluate.classifiers import _GRIDS

    X, y = clusters(30, seed=0)
    groups = np.arange(len(y)) // 3
    chosen = fit_chosen(_GRIDS["svm"].pipeline(), {"C": 1.0}, X, y)  # a grid of one cell: its own choice
    model = calibrate_grouped(chosen, X, y, groups, inner_folds=3, seed=0)
    for train, test in model.cv:
        assert not set(groups[train]) & set(groups[test])
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1)
    assert (proba.argmax(1) == model.predict(X)).all()
    assert selected_params(chosen, {"clf__C": [1.0]}) == {"C": 1.0}


@pytest.mark.parametrize("name", ["logreg", "svm"])
def test_the_scaling_fitted_once_per_inner_fold_scores_and_chooses_as_grid_search_cv(name):
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    from pipeline.evaluate.classifiers import _GRIDS
    from pipeline.evaluate.grid_scores import search_shared_features

    rng = np.random.default_rng(3)
    X, y = clusters(30, seed=0)
    X += rng.normal(scale=4, size=X.shape).astype(np.float32)  # overlapping classes: the cells score differently
    groups = np.arange(len(y)) // 3
    grid = {"clf__C": [0.001, 0.1, 10.0]}
    pipeline = _GRIDS[name].pipeline()
    reference = GridSearchCV(pipeline, grid, scoring="accuracy", refit=False,
                             cv=StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)).fit(X, y, groups=groups)
    chosen, record = search_shared_features(pipeline, grid, X, y, groups, inner_folds=3, seed=0)
    assert len(set(record["mean_accuracy"])) > 1
    np.testing.assert_array_equal(record["mean_accuracy"], reference.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(record["std_accuracy"], reference.cv_results_["std_test_score"])
    np.testing.assert_array_equal(record["rank"], reference.cv_results_["rank_test_score"])
    assert {f"clf__{k}": v for k, v in chosen.items()} == reference.best_params_


@pytest.mark.parametrize(
    ("name", "grid", "message"),
    [
        ("forest", {"n": [1]}, r"Unknown classifier 'forest' .*choose one of \['head', 'knn', 'logreg', 'svm'\]"),
        ("svm", {"gamma": [1]}, r"Unknown key\(s\) \['classifiers.svm.gamma'\]; allowed: \['C', 'exact_max_rows', "
                                r"'n_components'\]"),
        ("svm", {"C": [1.0], "n_components": 0}, r"classifiers.svm.n_components=0 is invalid: it must be an integer"),
        ("knn", {"n_neighbors": [3], "exact_max_rows": 10}, r"Unknown key\(s\) \['classifiers.knn.exact_max_rows'\]"),
        ("svm", {"C": [-1.0]}, r"classifiers.svm.C=\[-1.0\] is invalid: values must be positive numbers"),
        ("knn", {"n_neighbors": [0]}, r"classifiers.knn.n_neighbors=\[0\] is invalid: values must be integers >= 1"),
        ("knn", {"weights": ["near"]}, r"classifiers.knn.weights=\['near'\] is invalid"),
        ("logreg", {}, r"classifiers.logreg must map grid keys"),
        ("head", {**GRIDS["head"], "lr": 0}, r"classifiers.head.lr=0.0 is out of range"),
        ("head", {"lr": 0.1}, r"Missing key\(s\) classifiers.head.dropout"),
    ],
)
def test_bad_params_name_the_parameter(name, grid, message):
    with pytest.raises(ParamsError, match=message):
        parse_classifier_params(name, grid)


def test_knn_k_larger_than_the_smallest_training_fold_is_dropped_and_said(caplog):
    from pipeline.evaluate.classifiers import smallest_training_fold

    y = np.repeat(np.arange(4), 10)
    groups = np.arange(40) // 2
    cv = CVParams(folds=4, repeats=1, inner_folds=2, seed=0, n_jobs=1)
    smallest = smallest_training_fold(y, groups, folds=4, repeats=1, inner_folds=2, seed=0)
    assert 10 <= smallest <= 20  # 3/4 of 40 rows, then about half of that
    X = np.random.default_rng(0).normal(size=(80, 8)).astype(np.float32)
    views = TrainingData(X=X, y=np.tile(y, 2), groups=np.tile(groups, 2), X_valid=X[:4], y_valid=y[:4], n_classes=4,
                         n_images=40, copies=2)  # one view per image doubles every fold
    too_big = 2 * smallest + 1
    selection = CLASSIFIERS["knn"].select(parse_classifier_params("knn", {"n_neighbors": [3, too_big]}), views, cv)
    assert selection.selected["n_neighbors"] == 3
    note = (f"classifiers.knn.n_neighbors=[{too_big}] dropped: larger than the smallest training fold "
            f"({2 * smallest} rows under the cv params); searching [3]")
    assert selection.method["notes"] == [note] and note in caplog.text
    only_too_big = CLASSIFIERS["knn"].select(parse_classifier_params("knn", {"n_neighbors": [too_big]}), views, cv)
    assert only_too_big.selected["n_neighbors"] == 2 * smallest  # clipped to what the smallest fold holds
    fits = CLASSIFIERS["knn"].select(parse_classifier_params("knn", {"n_neighbors": [2 * smallest]}), views, cv)
    assert "notes" not in fits.method
