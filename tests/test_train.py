"""The train and compare stages on embeddings made elsewhere, in the documented format."""

import json

import numpy as np
import pytest
import pandas as pd

from pipeline.common import features
from pipeline.evaluate.splits import assign_folds, folds_frame
from tests.conftest import DEFAULT_BACKBONE, SMALL_RUN, run_stage, write_params


def foreign_features(directory, seed=0, dim=48, groups_path=None, folds=3, repeats=1, train_pictures=40):
    """Embeddings 'from another backbone': class clusters, 3 copies per picture in train.

    Writes the features folder, a groups.csv (default: beside the folder) and beside that the shared
    folds.csv (SMALL_RUN's cv params), as the audit and folds stages would."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 2
    directory.mkdir(parents=True)
    rows, groups = [], []
    for split, pictures, copies in [("train", train_pictures, 3), ("valid", 12, 1), ("test", 16, 1)]:
        labels = np.arange(pictures) % 4
        X = np.repeat(centres[labels] + rng.normal(size=(pictures, dim)), copies, axis=0)
        X += rng.normal(scale=0.05, size=X.shape)
        out = features.allocate(directory, split, len(X), dim)
        out[:] = X
        out.flush()
        for i, label in enumerate(np.repeat(labels, copies)):
            path = f"{split}/{'ABCD'[label]}/{i // copies}-{i % copies}.jpg"
            rows.append((split, path, "ABCD"[label]))
            groups.append((path, split, f"{split}/{i // copies}"))
    pd.DataFrame(rows, columns=features.INDEX_COLUMNS).to_csv(directory / features.INDEX, index=False)
    (directory / features.META).write_text(json.dumps({"classes": list("ABCD"), "feature_dim": dim,
                                                       "pretrained": True, "arch": "elsewhere"}))
    groups_path = groups_path or directory.parent / "groups.csv"
    groups_path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(groups, columns=["path", "split", "group"]).to_csv(groups_path, index=False)
    train = [(r, g) for r, g in zip(rows, groups) if r[0] == "train"]
    y = np.array(["ABCD".index(r[2]) for r, _ in train])
    group_ids = np.array([g[2] for _, g in train])
    assignment = assign_folds(y, group_ids, folds=folds, repeats=repeats, seed=0)
    folds_frame([r[1] for r, _ in train], group_ids, assignment).to_csv(groups_path.parent / "folds.csv", index=False)
    return directory, groups_path


def test_classifiers_learn_foreign_embeddings_deterministically_and_compare_ranks_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign_features(tmp_path / "features" / DEFAULT_BACKBONE, groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    params = write_params(tmp_path / "params.yaml", SMALL_RUN)
    names = ["head", "logreg", "svm", "knn"]
    for name in names:
        assert run_stage("train", params, name, without=("--manifest",)) == 0
    metrics = {n: json.loads((tmp_path / "artifacts" / "metrics" / DEFAULT_BACKBONE / f"{n}.json").read_text()) for n in names}
    for name, m in metrics.items():
        assert m["test"]["accuracy"] >= 0.9, name
        assert m["cv"]["accuracy_mean"] >= 0.85, name
        assert m["pretrained"] is True
    assert len(pd.read_csv(tmp_path / "artifacts" / "selection" / "logreg" / f"{DEFAULT_BACKBONE}.csv")) == 2  # the grid's two values

    first = (tmp_path / "artifacts" / "metrics" / DEFAULT_BACKBONE / "svm.json").read_text()
    assert run_stage("train", params, "svm", without=("--manifest",)) == 0
    again = json.loads((tmp_path / "artifacts" / "metrics" / DEFAULT_BACKBONE / "svm.json").read_text())
    assert {**json.loads(first), "fit_seconds": 0} == {**again, "fit_seconds": 0}  # only timing differs

    assert run_stage("cost", params) == 0  # foreign features: the classifiers timed, no backbone to time
    cost = json.loads((tmp_path / "artifacts" / "cost" / f"{DEFAULT_BACKBONE}.json").read_text())
    assert "gflops" not in cost and "another producer" in cost["why"]
    assert all(c["ms_per_1000"] > 0 and c["model_bytes"] > 0 for c in cost["classifiers"].values())
    assert run_stage("compare", params, without=("--splits",)) == 0  # foreign features: no audit
    table = pd.read_csv(tmp_path / "artifacts" / "comparison.csv")
    assert table["p_best"].sum() == pytest.approx(1) and table["equivalent"].iloc[0]
    assert table["ms_per_image"].isna().all()  # no backbone timing, so no cost axis
    summary = json.loads((tmp_path / "artifacts" / "summary" / DEFAULT_BACKBONE / "logreg.json").read_text())
    assert set(summary) == {"cv_accuracy", "cv_low", "cv_high", "test_accuracy", "p_best", "equivalent",
                            "ms_per_image"}
    assert table["cv_accuracy"].is_monotonic_decreasing and table["rank"].tolist() == [1, 2, 3, 4]
    paired = json.loads((tmp_path / "artifacts" / "comparison.json").read_text())
    assert set(paired["pairs"][f"{DEFAULT_BACKBONE}/logreg"]["test"]) >= {"mcnemar_p_vs_head"}
    assert "RANDOM" not in (tmp_path / "artifacts" / "comparison.md").read_text()
    best = table["classifier"].iloc[0]
    for name in ("model.skops", "model.json"):  # the best pair's model folder, as the train stage wrote it
        assert (tmp_path / "artifacts" / "best_model" / name).read_bytes() == \
            (tmp_path / "artifacts" / "models" / DEFAULT_BACKBONE / best / name).read_bytes()


def test_compare_ranks_only_the_classifiers_in_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign_features(tmp_path / "features" / DEFAULT_BACKBONE, groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    params = write_params(tmp_path / "params.yaml", SMALL_RUN)
    for name in ["logreg", "knn"]:
        assert run_stage("train", params, name, without=("--manifest",)) == 0
    import yaml

    settings = yaml.safe_load(params.read_text())
    settings["classifiers"] = {k: settings["classifiers"][k] for k in ["logreg", "knn"]}
    params.write_text(yaml.safe_dump(settings))
    assert run_stage("cost", params) == 0
    assert run_stage("compare", params, without=("--splits",)) == 0  # foreign features: no audit
    assert sorted(pd.read_csv(tmp_path / "artifacts" / "comparison.csv")["classifier"]) == ["knn", "logreg"]


def test_only_the_head_goes_to_the_accelerator_and_its_folds_take_turns_there():
    from pipeline.common.params import CVParams
    from pipeline.evaluate.classifiers import get_classifier
    from pipeline.evaluate.engine import Engine
    from pipeline.evaluate.training import placement

    cv, ray = CVParams(folds=3, repeats=1, inner_folds=2, seed=0, n_jobs=-1), Engine("ray")
    assert placement(get_classifier("head"), "cuda", cv, ray) == ("cuda", CVParams(3, 1, 2, 0, n_jobs=1), None)
    assert placement(get_classifier("head"), "cpu", cv, ray) == ("cpu", cv, ray)
    assert placement(get_classifier("logreg"), "cuda", cv, ray) == ("cpu", cv, ray)


def test_the_final_selection_beside_the_folds_gives_what_it_gives_before_them(tmp_path):
    """With n_jobs 2 the grids' final selection runs in a worker beside the grouped folds; with n_jobs 1 in this
    process first (with 2 BLAS threads here, the selection limits itself to one): the same model, scores and
    record, byte for byte. The rows are large enough that a product's rounding depends on the BLAS threads
    sharing it (on 2 cores and more)."""
    import pickle

    from pipeline.common.groups import read_groups
    from pipeline.common.params import CVParams, EvaluationParams
    from pipeline.evaluate.classifiers import parse_classifier_params
    from pipeline.evaluate.splits import read_folds
    from pipeline.evaluate.training import train_classifier

    directory, groups_path = foreign_features(tmp_path / "features", dim=1280, train_pictures=240)
    feats = features.load(directory, mmap=True)
    groups = read_groups(groups_path, feats["train"].paths)
    folds = read_folds(groups_path.parent / "folds.csv", feats["train"].paths)
    evaluation = EvaluationParams(n_bootstrap=50, ece_bins=10, seed=0, equivalence=0.01)
    for name, grid in [("logreg", {"C": [0.01, 1.0]}), ("svm", {"C": [0.1, 1.0]}),
                       ("knn", {"n_neighbors": [3, 7], "weights": ["uniform", "distance"]})]:
        runs = [train_classifier(name, parse_classifier_params(name, grid), features=feats, groups=groups, folds=folds,
                                 cv=CVParams(folds=3, repeats=1, inner_folds=2, seed=0, n_jobs=n_jobs),
                                 evaluation=evaluation, use_views=False) for n_jobs in (1, 2)]
        first, beside = (run.evaluation for run in runs)
        assert first.metrics == beside.metrics, name
        assert first.predictions.to_csv() == beside.predictions.to_csv(), name
        assert first.folds.to_csv() == beside.folds.to_csv(), name
        assert runs[0].selection.record.to_csv() == runs[1].selection.record.to_csv(), name
        X = feats["test"].X
        assert pickle.dumps(runs[0].selection.model.predict_proba(X)) == pickle.dumps(runs[1].selection.model.predict_proba(X))

