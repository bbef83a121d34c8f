"""A real ``dvc repro`` of the whole project in a temporary git repository."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, SMALL_RUN, make_dataset, write_params

PROJECT_FILES = ["pipeline", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = PROJECT / name
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, root / name)
    data = make_dataset(tmp_path_factory.mktemp("data"), train_per_class=5, held_out_per_class=3)
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": str(data)})
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run(["git", "init", "-q"], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "project"], root, env)
    dvc = [sys.executable, "-m", "dvc"]
    first = run([*dvc, "repro"], root, env)
    return root, env, dvc, first


def test_repro_runs_every_stage_and_reports_four_classifiers(repo):
    root, env, dvc, first = repo
    assert ran(first) == {"prepare", "audit", "extract", "head", "classical@logreg", "classical@svm",
                          "classical@knn", "compare"}
    shown = json.loads(run([*dvc, "metrics", "show", "--json"], root, env))
    files = next(iter(shown.values()))["data"]
    for name in ["head", "logreg", "svm", "knn"]:
        metrics = files[f"artifacts/metrics/{name}.json"]["data"]
        assert metrics["pretrained"] is False
        assert {"accuracy", "balanced_accuracy", "macro_f1", "accuracy_ci95"} <= set(metrics["test"])
        assert {"accuracy_mean", "accuracy_std", "accuracy_ci95"} <= set(metrics["cv"])
        assert "accuracy_mean" in metrics["cv_leaky"] and "accuracy" in metrics["valid"]
        assert metrics["fit_seconds"] >= 0
    meta = json.loads((root / "features" / "meta.json").read_text())
    assert meta["pretrained"] is False and meta["transform"]["crop_size"] == [64]
    assert "RANDOM" in (root / "artifacts" / "comparison.md").read_text()
    assert (root / "artifacts" / "audit.json").is_file()
    run([*dvc, "plots", "show", "--out", "plots_html"], root, env)
    assert (root / "plots_html" / "index.html").is_file()


def test_second_repro_skips_everything_after_the_source_check(repo):
    root, env, dvc, _ = repo
    assert ran(run([*dvc, "repro"], root, env)) == {"prepare"}  # always_changed: re-hashes the source only


def test_changing_a_classifier_param_reruns_only_that_classifier_and_compare(repo):
    root, env, dvc, _ = repo
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": json.loads(
        (root / "artifacts" / "data" / "source.json").read_text())["root"].removesuffix("/Master Folder"),
        "classical.knn.n_neighbors": [1, 3]})
    assert ran(run([*dvc, "repro"], root, env)) == {"prepare", "classical@knn", "compare"}
