import numpy as np
import pytest
import torch
import torchvision

from pipeline.data.images import load_rgb
from pipeline.embed.backbone import BackboneError, build_backbone, full_model_with_head, parse_backbone
from pipeline.embed.embedding import Settings, embed_paths
from pipeline.embed.sources.torchvision_models import split_head


def tv(model="efficientnet_b1", **kw):
    return parse_backbone("b", {"source": "torchvision", "model": model, "weights": None, **kw})


def calibrate(model: torch.nn.Module, size: int) -> None:
    """Batch-norm statistics from one batch of noise: with the defaults, activations vanish (~1e-14) and any
    vector would pass for the embedding."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    model.eval()


# one model of each torchvision family, at the smallest input it takes
FAMILIES = [("resnet18", 64), ("efficientnet_b0", 64), ("mobilenet_v3_small", 64),
            ("convnext_tiny", 64), ("regnet_y_400mf", 64), ("densenet121", 64), ("mnasnet0_5", 64),
            ("shufflenet_v2_x0_5", 64), ("vgg11", 32), ("swin_t", 64),
            ("vit_b_32", 224)]


@pytest.mark.parametrize("name,size", FAMILIES)
def test_the_original_head_applied_to_the_embedding_gives_the_models_logits(name, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name)
    calibrate(model, size)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.nn.init.normal_(last.weight, std=0.05)  # ViT starts its head at zero: every embedding would fit
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits = model(x)
        _, head = split_head(model, name)
        embedding = model(x)
    assert embedding.shape == (2, head.in_features)
    assert embedding.std() > 1e-3  # a real signal: the bias alone cannot reproduce the logits
    assert not torch.allclose(logits, head.bias.expand_as(logits), atol=1e-3)
    torch.testing.assert_close(head(embedding), logits, rtol=1e-4, atol=1e-4)


def test_a_model_without_a_linear_classifier_is_refused():
    with pytest.raises(BackboneError, match="has no Linear classifier"):
        split_head(torchvision.models.squeezenet1_0())


def test_random_init_is_explicit_loud_recorded_and_reproducible():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        a = build_backbone("b", tv(), crop_size=64, resize_size=72)
    assert a.info["pretrained"] is False and a.info["weights"] is None and a.info["init_seed"] == 0
    assert a.info["transform"]["crop_size"] == [64] and a.info["transform"]["weights"] == "IMAGENET1K_V2"
    assert a.info["backbone"] == "b" and a.info["source"] == "torchvision" and a.info["feature_dim"] == 1280
    with pytest.warns(UserWarning):
        b = build_backbone("b", tv())
        c = build_backbone("b", tv(init_seed=1))
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]
    assert b.info["transform"]["crop_size"] == [240] and b.info["transform"]["resize_size"] == [255]


def test_bad_entries_name_their_key_and_list_the_choices():
    with pytest.raises(BackboneError, match=r"backbones.b.source='keras' is not known; choose one of \['exported', "
                                            r"'timm', 'torchvision'\]"):
        parse_backbone("b", {"source": "keras", "model": "x"})
    with pytest.raises(BackboneError, match=r"backbones.b.model='resnet9' is not a torchvision classification model; "
                                            r"e.g. \['resnet101'"):
        build_backbone("b", tv("resnet9"))
    with pytest.raises(BackboneError, match=r"backbones.b.weights='IMAGENET9' is not a weights name of "
                                            r"efficientnet_b1; choose one of \['IMAGENET1K_V1'"):
        build_backbone("b", tv(weights="IMAGENET9"))
    with pytest.raises(Exception, match=r"Unknown key\(s\) backbones.b.arch"):
        parse_backbone("b", {"source": "torchvision", "model": "resnet18", "arch": "resnet18"})


def test_failed_weights_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # fail fast even where a network exists
    with pytest.raises(BackboneError, match=r"place efficientnet_b1-c27df63c.pth at .*torch/hub/checkpoints.*checkpoint"):
        build_backbone("b", tv(weights="IMAGENET1K_V2"))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "b0.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), path)
    with pytest.raises(BackboneError, match="does not fit EfficientNet: 148 missing key"):
        build_backbone("b", tv(checkpoint=str(path)))
    state = torchvision.models.efficientnet_b1(num_classes=4).state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"shape mismatch at features.0.0.weight: \(16, 3, 3, 3\) vs \(32, 3, 3, 3\)"):
        build_backbone("b", tv(checkpoint=str(path)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="is not a PyTorch state dict file"):
        build_backbone("b", tv(checkpoint=str(tmp_path / "junk.pth")))
    with pytest.raises(BackboneError, match="exists but is a folder"):
        build_backbone("b", tv(checkpoint=str(tmp_path)))


def test_unofficial_checkpoint_is_recorded_as_not_pretrained(calibrated_checkpoint):
    with pytest.warns(UserWarning, match="not a published torchvision file"):
        backbone = build_backbone("b", tv(checkpoint=str(calibrated_checkpoint)))
    assert backbone.info["pretrained"] is False
    assert backbone.info["checkpoint_sha256"] and backbone.info["weights"] is None


def test_embedding_is_the_pooled_feature_the_classifier_sees(calibrated_checkpoint, dataset):
    with pytest.warns(UserWarning):
        backbone = build_backbone("b", tv(checkpoint=str(calibrated_checkpoint)), crop_size=64, resize_size=72)
    paths = sorted((dataset / "Master Folder" / "test").rglob("*.jpg"))[:5]
    emb = embed_paths(backbone, paths, Settings(device=torch.device("cpu"), precision="fp32", decode="cpu",
                                                batch_size=2, num_workers=0, channels_last=True))
    assert emb.shape == (5, 1280) and emb.dtype == np.float32
    assert emb.std() > 1e-3  # calibrated statistics: real magnitudes, not ~1e-14
    # the classifier's input in torchvision's own network, captured by a hook on its forward pass
    reference_model = torchvision.models.efficientnet_b1()
    reference_model.load_state_dict(torch.load(calibrated_checkpoint))
    seen = []
    reference_model.eval().classifier.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    batch = torch.stack([backbone.transform(load_rgb(p)) for p in paths])
    with torch.no_grad():
        reference_model(batch)
    reference = seen[0].numpy()
    # float32 tolerance relative to the scale: channels_last and batch size change the conv kernels
    np.testing.assert_allclose(emb, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())


def test_the_full_model_puts_the_trained_head_where_the_classifier_was(calibrated_checkpoint):
    with pytest.warns(UserWarning):
        backbone = build_backbone("b", tv(checkpoint=str(calibrated_checkpoint)), crop_size=64, resize_size=72)
    head = torch.nn.Sequential(torch.nn.Dropout(0.3), torch.nn.Linear(1280, 4)).eval()
    full = full_model_with_head(backbone, head)
    reloaded = torchvision.models.efficientnet_b1(num_classes=4)
    reloaded.load_state_dict(full.state_dict())  # needs only torchvision
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), head(backbone.embed(x)), rtol=1e-4, atol=1e-5)
