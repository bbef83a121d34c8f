import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from pipeline.common.features import Features, SplitFeatures
from pipeline.common.groups import GroupsError, read_groups
from pipeline.common.params import CVParams, EvaluationParams
from pipeline.evaluate.classifiers import _GRIDS
from pipeline.evaluate.grid_scores import fit_chosen, search_shared_features
from pipeline.evaluate.protocol import cv_scores, evaluate_classifier, with_views
from pipeline.evaluate.splits import RepeatedStratifiedGroupKFold

CV = CVParams(folds=4, repeats=2, inner_folds=3, seed=0, n_jobs=1)
EVAL = EvaluationParams(n_bootstrap=200, ece_bins=10, seed=0, equivalence=0.01)


def copies_dataset(n_pictures=60, copies=5, dim=32, seed=0):
    """Pictures with random labels, each present as near-identical copies: nothing to learn,
    everything to memorise. Only a leaky split can score above chance."""
    rng = np.random.default_rng(seed)
    originals = rng.normal(size=(n_pictures, dim))
    labels = rng.integers(0, 4, n_pictures)
    X = np.repeat(originals, copies, axis=0) + rng.normal(scale=0.01, size=(n_pictures * copies, dim))
    groups = np.repeat([f"p{i}" for i in range(n_pictures)], copies)
    held = SplitFeatures(X=rng.normal(size=(20, dim)).astype(np.float32), y=rng.integers(0, 4, 20),
                         paths=[f"h{i}.jpg" for i in range(20)])
    train = SplitFeatures(X=X.astype(np.float32), y=np.repeat(labels, copies),
                          paths=[f"t{i}.jpg" for i in range(len(X))])
    return Features(splits={"train": train, "valid": held, "test": held}, classes=list("ABCD"), meta={}), groups


def shared_folds(feats, groups, cv):
    """The grouped folds the folds stage would write for these params."""
    y = feats["train"].y
    return list(RepeatedStratifiedGroupKFold(n_splits=cv.folds, n_repeats=cv.repeats, random_state=cv.seed).split(
        y, y, groups))


def evaluate(model, fit, feats, groups, cv, views=None):
    """The train stage's order: the grouped CV of ``fit`` on the shared folds, then the rest of the protocol."""
    grouped, _, out_of_fold = cv_scores(fit, feats["train"].X, feats["train"].y, groups,
                                        shared_folds(feats, groups, cv), views=views, n_jobs=cv.n_jobs)
    return evaluate_classifier(model=model, fit_fixed=fit, grouped=grouped, out_of_fold=out_of_fold, features=feats,
                               groups=groups, cv=cv, evaluation=EVAL, views=views)


def knn(ks, X, y, groups, *, inner_folds):
    """The registry's kNN pipeline with k chosen among ``ks`` by grouped CV."""
    pipeline = _GRIDS["knn"].pipeline()
    chosen, _ = search_shared_features(pipeline, {"clf__n_neighbors": ks}, X, y, groups, inner_folds=inner_folds, seed=0)
    return fit_chosen(pipeline, chosen, X, y)


def test_grouped_cv_sees_chance_where_leaky_cv_sees_memorisation():
    feats, groups = copies_dataset()
    model = knn([1], feats["train"].X, feats["train"].y, groups, inner_folds=3)

    def fit(X, y, g):
        return clone(model).fit(X, y)

    result = evaluate(model, fit, feats, groups, CV)
    m = result.metrics
    assert m["cv_leaky"]["accuracy_mean"] > 0.95
    assert m["cv"]["accuracy_mean"] < 0.45
    assert m["cv"]["n_folds"] == 8 and m["cv"]["n_groups"] == 60
    low, high = m["cv"]["accuracy_ci95"]["low"], m["cv"]["accuracy_ci95"]["high"]
    assert low <= m["cv"]["accuracy_mean"] <= high
    assert set(m) >= {"cv", "cv_leaky", "valid", "test"}
    assert list(result.predictions.columns) == ["image", "split", "true", "predicted", "p_A", "p_B", "p_C", "p_D"]
    assert (result.predictions["split"] == "test").sum() == 20


def test_nested_selection_receives_only_training_fold_groups():
    feats, groups = copies_dataset(n_pictures=24, copies=3)
    seen = []

    def fit(X, y, g):
        seen.append(set(g))
        return knn([1, 3], X, y, g, inner_folds=2)

    evaluate(fit(feats["train"].X, feats["train"].y, groups), fit, feats, groups, CV)
    assert all(len(s) < 24 for s in seen[1:9])  # each grouped fold withholds whole pictures


def test_groups_file_must_cover_every_image(tmp_path):
    pd.DataFrame({"path": ["a.jpg", "b.jpg"], "group": ["a.jpg", "a.jpg"]}).to_csv(tmp_path / "g.csv", index=False)
    assert read_groups(tmp_path / "g.csv", ["b.jpg", "a.jpg"]).tolist() == ["a.jpg", "a.jpg"]
    with pytest.raises(GroupsError, match=r"1 image\(s\) have no group .* e.g. \['c.jpg'\]"):
        read_groups(tmp_path / "g.csv", ["a.jpg", "c.jpg"])
    with pytest.raises(GroupsError, match="run the audit stage"):
        read_groups(tmp_path / "missing.csv", ["a.jpg"])


def test_views_join_only_their_own_pictures_training_folds():
    feats, groups = copies_dataset(n_pictures=24, copies=2)
    n = len(groups)
    views = np.stack([feats["train"].X + 100 * (k + 1) for k in range(3)])  # view k of row i is recognisable
    received = []

    def fit(X, y, g):
        received.append((X, g))
        return knn([1], X, y, g, inner_folds=2)

    X, y, g = with_views(feats["train"].X, feats["train"].y, groups, views, np.arange(n))
    assert X.shape == (4 * n, 32) and (y[:n] == y[n:2 * n]).all() and (g[:n] == g[3 * n:]).all()
    cv = CVParams(folds=3, repeats=1, inner_folds=2, seed=0, n_jobs=1)
    result = evaluate(fit(X, y, g), fit, feats, groups, cv, views=views)
    assert result.metrics["cv"]["train_views"] == 3
    for X_fold, g_fold in received[1:4]:  # the grouped folds
        rows = len(X_fold) // 4
        originals = X_fold[:rows]
        for k in range(3):  # each view block is exactly the views of this fold's originals
            np.testing.assert_allclose(X_fold[(k + 1) * rows:(k + 2) * rows], originals + 100 * (k + 1), rtol=1e-5)
        assert set(g_fold) == set(g_fold[:rows])
    assert result.folds["n_test"].sum() == 2 * n  # held-out folds score originals only (grouped + leaky)


def test_out_of_fold_predictions_keep_every_repetition_and_agree_with_the_fold_scores():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    feats, groups = copies_dataset(n_pictures=40, copies=2)
    X, y = feats["train"].X, feats["train"].y
    folds = shared_folds(feats, groups, CV)
    for fit, has_proba in [(lambda X, y, g: LogisticRegression(max_iter=300).fit(X, y), True),
                           (lambda X, y, g: LinearSVC().fit(X, y), False)]:
        scores, _, oof = cv_scores(fit, X, y, groups, folds)
        assert oof.predicted.shape == (CV.repeats, len(y)) and (oof.predicted >= 0).all()  # each repetition, every row
        right = [(oof.predicted[k // CV.folds][test] == y[test]).mean() for k, (_, test) in enumerate(folds)]
        assert np.allclose(right, scores["accuracy"])  # the same predictions the fold scores count
        assert np.isnan(oof.proba).any() != has_proba  # probabilities where the fold models give them
        if has_proba:
            assert (oof.proba.argmax(axis=1) == oof.predicted[0]).all()
