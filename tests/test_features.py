import json

import numpy as np
import pandas as pd
import pytest

from pipeline.common import features


def write(directory, n_train=3, dim=4):
    directory.mkdir()
    rows = [("train", f"train/A/{i}.jpg", "A" if i % 2 else "B") for i in range(n_train)]
    rows += [("test", "test/A/0.jpg", "A")]
    pd.DataFrame(rows, columns=features.INDEX_COLUMNS).to_csv(directory / features.INDEX, index=False)
    (directory / features.META).write_text(json.dumps({"classes": ["A", "B"], "feature_dim": dim}))
    for split, n in [("train", n_train), ("test", 1)]:
        out = features.allocate(directory, split, n, dim)
        out[:] = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
        out.flush()
    return directory


def test_load_returns_arrays_labels_paths_classes_and_meta(tmp_path):
    feats = features.load(write(tmp_path / "f"))
    assert feats.classes == ["A", "B"] and feats.meta["feature_dim"] == 4
    assert feats["train"].X.shape == (3, 4) and feats["train"].X.dtype == np.float32
    assert feats["train"].y.tolist() == [1, 0, 1]
    assert feats["train"].paths[0] == "train/A/0.jpg"
    assert features.load(tmp_path / "f", mmap=True)["train"].X[2, 3] == 11


def test_missing_or_inconsistent_parts_are_named(tmp_path):
    with pytest.raises(features.FeaturesError, match="is not a features folder"):
        features.load(tmp_path)
    d = write(tmp_path / "f")
    with pytest.raises(features.FeaturesError, match="No 'valid' split"):
        features.load(d)["valid"]
    np.save(d / "train.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(features.FeaturesError, match=r"train.npy has shape \(2, 4\)"):
        features.load(d)
    (d / "train.npy").unlink()
    with pytest.raises(features.FeaturesError, match="train.npy is missing"):
        features.load(d)


def test_features_from_another_manifest_are_refused(tmp_path):
    d = write(tmp_path / "f")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,label,sha256,width,height\n")
    meta = json.loads((d / features.META).read_text())
    import hashlib

    (d / features.META).write_text(json.dumps({**meta, "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}))
    assert features.load(d, manifest=manifest).classes == ["A", "B"]
    manifest.write_text("path,split,label,sha256,width,height\ntrain/A/new.jpg,train,A,00,1,1\n")
    with pytest.raises(features.FeaturesError, match="extracted from another manifest .* stale"):
        features.load(d, manifest=manifest)


def test_a_split_file_replaced_is_refused_by_its_recorded_hash(tmp_path):
    d = write(tmp_path / "f")
    meta = json.loads((d / features.META).read_text())
    (d / features.META).write_text(json.dumps({**meta, features.HASHES: features.array_hashes(d)}))
    assert features.load(d)["train"].X.shape == (3, 4)
    np.save(d / "train.npy", np.load(d / "train.npy")[::-1].copy())  # same shape, dtype, finite values
    with pytest.raises(features.FeaturesError, match=r"train.npy is not the file extract wrote \(its content "
                                                     r"changed"):
        features.load(d)
    (d / features.META).write_text(json.dumps(meta))  # another producer may record no hashes
    assert features.load(d)["train"].X[0, 0] == 8
