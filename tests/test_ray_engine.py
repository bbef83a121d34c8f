"""extract.engine: ray on a local Ray cluster: the same bytes as the local engine, resume after a failure,
and a whole dvc repro. Each run is a fresh process with a time limit, so a stalled cluster fails the test."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import (
    DVC,
    ENV,
    SMALL_RUN,
    init_project,
    keep_classifiers,
    make_dataset,
    ran,
    run,
    stage_process,
    write_params,
)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # Ray clusters and whole dvc runs

LIMIT = 300  # seconds for one stage run, Ray's start included
FEATURES = "features/efficientnet_b1"
FILES = ("train.npy", "valid.npy", "test.npy", "train_views.npy", "index.csv")


def stage(name, folder, check=True):
    result = subprocess.run(stage_process(name, folder / "params.yaml"), cwd=folder, capture_output=True, text=True,
                            timeout=LIMIT, env={**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ""})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same images extracted by the local engine and by Ray (2 actors), 4-row batches, 8-row shards."""
    data = make_dataset(tmp_path_factory.mktemp("data"), train_per_class=3, held_out_per_class=1, augs=1)
    folders = {}
    for engine, actors in [("local", "auto"), ("ray", 2)]:
        folder = tmp_path_factory.mktemp(engine)
        write_params(folder / "params.yaml", {**SMALL_RUN, "data.root": str(data), "extract.engine": engine,
                                              "extract.ray_actors": actors, "extract.batch_size": 4,
                                              "extract.shard_rows": 8, "views.count": 2})
        stage("prepare", folder)
        stage("audit", folder)
        folders[engine] = (folder, stage("extract", folder))
    return data, folders


def test_ray_gives_byte_identical_features_to_the_local_engine(runs):
    _, folders = runs
    (local, _), (ray, output) = folders["local"], folders["ray"]
    for name in FILES:
        assert (ray / FEATURES / name).read_bytes() == (local / FEATURES / name).read_bytes(), name
    meta = {e: json.loads((folders[e][0] / FEATURES / "meta.json").read_text()) for e in folders}
    assert meta["ray"]["engine"] == "ray" and meta["local"]["engine"] == "local"
    assert {k: v for k, v in meta["ray"].items() if k not in ("engine", "speed")} == \
        {k: v for k, v in meta["local"].items() if k not in ("engine", "speed")}
    assert "0 of 10 shard(s) reused" in output.stdout  # 24 + 4 + 4 images and 2 x 24 views in shards of 8
    assert not (ray / ".extract-shards" / "efficientnet_b1").exists()


def test_a_failing_ray_worker_ends_the_run_in_one_line_and_the_rerun_computes_only_the_missing_shards(
        runs, tmp_path):
    data, folders = runs
    reference = folders["ray"][0]
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(reference / "params.yaml", folder / "params.yaml")
    shutil.copytree(reference / "artifacts", folder / "artifacts")  # the same manifest
    victim = data / "Master Folder" / "test" / "Sad" / sorted(os.listdir(data / "Master Folder" / "test" / "Sad"))[0]
    original = victim.read_bytes()
    victim.write_bytes(b"damaged after prepare")  # the shard holding it fails in a worker
    try:
        failed = stage("extract", folder, check=False)
    finally:
        victim.write_bytes(original)
    assert failed.returncode == 2, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and victim.name in errors[0] and "Traceback" not in failed.stderr
    assert not (folder / FEATURES).exists()
    kept = sorted(p.name for p in (folder / ".extract-shards").rglob("rows-*.npy"))
    assert kept, "no shard was written before the failure"

    rerun = stage("extract", folder)
    reused = int(re.search(r"(\d+) of 10 shard\(s\) reused", rerun.stdout)[1])
    assert reused == len(kept)
    assert int(re.search(r"(\d+) rows computed", rerun.stdout)[1]) == 80 - 8 * reused
    for name in FILES:
        assert (folder / FEATURES / name).read_bytes() == (reference / FEATURES / name).read_bytes(), name


def test_dvc_repro_with_the_ray_engine_runs_end_to_end(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=5, held_out_per_class=3)
    root = tmp_path / "project"
    root.mkdir()
    init_project(root, data)
    write_params(root / "params.yaml", {**SMALL_RUN, "data.root": str(data), "extract.engine": "ray",
                                        "learning_curve.enabled": False})
    keep_classifiers(root / "params.yaml", ("head", "logreg"))
    out = run([*DVC, "repro"], root, {**ENV, "RAY_ADDRESS": ""})
    assert {"extract@efficientnet_b1", "train@efficientnet_b1-head", "compare", "report"} <= ran(out)
    assert json.loads((root / FEATURES / "meta.json").read_text())["engine"] == "ray"
    assert (root / "artifacts" / "report.html").is_file()


def test_a_ray_worker_that_cannot_build_the_backbone_reports_why_with_its_shard(tmp_path):
    """A failed set-up would kill the actor and reach the driver as a bare ActorDiedError; instead the
    reason comes back in the shard's error column, which the driver raises as one line."""
    import numpy as np
    import pandas as pd
    import torchvision

    from pipeline.embed.embedding import Settings
    from pipeline.embed.loading import Preprocess
    from pipeline.embed.ray_engine import ShardEmbedder
    from pipeline.embed.work import plan_batches, plan_work

    data = make_dataset(tmp_path / "data", train_per_class=1, held_out_per_class=1, augs=0)
    manifest = pd.DataFrame({"path": sorted(str(p) for p in (data / "Master Folder").rglob("*.jpg")), "split": "a"})
    work = plan_work(manifest, data, n_views=0)
    settings = Settings(device=__import__("torch").device("cpu"), precision="fp32", decode="cpu", batch_size=4,
                        num_workers=0, channels_last=True)
    preprocess = Preprocess.of(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(
        crop_size=64, resize_size=72))
    from pipeline.embed.backbone import build_backbone, parse_backbone

    entry = parse_backbone("b1", {"source": "torchvision", "model": "efficientnet_b1", "weights": None})
    info = {**build_backbone("b1", entry, crop_size=64, resize_size=72).info, "fingerprint": "0" * 64}
    actor = ShardEmbedder(info=info, work=work, batches=plan_batches(work, 4), settings=settings, preprocess=preprocess)
    out = actor({"start": np.array([0]), "stop": np.array([4])})
    assert "differs from the one that made the features" in out["error"][0]
    assert out["error"][0].startswith("on a Ray worker")


@pytest.mark.parametrize("listening", [False, True], ids=["nothing listens", "a port that never answers"])
def test_a_ray_address_that_does_not_answer_ends_in_one_line_within_the_timeout(tmp_path, listening):
    """Ray alone retries such an address for minutes (826 s measured); extract.ray_timeout_s bounds the wait."""
    import socket
    import time

    data = make_dataset(tmp_path / "data", train_per_class=1, held_out_per_class=1, augs=0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        if listening:
            server.listen(8)  # the kernel completes the handshake; nobody ever speaks Ray's protocol
        port = server.getsockname()[1]
        if not listening:
            server.close()
        write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data), "extract.engine": "ray",
                                                "extract.ray_address": f"127.0.0.1:{port}",
                                                "extract.ray_timeout_s": 3})
        stage("prepare", tmp_path)
        stage("audit", tmp_path)
        started = time.monotonic()
        result = stage("extract", tmp_path, check=False)
        seconds = time.monotonic() - started
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and f"No Ray cluster answers at '127.0.0.1:{port}'" in errors[0], errors
    assert "ray start --head" in errors[0]
    assert seconds < 60, seconds  # start-up of torch and Ray included; the wait itself is 3 s
    assert not (tmp_path / FEATURES).exists()
