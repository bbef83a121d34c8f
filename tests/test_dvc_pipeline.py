"""A real ``dvc repro`` of the whole project in a temporary git repository."""

import html
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import (
    DEFAULT_BACKBONE,
    DVC,
    ENV,
    SMALL_RUN,
    init_project,
    keep_classifiers,
    make_dataset,
    outputs,
    ran,
    run,
    write_params,
)

CLASSIFIERS = ["head", "logreg", "svm", "knn"]
B = DEFAULT_BACKBONE
pytestmark = pytest.mark.slow  # whole dvc runs in a temporary repository

def test_repro_runs_every_stage_and_reports_four_classifiers(repo):
    root, env, dvc, first, _ = repo
    assert ran(first) == {"prepare", "audit", "folds", f"extract@{B}", *(f"train@{B}-{name}" for name in CLASSIFIERS),
                          *(f"learning_curve@{B}-{name}" for name in CLASSIFIERS), f"export@{B}", f"cost@{B}",
                          "compare", "label_issues", "report"}
    shown = json.loads(run([*dvc, "metrics", "show", "--json"], root, env))
    summaries = next(iter(shown.values()))["data"]
    # one short row per backbone/classifier pair; the detail stays in artifacts/metrics
    assert sorted(summaries) == sorted(f"artifacts/summary/{B}/{name}.json" for name in CLASSIFIERS)
    assert sum(summaries[f"artifacts/summary/{B}/{name}.json"]["data"]["p_best"] for name in CLASSIFIERS) == \
        pytest.approx(1, abs=1e-3)
    table = run([*dvc, "metrics", "show"], root, env)
    assert max(len(line) for line in table.splitlines()) < 200, table
    files = {f"artifacts/metrics/{B}/{name}.json": {"data": json.loads((root / "artifacts" / "metrics" / B /
                                                                         f"{name}.json").read_text())}
             for name in CLASSIFIERS}
    cost = json.loads((root / "artifacts" / "cost" / f"{B}.json").read_text())
    assert cost["gflops"] > 0 and cost["images_per_second"] > 0 and cost["params_millions"] > 6  # B1: 6.5M
    decision = json.loads((root / "artifacts" / "comparison.json").read_text())["decision"]
    assert decision["cheapest_equivalent"] in decision["equivalent"] and "cheapest" in decision["sentence"]
    for name in CLASSIFIERS:
        metrics = files[f"artifacts/metrics/{B}/{name}.json"]["data"]
        assert metrics["pretrained"] is False and metrics["backbone"] == B and metrics["classifier"] == name
        assert {"accuracy", "balanced_accuracy", "macro_f1", "accuracy_ci95"} <= set(metrics["test"])
        assert {"accuracy_mean", "accuracy_std", "accuracy_ci95"} <= set(metrics["cv"])
        assert "accuracy_mean" in metrics["cv_leaky"] and "accuracy" in metrics["valid"]
        assert metrics["fit_seconds"] >= 0
        assert metrics["cv"]["train_views"] == 1  # SMALL_RUN embeds one view per train image and uses it
    meta = json.loads((root / "features" / B / "meta.json").read_text())
    assert meta["pretrained"] is False and meta["transform"]["crop_size"] == [64]
    assert meta["feature_dim"] == 1280 and meta["speed"]["images_per_second"] > 0
    assert "RANDOM" in (root / "artifacts" / "comparison.md").read_text()
    assert (root / "artifacts" / "audit.json").is_file()
    suspects = json.loads((root / "artifacts" / "label_issues.json").read_text())
    assert suspects["structure"] is False and "random" in suspects["why"]  # no suspect list from random weights
    assert pd.read_csv(root / "artifacts" / "data" / "label_issues.csv").empty
    for name in ["head", "logreg", "knn"]:  # the SVM's fold models give no probabilities
        oof = pd.read_csv(root / "artifacts" / "out_of_fold" / B / f"{name}.csv")
        assert len(oof) == 60 and np.allclose(oof.filter(like="p_").sum(axis=1), 1, atol=1e-5)
        calibration = files[f"artifacts/metrics/{B}/{name}.json"]["data"]["calibration"]
        assert calibration["temperature"] > 0 and {"before", "after"} <= set(calibration["test"])
    plots = json.loads(run([*dvc, "plots", "show", "--json"], root, env))["data"]
    assert {*(f"artifacts/plots/confusion/{B}/{name}.csv" for name in CLASSIFIERS),
            f"artifacts/selection/head/{B}.csv",
            *(f"artifacts/plots/learning_curve/{B}/{name}.csv" for name in CLASSIFIERS)} <= set(plots)
    for name in CLASSIFIERS:  # the curve ends at the train stage's own grouped-CV figure
        curve = pd.read_csv(root / "artifacts" / "plots" / "learning_curve" / B / f"{name}.csv")
        cv = files[f"artifacts/metrics/{B}/{name}.json"]["data"]["cv"]
        assert curve["fraction"].tolist() == [0.75, 1.0] and curve["pictures"].tolist() == [16, 20]
        assert curve["accuracy"].iloc[-1] == cv["accuracy_mean"] and curve["pictures"].iloc[-1] == cv["n_groups"]
        summary = json.loads((root / "artifacts" / "learning_curve" / B / f"{name}.json").read_text())
        assert summary["trend"] in {"rising", "flat", "falling"} and summary["fold_fits"] == 3


def test_second_repro_skips_everything_after_the_source_check(repo):
    root, env, dvc, _, _ = repo
    assert ran(run([*dvc, "repro"], root, env)) == {"prepare"}  # always_changed: re-hashes the source only


def test_changing_a_classifier_param_reruns_only_that_classifier_and_compare(repo):
    root, env, dvc, _, _ = repo
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"].removesuffix("/Master Folder")
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data,
                                        "classifiers.knn.n_neighbors": [1]})  # SMALL_RUN has [3, 5]
    try:
        assert ran(run([*dvc, "repro"], root, env)) == {"prepare", f"train@{B}-knn", f"learning_curve@{B}-knn",
                                                        f"cost@{B}", "compare", "label_issues", "report"}
    finally:
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data})
        run([*dvc, "repro"], root, env)


def test_changing_a_learning_curve_param_reruns_only_the_learning_curves_and_the_report(repo):
    root, env, dvc, _, _ = repo
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"].removesuffix("/Master Folder")
    before = (root / "artifacts" / "plots" / "learning_curve" / B / "knn.csv").read_text()
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data, "learning_curve.draws": 2})
    try:
        assert ran(run([*dvc, "repro"], root, env)) == {"prepare", *(f"learning_curve@{B}-{name}" for name in CLASSIFIERS),
                                                        "report"}
        after = pd.read_csv(root / "artifacts" / "plots" / "learning_curve" / B / "knn.csv")
        assert after["draws"].tolist() == [2, 1] and after["folds"].tolist() == [6, 3]
    finally:
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data})
        run([*dvc, "repro"], root, env)
    assert (root / "artifacts" / "plots" / "learning_curve" / B / "knn.csv").read_text() == before


def test_label_issue_params_rerun_only_the_label_issues_stage_and_the_report(repo):
    root, env, dvc, _, _ = repo
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"].removesuffix("/Master Folder")
    try:
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data, "label_issues.alpha": 0.05})
        # random weights: no suspect whatever alpha is, so its outputs are the same and the report is not re-made
        assert ran(run([*dvc, "repro"], root, env)) == {"prepare", "label_issues"}
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data, "label_issues.alpha": 0.05,
                                            "label_issues.show": 3})
        assert ran(run([*dvc, "repro"], root, env)) == {"prepare", "report"}
    finally:
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data})
        run([*dvc, "repro"], root, env)


def test_a_second_backbone_runs_only_its_own_stages_and_removing_it_restores_the_outputs(repo):
    root, env, dvc, _, _ = repo
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"].removesuffix("/Master Folder")
    before = {name: (root / "artifacts" / name).read_bytes() for name in ["comparison.md", "comparison.csv"]}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["backbones"]["resnet18"] = {"source": "torchvision", "model": "resnet18", "weights": None}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert ran(run([*dvc, "repro"], root, env)) == {"prepare", "extract@resnet18", "export@resnet18",
                                                        "cost@resnet18", "compare", "label_issues", "report",
                                                        *(f"train@resnet18-{c}" for c in CLASSIFIERS),
                                                        *(f"learning_curve@resnet18-{c}" for c in CLASSIFIERS)}
        table = pd.read_csv(root / "artifacts" / "comparison.csv")
        assert len(table) == 8 and set(table["backbone"]) == {B, "resnet18"}
        assert table["cv_p_vs_best_holm"].iloc[1:].notna().all() and np.isnan(table["cv_p_vs_best_holm"].iloc[0])
        assert set(table.loc[table["backbone"] == "resnet18", "feature_dim"]) == {512}
        tests = json.loads((root / "artifacts" / "comparison.json").read_text())
        assert len(tests["backbones"]) == 1 and {tests["backbones"][0]["a"], tests["backbones"][0]["b"]} == set(
            tests["best_per_backbone"].values())
        shared = pd.read_csv(root / "artifacts" / "data" / "folds.csv")
        sizes = [int((shared["repeat_0"] == k).sum()) for k in range(shared["repeat_0"].max() + 1)]
        for path in (root / "artifacts" / "cv").rglob("*.csv"):  # every pair scored on the shared folds
            folds = pd.read_csv(path)
            assert folds.loc[folds["protocol"] == "grouped", "n_test"].tolist() == sizes, path
        text = (root / "artifacts" / "comparison.md").read_text()
        assert "## Backbones compared" in text and "| resnet18 |" in text
        assert "id='backbone-resnet18'" in (root / "artifacts" / "report.html").read_text()
    finally:
        write_params(root / "params.yaml", {**SMALL_RUN, "data.root": data})
        # DVC leaves a removed stage's files in the workspace; delete them as docs/backbones.md says
        for stale in [root / "features" / "resnet18", *root.glob("artifacts/*/resnet18*"),
                      *root.glob("artifacts/*/*/resnet18*")]:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    # compare and report run again, or DVC's run-cache restores their outputs of the one-backbone run
    assert ran(run([*dvc, "repro"], root, env)) <= {"prepare", "compare", "report"}
    assert {name: (root / "artifacts" / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("model", ["head", f"{B}/knn", "svm"])
def test_predict_on_the_test_folder_reproduces_the_stage_predictions(repo, model):
    root, env, _, _, _ = repo
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"]
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", f"{data}/test", "--model", model,
                             "--format", "csv"], cwd=root, env=env, capture_output=True, text=True, check=True)
    predicted = pd.read_csv(io.StringIO(result.stdout))
    stage = pd.read_csv(root / "artifacts" / "predictions" / B / f"{model.split('/')[-1]}.csv")
    stage = stage[stage["split"] == "test"].reset_index(drop=True)
    assert [p.split("Master Folder/")[1] for p in predicted["image"]] == stage["image"].tolist()
    assert predicted["predicted"].tolist() == stage["predicted"].tolist()
    probabilities = [c for c in stage.columns if c.startswith("p_")]
    assert (predicted[probabilities].to_numpy() == stage[probabilities].to_numpy()).all()
    calibrated = predicted.filter(like="calibrated_p_")
    if model.endswith("svm"):  # its fold models give no probabilities, so it has no temperature
        assert calibrated.empty
    else:  # the train stage's temperature: the same ranking, other confidence
        assert calibrated.shape[1] == len(probabilities) and np.allclose(calibrated.sum(axis=1), 1, atol=1e-4)
        assert (calibrated.to_numpy().argmax(1) == predicted[probabilities].to_numpy().argmax(1)).all()


def test_predict_refuses_a_model_whose_backbone_cannot_be_rebuilt(repo, tmp_path):
    """A model and record that agree on a backbone fingerprint, but not the backbone predict would run with."""
    root, env, _, _, _ = repo
    import skops.io

    from pipeline.common.io import file_sha256
    from pipeline.evaluate.results import TRUSTED_TYPES

    saved = skops.io.load(root / "artifacts" / "models" / B / "knn" / "model.skops", trusted=TRUSTED_TYPES)
    saved["features_meta"] = {**saved["features_meta"], "fingerprint": "0" * 64}
    folder = tmp_path / "models" / B / "knn"
    folder.mkdir(parents=True)
    skops.io.dump(saved, folder / "model.skops")
    record = json.loads((root / "artifacts" / "models" / B / "knn" / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**record, "sha256": file_sha256(folder / "model.skops"),
                                                   "backbone_fingerprint": "0" * 64}))
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"]
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", f"{data}/test", "--model", "knn",
                             "--models-dir", str(tmp_path / "models")], cwd=root, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "differs from the one that made the features" in result.stderr


def test_report_holds_every_section_with_real_images(repo):
    root, _, _, _, _ = repo
    import base64
    import re

    from PIL import Image

    page = (root / "artifacts" / "report.html").read_text()
    for section in ["about", "leaderboard", "grid", "confusion", "per-class", "misclassified", "label-issues",
                    "learning-curve", f"backbone-{B}"]:
        assert f"id='{section}'" in page
    assert "Embedding map" in page and "Linear head training" in page
    about = page[page.index("id='about'"):page.index("</table>", page.index("id='about'"))]
    data_root = yaml.safe_load((root / "params.yaml").read_text())["data"]["root"]
    for fact in [f"local folder {data_root}", "train 60", "valid 12", "test 12",  # what the data is, not a handle
                 "efficientnet_b1", "<b>pretrained: false</b>", "Code</th><td>git "]:
        assert fact in about, fact
    assert "anshtanwar" not in about  # the default Kaggle handle was not used
    assert "img{max-width:100%" in page  # figure rows fit the page
    images = re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", page)
    decoded = [Image.open(io.BytesIO(base64.b64decode(data))) for _, data in images]
    assert decoded and all(min(image.size) >= 16 for image in decoded)
    assert all(np.asarray(image.convert("L")).std() > 1 for image in decoded)  # not blank
    board = pd.read_csv(root / "artifacts" / "comparison.csv")
    top = board.sort_values("rank").iloc[0]
    predictions = pd.read_csv(root / "artifacts" / "predictions" / top["backbone"] / f"{top['classifier']}.csv")
    test = predictions[predictions["split"] == "test"]
    wrong = int((test["true"] != test["predicted"]).sum())
    assert sum(kind == "jpeg" for kind, _ in images) == wrong  # one thumbnail per misclassified test image
    assert "<table" in page and "Random or unverified" in page


def test_repro_killed_mid_extract_leaves_nothing_cached_and_the_rerun_gives_the_same_features(repo, tmp_path):
    baseline_root, _, _, _, baseline = repo
    data = json.loads((baseline_root / "artifacts" / "data" / "source.json").read_text())["root"]
    root = tmp_path / "project"
    root.mkdir()
    init_project(root, data.removesuffix("/Master Folder"))
    # dvc, the shell it starts and the stage (with any loader workers) die together, as on a power cut
    proc = subprocess.Popen([*DVC, "repro"], cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(root.glob(".extract-shards/*/*/.rows-*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "dvc repro got past extract before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    assert not (root / "features" / B).exists()
    lock = yaml.safe_load((root / "dvc.lock").read_text()) if (root / "dvc.lock").exists() else {}
    assert f"extract@{B}" not in lock.get("stages", {})  # DVC recorded nothing for the killed stage
    assert f"extract@{B}" in run([*DVC, "status"], root, ENV)
    # the rerun of extract alone: what follows it reads only its features, which must be the finished run's
    assert ran(run([*DVC, "repro", f"extract@{B}"], root, ENV)) == {"prepare", f"extract@{B}"}  # prepare: always
    assert not list(root.glob("features/.*.tmp-*")) and not list((root / ".extract-shards").rglob("*.npy"))
    features = {path: data for path, data in outputs(root).items() if path.startswith("features/")}
    assert features and features == {path: data for path, data in baseline.items() if path.startswith("features/")}
    assert f"extract@{B}" not in run([*DVC, "status", f"extract@{B}"], root, ENV)


def test_editing_the_image_decoder_makes_dvc_report_extract_and_what_follows(repo):
    root, env, dvc, _, _ = repo
    images = root / "pipeline" / "data" / "images.py"
    original = images.read_text()
    try:
        images.write_text(original + "\n# a change to how images are decoded\n")
        changed = set(json.loads(run([*dvc, "status", "--json"], root, env)))
        assert {"audit", f"extract@{B}"} <= changed
    finally:
        images.write_text(original)
    assert f"extract@{B}" not in set(json.loads(run([*dvc, "status", "--json"], root, env)))


def test_dvc_artifacts_get_fetches_the_best_classifier(repo, tmp_path):
    root, env, dvc, _, _ = repo
    remote = tmp_path / "remote"
    run([*dvc, "remote", "add", "--local", "-f", "-d", "store", str(remote)], root, env)
    run([*dvc, "push", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "results", "--allow-empty"], root, env)
    # a registered version, as `gto register best-classifier` writes it
    run(["git", "tag", "-a", "best-classifier@v1.0.0", "-m", "Registering artifact best-classifier version v1.0.0"],
        root, env)
    target = tmp_path / "best"
    run([*dvc, "artifacts", "get", str(root), "best-classifier", "-o", str(target)], tmp_path,
        {**env, "DVC_GLOBAL_CONFIG_DIR": str(tmp_path)})
    assert sorted(p.name for p in target.iterdir()) == ["model.json", "model.skops"]
    assert (target / "model.skops").read_bytes() == (root / "artifacts" / "best_model" / "model.skops").read_bytes()
    with zipfile.ZipFile(target / "model.skops") as archive:  # data (a JSON schema and .npy arrays), no pickle
        assert "schema.json" in archive.namelist() and not [n for n in archive.namelist() if n.endswith(".pkl")]

    # the fetched folder classifies a folder of images exactly as the train stage did
    data = json.loads((root / "artifacts" / "data" / "source.json").read_text())["root"]
    result = subprocess.run([sys.executable, "-m", "pipeline.predict", f"{data}/test", "--model", str(target),
                             "--format", "csv"], cwd=root, env=env, capture_output=True, text=True, check=True)
    predicted = pd.read_csv(io.StringIO(result.stdout))
    pair = json.loads((target / "model.json").read_text())
    stage = pd.read_csv(root / "artifacts" / "predictions" / pair["backbone"] / f"{pair['classifier']}.csv")
    stage = stage[stage["split"] == "test"].reset_index(drop=True)
    assert [p.split("Master Folder/")[1] for p in predicted["image"]] == stage["image"].tolist()
    assert predicted["predicted"].tolist() == stage["predicted"].tolist()
    probabilities = [c for c in stage.columns if c.startswith("p_")]
    assert (predicted[probabilities].to_numpy() == stage[probabilities].to_numpy()).all()


def test_with_a_skipped_file_a_second_repro_changes_nothing_in_git(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=2, held_out_per_class=1)
    (data / "Master Folder" / "train" / "Sad" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    root = tmp_path / "project"
    root.mkdir()
    init_project(root, data)
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": str(data), "data.on_bad_image": "skip"})
    run([*DVC, "repro", "prepare"], root, ENV)
    assert "broken.jpg" in (root / "artifacts" / "data" / "skipped.csv").read_text()
    run(["git", "add", "-A"], root, ENV)
    run(["git", "commit", "-qm", "first repro"], root, ENV)
    run([*DVC, "repro", "prepare"], root, ENV)
    assert run(["git", "status", "--porcelain"], root, ENV).strip() == ""


def test_train_and_val_folders_only_give_a_carved_test_split_that_the_leaderboard_names(tmp_path):
    """The ImageFolder convention, no test folder: the audit carves test from train by whole picture, every
    later stage reads that split, and the leaderboard and the report say how test was made."""
    data = make_dataset(tmp_path / "data", train_per_class=5, held_out_per_class=2, augs=1)
    shutil.rmtree(data / "Master Folder" / "test")
    (data / "Master Folder" / "valid").rename(data / "Master Folder" / "val")
    root = tmp_path / "project"
    root.mkdir()
    init_project(root, data)
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": str(data), "data.layout_dir": None,
                                        "views.count": 0, "learning_curve.enabled": False})
    keep_classifiers(root / "params.yaml", ("head", "logreg"))
    assert {"prepare", "audit", "folds", f"extract@{B}", f"train@{B}-logreg", "compare",
            "report"} <= ran(run([*DVC, "repro"], root, ENV))

    carved = "carved from train: 15% of each class's pictures (whole pictures), seed 0"
    splits = pd.read_csv(root / "artifacts" / "data" / "splits.csv")
    assert set(splits.loc[splits["split"] == "test", "why"]) == {carved}
    assert set(splits.loc[splits["split"] == "valid", "why"]) == {"folder val/"}
    groups = pd.read_csv(root / "artifacts" / "data" / "groups.csv")
    assert groups.groupby("group")["split"].nunique().max() == 1  # no picture on two sides
    test = sorted(splits.loc[splits["split"] == "test", "path"])
    assert len(test) == 8 and all(p.startswith("train/") for p in test)  # 1 of 5 pictures a class, 2 images each
    for name in ("head", "logreg"):  # every classifier scored on the carved test images, and only on them
        predictions = pd.read_csv(root / "artifacts" / "predictions" / B / f"{name}.csv")
        assert sorted(predictions.loc[predictions["split"] == "test", "image"]) == test
    board = (root / "artifacts" / "comparison.md").read_text()
    assert f"Held-out images: **valid**: 8 images, folder val/; **test**: 8 images, {carved}." in board
    about = (root / "artifacts" / "report.html").read_text()
    assert f"test: {html.escape(carved)}" in about and "valid: folder val/" in about


def imagefolder_dataset(root, *, per_class, val_per_class, seed=1):
    """``train/`` + ``val/`` class folders (the ImageFolder convention: test is carved), one augmented copy each."""
    from tests.conftest import CLASSES, augment, picture

    rng = np.random.default_rng(seed)
    n = 0
    for split, count in [("train", per_class), ("val", val_per_class)]:
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for _ in range(count):
                n += 1
                image = picture(rng, c)
                image.save(folder / f"{n:03d}.jpg", quality=92)
                if split == "train":
                    augment(image, rng).save(folder / f"aug-{n * 10}-{n:03d}.jpg", quality=85)
    return root


def test_the_shipped_params_run_end_to_end_on_a_few_pictures_a_class(tmp_path):
    """People try a pipeline on a few dozen images first: what the data is too small for is dropped and said.
    Here train/ + val/ folders of 8 pictures a class (test carved from train) under the shipped 5 folds."""
    data = imagefolder_dataset(tmp_path / "data", per_class=8, val_per_class=4, seed=2)
    root = tmp_path / "project"
    root.mkdir()
    # offline: random weights; small images, as what the data is too small for does not depend on their size
    init_project(root, data, overrides={f"backbones.{B}.weights": None, "extract.crop_size": 64,
                                        "extract.resize_size": 72, "data.layout_dir": None})
    out = run([*DVC, "repro"], root, ENV)
    assert f"learning_curve@{B}-knn" in ran(out) and (root / "artifacts" / "report.html").is_file()
    notes = [json.loads((root / "artifacts" / "learning_curve" / B / f"{c}.json").read_text())["notes"]
             for c in CLASSIFIERS]
    knn = json.loads((root / "artifacts" / "metrics" / B / "knn.json").read_text())
    assert any(notes) or knn["method"].get("notes"), "the data is small enough for something to be dropped"
    for note in knn["method"].get("notes", []):
        assert note.startswith("classifiers.knn.n_neighbors=") and note in out  # said in one line, and recorded
    for point in [point for skipped in notes for point in skipped]:
        assert point["reason"].startswith("learning_curve.fractions: ")
        assert point["reason"].split(": ", 2)[-1] in out
