import numpy as np
import pytest
import torch
import torchvision

from pipeline.common.params import ModelParams
from pipeline.data.images import load_rgb
from pipeline.embed.backbone import BackboneError, build_backbone
from pipeline.embed.embedding import Settings, embed_paths


def params(**kw):
    return ModelParams(**{"arch": "efficientnet_b1", "weights": None, "checkpoint": None, "init_seed": 0, **kw})


def test_random_init_is_explicit_loud_recorded_and_reproducible():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        a = build_backbone(params(), crop_size=64, resize_size=72)
    assert a.info["pretrained"] is False and a.info["weights"] is None and a.info["init_seed"] == 0
    assert a.info["transform"]["crop_size"] == [64] and a.info["transform"]["weights"] == "IMAGENET1K_V2"
    with pytest.warns(UserWarning):
        b = build_backbone(params())
        c = build_backbone(params(init_seed=1))
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]
    assert b.info["transform"]["crop_size"] == [240] and b.info["transform"]["resize_size"] == [255]


def test_unknown_architecture_and_weights_list_the_valid_choices():
    with pytest.raises(BackboneError, match=r"model.arch='resnet9' is not supported; choose one of \['efficientnet_b1'\]"):
        build_backbone(params(arch="resnet9"))
    with pytest.raises(BackboneError, match=r"model.weights='IMAGENET9' is not known; choose one of \['IMAGENET1K_V1'"):
        build_backbone(params(weights="IMAGENET9"))


def test_failed_weights_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # fail fast even where a network exists
    with pytest.raises(BackboneError, match=r"place efficientnet_b1-c27df63c.pth at .*torch/hub/checkpoints.*model.checkpoint"):
        build_backbone(params(weights="IMAGENET1K_V2"))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit EfficientNet's features: 148 missing key"):
        build_backbone(params(checkpoint=str(path)))
    state = torchvision.models.efficientnet_b1(num_classes=4).state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"shape mismatch at 0.0.weight: \(16, 3, 3, 3\) vs \(32, 3, 3, 3\)"):
        build_backbone(params(checkpoint=str(path)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="is not a PyTorch state dict file"):
        build_backbone(params(checkpoint=str(tmp_path / "junk.pth")))


def test_unofficial_checkpoint_is_recorded_as_not_pretrained(calibrated_checkpoint):
    with pytest.warns(UserWarning, match="not a published torchvision file"):
        backbone = build_backbone(params(checkpoint=str(calibrated_checkpoint)))
    assert backbone.info["pretrained"] is False
    assert backbone.info["checkpoint_sha256"] and backbone.info["weights"] is None


def test_embedding_is_the_pooled_feature_the_classifier_sees(calibrated_checkpoint, dataset):
    with pytest.warns(UserWarning):
        backbone = build_backbone(params(checkpoint=str(calibrated_checkpoint)), crop_size=64, resize_size=72)
    paths = sorted((dataset / "Master Folder" / "test").rglob("*.jpg"))[:5]
    emb = embed_paths(backbone, paths, Settings(device=torch.device("cpu"), precision="fp32", decode="cpu",
                                                batch_size=2, num_workers=0, channels_last=True))
    assert emb.shape == (5, 1280) and emb.dtype == np.float32
    assert emb.std() > 1e-3  # calibrated statistics: real magnitudes, not ~1e-14
    # the classifier's input, captured by a hook on torchvision's own forward pass
    seen = []
    backbone.model.classifier.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    batch = torch.stack([backbone.transform(load_rgb(p)) for p in paths])
    with torch.no_grad():
        backbone.model.to(memory_format=torch.contiguous_format)(batch)
    reference = seen[0].numpy()
    # float32 tolerance relative to the scale: channels_last and batch size change the conv kernels
    np.testing.assert_allclose(emb, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
