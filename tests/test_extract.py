import json
import warnings

import numpy as np

from pipeline.embed import features
from tests.conftest import SMALL_RUN, run_stage, write_params


def run_extract(tmp_path, dataset, checkpoint, out, **overrides):
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(dataset),
                                                     "model.checkpoint": str(checkpoint), **overrides})
    warnings.simplefilter("ignore", UserWarning)
    assert run_stage("prepare", params) == 0
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
    # seeded per image: the same views whatever the batch size (a random backbone amplifies the conv
    # kernels' float rounding, hence a cosine rather than an elementwise check)
    flat_a, flat_b = train.views.reshape(-1, 1280), b["train"].views.reshape(-1, 1280)
    same = (flat_a * flat_b).sum(1) / np.linalg.norm(flat_a, axis=1) / np.linalg.norm(flat_b, axis=1)
    assert np.median(same) > 0.99999 and same.min() > 0.95
    cosine = (train.views[0] * train.X).sum(1) / np.linalg.norm(train.views[0], axis=1) / np.linalg.norm(train.X, axis=1)
    assert cosine.mean() > 0.5  # a view still resembles its image
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["views"]["count"] == 2 and meta["precision"] == "fp32"


def test_no_views_file_without_views(tmp_path, dataset, calibrated_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feats = run_extract(tmp_path, dataset, calibrated_checkpoint, "f", **{"views.count": 0})
    assert feats["train"].views is None and not (tmp_path / "f" / "train_views.npy").exists()


def test_each_random_view_is_fixed_by_seed_and_index_alone(dataset):
    import torchvision

    from pipeline.common.params import ViewsParams
    from pipeline.embed.embedding import ImageFiles, view_transform

    base = torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64, resize_size=72)
    augment = view_transform(base, ViewsParams(count=1, crop_scale_min=0.5, hflip=0.5, jitter=0.3, seed=0, use=True))
    paths = sorted((dataset / "Master Folder" / "train").rglob("*.jpg"))[:6]
    forward = [ImageFiles(paths, augment, seed=(0, 0))[i] for i in range(6)]
    backward = [ImageFiles(paths, augment, seed=(0, 0))[i] for i in reversed(range(6))][::-1]
    other_view = ImageFiles(paths, augment, seed=(0, 1))[0]
    assert all((f == b).all() for f, b in zip(forward, backward))
    assert forward[0].shape == (3, 64, 64) and not (forward[0] == other_view).all()


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
