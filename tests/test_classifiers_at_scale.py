"""The classifiers' paths for many rows: kNN's one search per fold, the SVM's Nystroem map and Newton solver,
and the Ray engine for the CV fits; each checked against the cell-by-cell, local way."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import LinearSVC

from pipeline.common.params import CVParams, ParamsError
from pipeline.evaluate import knn, svm
from pipeline.evaluate.classifiers import _GRIDS, CLASSIFIERS, TrainingData, parse_classifier_params
from pipeline.evaluate.grid_scores import fit_chosen
from pipeline.evaluate.protocol import cv_scores
from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold
from pipeline.evaluate.statistics import corrected_cv_interval


def pictures(n_pictures: int, *, copies: int = 3, dim: int = 48, spread: float = 0.6, seed: int = 0):
    """Rows in pictures of near-identical copies around 4 class centres (like augmented copies of a photo)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * spread
    labels = rng.integers(0, 4, size=n_pictures)
    picture = centres[labels] + rng.normal(size=(n_pictures, dim))
    groups = np.repeat(np.arange(n_pictures), copies)
    X = picture[groups] + 0.2 * rng.normal(size=(len(groups), dim))
    return X.astype(np.float32), labels[groups], groups


GRID = {"clf__n_neighbors": [1, 4, 9, 15], "clf__weights": ["uniform", "distance"]}


def test_one_search_per_fold_gives_grid_search_cv_scores_ranks_and_choice():
    X, y, groups = pictures(160)
    X[7] = X[300]  # an exact duplicate: distance ties and a zero distance for distance weighting
    X[8] = X[300]
    search = GridSearchCV(_GRIDS["knn"].pipeline(), GRID, scoring="accuracy",
                          cv=StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)).fit(X, y, groups=groups)
    chosen, record = knn.search(_GRIDS["knn"].pipeline(), GRID, X, y, groups, inner_folds=3, seed=0)
    np.testing.assert_array_equal(record["mean_accuracy"], search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(record["std_accuracy"], search.cv_results_["std_test_score"])
    np.testing.assert_array_equal(record["rank"], search.cv_results_["rank_test_score"])
    assert record["n_neighbors"].tolist() == list(search.cv_results_["param_clf__n_neighbors"])
    assert {f"clf__{k}": v for k, v in chosen.items()} == search.best_params_
    model = fit_chosen(_GRIDS["knn"].pipeline(), chosen, X, y)
    queries = pictures(20, seed=1)[0]
    np.testing.assert_array_equal(model.predict_proba(queries), search.best_estimator_.predict_proba(queries))


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_votes_follow_scikit_learn_rules_ties_and_zero_distances_included(weights):
    X, y, _ = pictures(60)
    X[5] = X[100]
    fitted = Pipeline([("l2", Normalizer()), ("clf", KNeighborsClassifier(n_neighbors=6, weights=weights))]).fit(X, y)
    queries = np.concatenate([X[100:110], pictures(10, seed=3)[0]])  # some at distance 0 from a training row
    dist, ind = fitted[-1].kneighbors(fitted[0].transform(queries), 6)
    proba, predicted = knn.votes(dist, ind, y, k=6, weights=weights, n_classes=4)
    np.testing.assert_allclose(proba, fitted.predict_proba(queries), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(predicted, fitted.predict(queries))


def data_of(X, y, groups):
    return TrainingData(X=X, y=y, groups=groups, X_valid=X[:8], y_valid=y[:8], n_classes=4, n_images=len(y), copies=1)


CV = CVParams(folds=3, repeats=1, inner_folds=3, seed=0, n_jobs=1)


def test_knn_searches_exactly_at_every_size_and_says_so():
    X, y, groups = pictures(400, copies=3)
    selection = CLASSIFIERS["knn"].select(parse_classifier_params("knn", {"n_neighbors": [5, 9], "weights": ["uniform"]}),
                                          data_of(X, y, groups), CV)
    assert selection.method == {"name": "exact search"}
    assert isinstance(selection.model[-1], knn.ExactKNeighborsClassifier)


@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_the_exact_classifier_is_scikit_learns_knn_up_to_float32_rounding(weights):
    X, y, _ = pictures(500, copies=1, dim=64)
    queries = Normalizer().fit_transform(pictures(200, copies=1, dim=64, seed=9)[0])
    rows = Normalizer().fit_transform(X)
    ours = knn.ExactKNeighborsClassifier(n_neighbors=7, weights=weights).fit(rows, y)
    theirs = KNeighborsClassifier(n_neighbors=7, weights=weights, algorithm="brute").fit(rows, y)
    dist, ind = ours.kneighbors(queries)
    their_dist, their_ind = theirs.kneighbors(queries)
    np.testing.assert_array_equal(ind, their_ind)  # no ties in these rows: the same neighbours, in the same order
    np.testing.assert_allclose(dist, their_dist, atol=1e-6)
    np.testing.assert_array_equal(ours.predict(queries), theirs.predict(queries))
    np.testing.assert_allclose(ours.predict_proba(queries), theirs.predict_proba(queries), atol=1e-6)


def test_exact_max_rows_below_the_number_of_classes_is_refused_by_name():
    X, y, groups = pictures(30)
    params = parse_classifier_params("svm", {"C": [1.0], "exact_max_rows": 3})
    with pytest.raises(ParamsError, match=r"classifiers.svm.exact_max_rows=3 is below the number of classes \(4\)"):
        CLASSIFIERS["svm"].select(params, data_of(X, y, groups), CV)


def test_nystroem_svm_lands_within_the_exact_svms_grouped_cv_interval():
    X, y, groups = pictures(200, dim=64, spread=0.35)
    folds = list(RepeatedStratifiedGroupKFold(n_splits=5, n_repeats=2, random_state=0).split(X, y, groups))
    scores = {}
    for name, exact_max_rows in [("exact", 10**6), ("nystroem", 10)]:
        params = parse_classifier_params("svm", {"C": [1.0], "exact_max_rows": exact_max_rows,
                                                 "n_components": 300})
        selection = CLASSIFIERS["svm"].select(params, data_of(X, y, groups), CV)
        assert selection.method["name"] == ("exact RBF SVC" if name == "exact" else "nystroem 300 + linear SVM")
        np.testing.assert_allclose(selection.model.predict_proba(X[:20]).sum(1), 1)  # calibrated (grouped folds)
        scores[name] = cv_scores(selection.fit_fold, X, y, groups, folds)[0]["accuracy"]
    low, high = corrected_cv_interval(scores["exact"], test_fraction=0.2)
    assert 0.4 < scores["exact"].mean() < 0.95  # a task with room to differ
    assert low <= scores["nystroem"].mean() <= high


@pytest.mark.parametrize("classes", [2, 4])
def test_newton_linear_svc_finds_linear_svcs_optimum(classes):
    X, y, _ = pictures(200, dim=64, spread=0.35)
    y = y % classes
    F = Nystroem(n_components=300, random_state=0).fit_transform(StandardScaler().fit_transform(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # every solve converges, warm ones included
        path = svm.NewtonLinearSVC().fit_path(F, y, [0.1, 1.0, 10.0, 100.0])  # each C from the last one's solution
    assert all(model.n_iter_ < model.max_iter for model in path)
    for C, warm in zip([0.1, 1.0, 10.0, 100.0], path):
        reference = LinearSVC(C=C, dual=False, tol=1e-8, max_iter=100_000).fit(F, y)
        for model in [svm.NewtonLinearSVC(C=C).fit(F, y), warm]:
            np.testing.assert_array_equal(model.predict(F), reference.predict(F))
            np.testing.assert_allclose(model.decision_function(F), reference.decision_function(F), atol=2e-3)


def test_svm_search_sharing_one_map_per_fold_scores_as_grid_search_cv():
    X, y, groups = pictures(200, dim=64, spread=0.35)
    params = parse_classifier_params("svm", {"C": [10.0, 0.1, 1.0], "exact_max_rows": 10, "n_components": 200})
    pipeline, _ = _GRIDS["svm"].build(params, len(X))
    search = GridSearchCV(pipeline, params.values, scoring="accuracy",
                          cv=StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)).fit(X, y, groups=groups)
    chosen, record = svm.search(pipeline, params.values, X, y, groups, inner_folds=3, seed=0)
    np.testing.assert_array_equal(record["mean_accuracy"], search.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(record["rank"], search.cv_results_["rank_test_score"])
    assert record["C"].tolist() == list(search.cv_results_["param_clf__C"])
    assert {f"clf__{k}": v for k, v in chosen.items()} == search.best_params_


@pytest.mark.slow
def test_the_ray_engine_gives_the_local_engines_scores_byte_for_byte():
    pytest.importorskip("ray")
    from pipeline.evaluate.engine import Engine

    X, y, groups = pictures(60, dim=16)
    folds = list(RepeatedStratifiedGroupKFold(n_splits=3, n_repeats=1, random_state=0).split(X, y, groups))
    for name, grid in [("logreg", {"C": [0.1, 1.0]}), ("knn", {"n_neighbors": [3, 5], "weights": ["distance"]})]:
        selection = CLASSIFIERS[name].select(parse_classifier_params(name, grid), data_of(X, y, groups), CV)
        local, _, _ = cv_scores(selection.fit_fold, X, y, groups, folds, n_jobs=2)
        remote, _, _ = cv_scores(selection.fit_fold, X, y, groups, folds, n_jobs=2, engine=Engine("ray"))
        assert local.to_csv() == remote.to_csv()


def test_unfitted_pipelines_switch_at_exact_max_rows():
    svm = _GRIDS["svm"]
    grid = parse_classifier_params("svm", {"C": [1.0], "exact_max_rows": 100, "n_components": 50})
    assert svm.build(grid, 100)[1] == "exact RBF SVC"
    pipeline, method = svm.build(grid, 101)
    assert method == "nystroem 50 + linear SVM" and pipeline.named_steps["nystroem"].n_components == 50
    assert isinstance(pipeline.named_steps["nystroem"], Nystroem)  # scikit-learn's own map
