"""The other backbone sources: timm (the optional extra, offline) and a team's own exported file."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch.export import Dim

from pipeline.common.features import load
from pipeline.embed.backbone import BackboneError, build_backbone, full_model_with_head, parse_backbone
from pipeline.evaluate.results import load_model
from tests.conftest import PROJECT, SMALL_RUN, make_dataset, run_stage, write_params


def test_a_timm_model_builds_offline_from_a_local_file_with_timms_own_preprocessing(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    entry = parse_backbone("t", {"source": "timm", "model": "resnet18", "checkpoint": str(tmp_path / "resnet18.pth")})
    with pytest.warns(UserWarning, match="timm publishes no hash this file matches"):
        backbone = build_backbone("t", entry)
    info = backbone.info
    assert info["pretrained"] is False and len(info["checkpoint_sha256"]) == 64 and info["feature_dim"] == 512
    # timm's eval transform for resnet18: resize 235 (224 / crop_pct 0.95), centre crop 224, bicubic
    assert info["transform"]["crop_size"] == [224] and info["transform"]["resize_size"] == [235]
    assert info["transform"]["interpolation"] == "bicubic"
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        embedding = backbone.embed(x)
        torch.testing.assert_close(reference.get_classifier()(embedding), reference(x), rtol=1e-4, atol=1e-4)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(512, 3)).eval()
    full = full_model_with_head(backbone, head).eval()
    with torch.no_grad():
        torch.testing.assert_close(full(x), head(embedding), rtol=1e-4, atol=1e-5)
    with pytest.raises(BackboneError, match=r"backbones.t.model='resnet9x' is not a timm model"):
        build_backbone("t", parse_backbone("t", {"source": "timm", "model": "resnet9x", "pretrained": False}))


def test_a_timm_entry_without_the_extra_installed_is_one_line(tmp_path):
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(tmp_path)})
    import yaml

    settings = yaml.safe_load(params.read_text())
    settings["backbones"]["vit"] = {"source": "timm", "model": "vit_tiny_patch16_224", "pretrained": False}
    params.write_text(yaml.safe_dump(settings))
    code = ("import sys; sys.modules['timm'] = None; from pipeline.common.cli import run; "
            "from pipeline.prepare import main; raise SystemExit(run(main, sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "--params", str(params), "--manifest", "m.csv", "--skipped",
                             "s.csv", "--source", "s.json"], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == ("error: backbones.vit.source: timm needs the timm extra, which is "
                                                      "not installed: pip install -e '.[timm]' (or remove the entry).")
    assert "Traceback" not in result.stderr and not (tmp_path / "m.csv").exists()


class Encoder(torch.nn.Module):
    """A team's own model: normalised images in, pooled (n, 24) embeddings out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 24, 5, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def write_exported(path, kind):
    torch.manual_seed(0)
    model = Encoder().eval()
    if kind == "pt2":
        program = torch.export.export(model, (torch.randn(2, 3, 64, 64),), dynamic_shapes=({0: Dim("batch")},))
        torch.export.save(program, str(path))
    else:
        torch.jit.script(model).save(str(path))
    return model


@pytest.mark.parametrize("kind", ["pt2", "ts"])
def test_an_exported_file_is_a_backbone_end_to_end(tmp_path, monkeypatch, kind):
    model = write_exported(tmp_path / f"encoder.{kind}", kind)
    data = make_dataset(tmp_path / "data", train_per_class=4, held_out_per_class=2, augs=1)
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(data), "views.count": 0})
    import yaml

    settings = yaml.safe_load(params.read_text())
    settings["backbones"] = {"mine": {"source": "exported", "file": str(tmp_path / f"encoder.{kind}"),
                                      "pretrained": True, "crop_size": 64, "resize_size": 72,
                                      "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    settings["extract"]["crop_size"] = settings["extract"]["resize_size"] = None  # the entry's own preprocessing
    params.write_text(yaml.safe_dump(settings))
    monkeypatch.chdir(tmp_path)
    warnings.simplefilter("ignore", UserWarning)
    for stage in ["prepare", "audit", "folds", "extract"]:
        assert run_stage(stage, params, "mine" if stage == "extract" else None) == 0
    feats = load(tmp_path / "features" / "mine")
    meta = feats.meta
    assert meta["source"] == "exported" and meta["feature_dim"] == 24 and meta["pretrained"] is True
    assert meta["transform"]["mean"] == [0.5, 0.5, 0.5] and meta["transform"]["interpolation"] == "bicubic"
    # the embedding is the model's output on the entry's preprocessing
    from pipeline.data.images import load_rgb

    path = data / "Master Folder" / feats["test"].paths[0]
    transform = build_backbone("mine", parse_backbone("mine", settings["backbones"]["mine"])).transform
    with torch.no_grad():
        expected = model(transform(load_rgb(path))[None]).numpy()
    np.testing.assert_allclose(feats["test"].X[:1], expected, rtol=1e-4, atol=1e-5)
    assert run_stage("train", params, ("mine", "logreg")) == 0
    assert run_stage("train", params, ("mine", "head")) == 0
    assert run_stage("export", params, "mine") == 0  # the head alone: there is no library network to put it in
    exported = load_file(tmp_path / "artifacts" / "export" / "mine_head.safetensors")
    assert exported["1.weight"].shape == (4, 24)
    from pipeline.predict import main as predict

    saved = load_model(tmp_path / "artifacts" / "models" / "mine" / "logreg")
    assert saved.backbone == "mine" and saved.features_meta["fingerprint"] == meta["fingerprint"]
    assert predict([str(data / "Master Folder" / "test"), "--model", "mine/logreg", "--format", "csv"]) == 0


def test_an_exported_file_under_home_is_found_through_a_tilde(tmp_path, monkeypatch):
    """``~/models/encoder.pt2`` means what a shell user means by it, for the file and its recorded hash."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    write_exported(tmp_path / "models" / "encoder.pt2", "pt2")
    entry = {"source": "exported", "file": "~/models/encoder.pt2", "pretrained": True, "crop_size": 64,
             "resize_size": 72}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = build_backbone("mine", parse_backbone("mine", entry))
    assert backbone.info["feature_dim"] == 24 and len(backbone.info["fingerprint"]) == 64
