"""The extract stage: one pass, one input shape, one worker pool, shards that resume, the features format."""

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.common import features
from pipeline.common.params import backbones_section, load_section
from pipeline.data.dataset import build_manifest
from pipeline.embed.backbone import build_backbone, parse_backbone
from pipeline.embed.embedding import embed_paths, resolve_settings
from pipeline.embed.extraction import extract_features
from tests.conftest import SMALL_RUN, make_dataset, outputs, run_stage, split_layout, stage_process, write_params


def run_extract(tmp_path, dataset, checkpoint, out, **overrides):
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(dataset),
                                                     "backbones.efficientnet_b1.checkpoint": str(checkpoint), **overrides})
    warnings.simplefilter("ignore", UserWarning)
    assert run_stage("prepare", params) == 0
    assert run_stage("audit", params) == 0  # extract reads the audit's split manifest
    assert run_stage("extract", params, None, "--out", out) == 0
    return features.load(tmp_path / out)


def test_views_are_cached_for_train_only_and_do_not_depend_on_batching(tmp_path, dataset, calibrated_checkpoint,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = run_extract(tmp_path, dataset, calibrated_checkpoint, "a", **{"views.count": 2, "extract.batch_size": 16})
    b = run_extract(tmp_path, dataset, calibrated_checkpoint, "b", **{"views.count": 2, "extract.batch_size": 5})
    train = a["train"]
    assert train.views.shape == (2, len(train.paths), 1280)
    assert a["test"].views is None and a["valid"].views is None
    assert not np.allclose(train.views[0], train.X) and not np.allclose(train.views[0], train.views[1])
    # seeded per image: the same views whatever the batch size (the CPU's rounding depends on the batch
    # shape, which a random backbone amplifies, hence a cosine rather than an elementwise check)
    flat_a, flat_b = train.views.reshape(-1, 1280), b["train"].views.reshape(-1, 1280)
    same = (flat_a * flat_b).sum(1) / np.linalg.norm(flat_a, axis=1) / np.linalg.norm(flat_b, axis=1)
    assert np.median(same) > 0.99999 and same.min() > 0.95
    norms = np.linalg.norm(train.views[0], axis=1) * np.linalg.norm(train.X, axis=1)
    cosine = (train.views[0] * train.X).sum(1) / norms
    assert cosine.mean() > 0.5  # a view still resembles its image
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["views"]["count"] == 2 and meta["precision"] == "fp32"
    assert (meta["batch_size"], meta["num_workers"], meta["engine"]) == (16, 0, "local")


def test_no_views_file_without_views(tmp_path, dataset, calibrated_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = run_extract(tmp_path, dataset, calibrated_checkpoint, "f", **{"views.count": 0})
    assert feats["train"].views is None and not (tmp_path / "f" / "train_views.npy").exists()


def test_each_random_view_is_fixed_by_seed_and_row_alone(dataset):
    import torchvision

    from pipeline.common.params import ViewsParams
    from pipeline.embed.loading import Preprocess, WorkImages
    from pipeline.embed.work import plan_work

    views = ViewsParams(count=2, crop_scale_min=0.5, hflip=0.5, jitter=0.3, seed=0, use=True)
    preprocess = Preprocess.of(torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(
        crop_size=64, resize_size=72), views=views)
    manifest = build_manifest(split_layout(dataset / "Master Folder"))[0]
    work = plan_work(manifest, dataset / "Master Folder", n_views=2)
    first_view = np.arange(*work.view_range(0))[:6]
    forward = [WorkImages(work, first_view, preprocess, decode_on_device=False)[i][2] for i in range(6)]
    backward = [WorkImages(work, first_view[::-1], preprocess, decode_on_device=False)[i][2] for i in range(6)][::-1]
    other_view = WorkImages(work, np.arange(*work.view_range(1))[:1], preprocess, decode_on_device=False)[0][2]
    assert all(torch.equal(f, b) for f, b in zip(forward, backward))
    assert forward[0].shape == (3, 64, 64) and forward[0].dtype == torch.uint8
    assert not torch.equal(forward[0], other_view)


def test_decoding_on_the_device_is_recorded_and_leaves_the_random_views_unchanged(tmp_path, dataset,
                                                                                  calibrated_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cpu = run_extract(tmp_path, dataset, calibrated_checkpoint, "cpu", **{"extract.decode": "cpu"})
    device = run_extract(tmp_path, dataset, calibrated_checkpoint, "device", **{"extract.decode": "device"})
    assert cpu.meta["decode"] == "cpu" and device.meta["decode"] == "device"
    assert np.array_equal(cpu["train"].views, device["train"].views)  # views are always drawn on the cpu path
    for split in ("train", "valid", "test"):
        a, b = cpu[split].X, device[split].X
        assert a.shape == b.shape and not np.array_equal(a, b)  # really decoded another way
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.mean() > 0.9  # close; tests/test_embedding.py bounds the difference properly


def extraction(tmp_path, data, checkpoint, *, hook=None, **overrides):
    """Run the extraction library function (the extract stage's one call) with a backbone the test holds."""
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data),
                                                     "backbones.efficientnet_b1.checkpoint": str(checkpoint), **overrides})
    warnings.simplefilter("ignore", UserWarning)
    extract, views = (load_section(name, params) for name in ("extract", "views"))
    entry = parse_backbone("efficientnet_b1", backbones_section(params)["efficientnet_b1"])
    backbone = build_backbone("efficientnet_b1", entry, crop_size=extract.crop_size, resize_size=extract.resize_size)
    if hook is not None:
        backbone.model.features.register_forward_pre_hook(hook)
    manifest = build_manifest(split_layout(data / "Master Folder"))[0]
    out = tmp_path / f"features-{len(list(tmp_path.glob('features-*')))}"
    result = extract_features(manifest=manifest, manifest_sha256="x", root=data / "Master Folder", backbone=backbone,
                              settings=resolve_settings(extract), params=extract, views=views,
                              out=out, scratch=tmp_path / "scratch")
    return features.load(out), result, manifest, backbone


@pytest.mark.parametrize("batch_size", [3, 8, 64])
def test_the_backbone_sees_one_input_shape_per_run_over_every_split_and_view(tmp_path, calibrated_checkpoint,
                                                                             batch_size):
    """As on a GPU (pad_batches: auto pads there): one shape whatever the split sizes, views and batch size."""
    data = make_dataset(tmp_path / "data", train_per_class=3, held_out_per_class=1, augs=1)  # 24/4/4 images
    shapes = set()
    feats, result, _, _ = extraction(tmp_path, data, calibrated_checkpoint, **{
        "extract.batch_size": batch_size, "views.count": 2, "extract.pad_batches": True},
        hook=lambda module, args: shapes.add(tuple(args[0].shape)))
    assert shapes == {(batch_size, 3, 64, 64)}
    segments = [24, 4, 4, 24, 24]  # train, valid, test, two view passes
    assert result.stats.rows == sum(segments)
    assert result.stats.padded == sum(-n % batch_size for n in segments)  # each one's last batch is padded
    assert feats["train"].views.shape == (2, 24, 1280)
    assert feats.meta["pad_batches"] is True


def test_on_the_cpu_short_batches_run_as_they_are(tmp_path, calibrated_checkpoint):
    """A new shape costs the CPU nothing, padding costs compute: auto leaves the short batches short."""
    data = make_dataset(tmp_path / "data", train_per_class=3, held_out_per_class=1, augs=1)  # 24/4/4 images
    shapes = set()
    feats, result, _, _ = extraction(tmp_path, data, calibrated_checkpoint, **{"extract.batch_size": 16},
                                     hook=lambda module, args: shapes.add(args[0].shape[0]))
    assert shapes == {16, 8, 4} and result.stats.padded == 0 and feats.meta["pad_batches"] is False


@pytest.mark.parametrize("batch_size", [8, 5])  # 8 divides every split, 5 none
def test_one_pass_over_all_splits_gives_exactly_the_split_by_split_embeddings(tmp_path, calibrated_checkpoint,
                                                                              batch_size):
    """Each split starts a fresh batch, so the one pass, its padding and its split boundaries change nothing:
    every row is byte for byte what embedding its split alone gives (fp32, CPU), whatever the batch size."""
    data = make_dataset(tmp_path / "data", train_per_class=4, held_out_per_class=2, augs=1)  # 32/8/8 images
    feats, _, manifest, backbone = extraction(tmp_path, data, calibrated_checkpoint,
                                              **{"extract.batch_size": batch_size})
    settings = resolve_settings(load_section("extract", tmp_path / "params.yaml"))
    for split in ("train", "valid", "test"):
        paths = [data / "Master Folder" / p for p in manifest.loc[manifest["split"] == split, "path"]]
        assert np.array_equal(feats[split].X, embed_paths(backbone, paths, settings)), split


@pytest.mark.slow
def test_one_worker_pool_serves_every_split_and_view(tmp_path, calibrated_checkpoint):
    import psutil

    data = make_dataset(tmp_path / "data", train_per_class=6, held_out_per_class=2, augs=1)
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data),
                                                     "backbones.efficientnet_b1.checkpoint": str(calibrated_checkpoint),
                                                     "extract.num_workers": 2, "extract.batch_size": 4,
                                                     "views.count": 2})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for before in ("prepare", "audit"):
        subprocess.run(stage_process(before, params), cwd=tmp_path, env=env, check=True, capture_output=True)
    command = stage_process("extract", params)
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage, seen = psutil.Process(proc.pid), collections.Counter()  # (its own /proc cmdline may not be ready yet)
    while proc.poll() is None:
        try:
            for child in stage.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # forked loader workers carry the stage's command line
                    if child.cmdline() == command:
                        seen[child.pid] += 1
        except psutil.NoSuchProcess:
            break
        time.sleep(0.005)
    # a library's helper program shows the stage's command line too, for the instant between fork and exec;
    # loader workers live for the whole pass
    workers = {pid for pid, polls in seen.items() if polls >= 3}
    assert proc.returncode == 0
    assert len(workers) == 2, f"{len(workers)} loader worker processes over the run; one pool of 2 expected"
    assert features.load(tmp_path / "features" / "efficientnet_b1")["train"].views.shape[0] == 2


def shards_written(scratch):
    return sorted(p.name for p in scratch.rglob("rows-*.npy"))


@pytest.mark.slow
def test_a_killed_extract_resumes_from_its_finished_shards_to_byte_identical_features(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=12, held_out_per_class=2, augs=2)  # 144/8/8 + a view
    # audit.on_leak: warn: two of these synthetic pictures, in train and valid, are near-duplicates by their
    # hashes; extract reads the audit's split manifest whatever its verdict
    settings = {**SMALL_RUN, "data.root": str(data), "extract.batch_size": 4, "extract.shard_rows": 16,
                "audit.on_leak": "warn"}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for folder in (reference, resumed):
        folder.mkdir()
        write_params(folder / "params.yaml", settings)
        for before in ("prepare", "audit"):
            subprocess.run(stage_process(before, folder / "params.yaml"), cwd=folder, env=env, check=True,
                           capture_output=True)
    subprocess.run(stage_process("extract", reference / "params.yaml"), cwd=reference, env=env, check=True,
                   capture_output=True)
    assert not (reference / ".extract-shards" / "efficientnet_b1").exists()  # merged, then cleared

    proc = subprocess.Popen(stage_process("extract", resumed / "params.yaml"), cwd=resumed, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(shards_written(resumed / ".extract-shards")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "extract finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = shards_written(resumed / ".extract-shards")
    assert 3 <= len(finished) < 19 and not (resumed / "features" / "efficientnet_b1").exists()

    rerun = subprocess.run(stage_process("extract", resumed / "params.yaml"), cwd=resumed, env=env, check=True,
                           capture_output=True, text=True)
    reused, total = map(int, re.search(r"(\d+) of (\d+) shard\(s\) reused", rerun.stdout).groups())
    assert reused == len(finished) and total == 19  # (160 images + 144 views) in shards of 16
    computed = int(re.search(r"(\d+) rows computed", rerun.stdout)[1])
    assert computed == 304 - 16 * reused  # only the missing shards
    assert outputs(resumed) == outputs(reference)  # arrays, index and meta.json (but its timing) byte for byte


def test_shards_of_other_settings_are_never_reused(tmp_path, calibrated_checkpoint):
    data = make_dataset(tmp_path / "data", train_per_class=2, held_out_per_class=1, augs=1)
    first, result, _, _ = extraction(tmp_path, data, calibrated_checkpoint, **{"extract.shard_rows": 4,
                                                                                "extract.batch_size": 4})
    assert result.reused == 0 and result.shards == 10  # 24 images and 16 views
    # a crash leaves shards behind; another backbone must not pick them up
    from pipeline.embed.work import ShardStore

    stale = ShardStore(tmp_path / "scratch", "f" * 16, 1280)
    for start in range(0, 40, 4):
        stale.write(start, start + 4, np.ones((4, 1280), np.float32))
    second, result, _, _ = extraction(tmp_path, data, calibrated_checkpoint, **{"extract.shard_rows": 4,
                                                                                 "extract.batch_size": 4,
                                                                                 "backbones.efficientnet_b1.checkpoint": None})
    assert result.reused == 0 and not np.array_equal(first["train"].X, second["train"].X)
    assert not (second["train"].X == 1).all()
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["f" * 16]  # left alone, and logged


def test_an_empty_or_cut_shard_file_is_computed_again(tmp_path):
    from pipeline.embed.work import ShardStore

    store = ShardStore(tmp_path / "scratch", "k" * 16, 8)
    store.write(0, 4, np.ones((4, 8), np.float32))
    store.write(4, 8, np.ones((4, 8), np.float32))
    store.write(8, 12, np.ones((4, 8), np.float32))
    store.path(4, 8).write_bytes(b"")  # a disk that filled up, say
    store.path(8, 12).write_bytes(store.path(8, 12).read_bytes()[:100])
    assert store.finished([(0, 4), (4, 8), (8, 12)]) == {(0, 4)}


def test_shard_rows_are_rounded_up_to_whole_batches(tmp_path, calibrated_checkpoint):
    data = make_dataset(tmp_path / "data", train_per_class=2, held_out_per_class=1, augs=1)  # 24 images, 16 views
    feats, result, _, _ = extraction(tmp_path, data, calibrated_checkpoint, **{"extract.shard_rows": 5,
                                                                                "extract.batch_size": 4})
    assert feats.meta["shard_rows"] == 8 and result.shards == 5  # 40 items in shards of 8
    assert pd.read_csv(tmp_path / "features-0" / "index.csv").shape[0] == 24


def test_each_shard_is_whole_batches_and_the_shards_cover_every_batch_once(dataset):
    from pipeline.embed.work import batches_within, plan_batches, plan_work, shard_ranges

    work = plan_work(build_manifest(split_layout(dataset / "Master Folder"))[0], dataset, n_views=3)
    batches = plan_batches(work, 5)
    ranges = shard_ranges(batches, 12, 5)  # three batches a shard
    assert [b for start, stop in ranges for b in batches_within(batches, start, stop)] == batches
    for start, stop in ranges:
        inside = [(a, b) for a, b in batches if start <= a and b <= stop]
        assert batches_within(batches, start, stop) == inside and len(inside) <= 3
