import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from pipeline.common import features
from pipeline.data.images import load_rgb
from pipeline.evaluate.linear_head import AdamWStep, LinearHeadClassifier, dropout_, make_head
from pipeline.evaluate.results import load_model
from tests.conftest import SMALL_RUN, run_stage, write_params


def blobs(n_per_class, seed, dim=1280, k=4, noise=2.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, dim)).astype(np.float32)
    y = np.repeat(np.arange(k), n_per_class)
    return (centres[y] + rng.normal(scale=noise, size=(len(y), dim))).astype(np.float32), y


def test_head_has_exactly_torchvisions_classifier_layout():
    reference = torchvision.models.efficientnet_b1(num_classes=4).classifier
    ours = make_head(1280, 4, 0.2, generator=torch.Generator())
    assert [type(m) for m in ours] == [type(m) for m in reference]
    assert ours[0].p == reference[0].p and ours.state_dict().keys() == reference.state_dict().keys()


def test_head_learns_separable_embeddings():
    X, y = blobs(50, seed=0)
    Xt, yt = blobs(25, seed=2)
    model = LinearHeadClassifier(n_classes=4, max_epochs=20, seed=0).fit(X, y)
    assert (model.predict(Xt) == yt).mean() > 0.95
    assert len(model.history_) == 20  # no valid set: exactly max_epochs
    np.testing.assert_allclose(model.predict_proba(Xt).sum(1), 1, rtol=1e-5)


def test_early_stopping_keeps_the_epoch_with_the_lowest_valid_loss():
    X, y = blobs(20, seed=0, noise=10.0)  # noisy enough to overfit: valid loss turns up
    Xv, yv = blobs(10, seed=1, noise=10.0)
    model = LinearHeadClassifier(n_classes=4, max_epochs=200, patience=5, seed=0).fit(X, y, X_valid=Xv, y_valid=yv)
    losses = [row["valid_loss"] for row in model.history_]
    assert len(losses) == model.best_epoch_ + 5 < 200
    assert model.best_epoch_ == int(np.argmin(losses)) + 1


def test_dropout_zeroes_a_share_p_and_keeps_the_expectation():
    out = dropout_(torch.ones(200, 1280), 0.2, np.random.default_rng(0))
    zeroed = (out == 0).float().mean().item()
    assert abs(zeroed - 0.2) < 0.01 and torch.allclose(out[out != 0], torch.tensor(1 / 0.8))
    assert torch.equal(dropout_(torch.ones(200, 1280), 0.2, np.random.default_rng(0)), out)  # the seed decides
    x = torch.ones(3, 4)
    assert dropout_(x, 0.0, np.random.default_rng(0)) is x


def test_fit_leaves_torchs_global_generator_alone_and_does_not_depend_on_it():
    X, y = blobs(20, seed=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = LinearHeadClassifier(n_classes=4, max_epochs=3, seed=5).fit(X, y)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # another global state: the same head
    b = LinearHeadClassifier(n_classes=4, max_epochs=3, seed=5).fit(X, y)
    for name, value in a.head_.state_dict().items():
        assert torch.equal(b.head_.state_dict()[name], value), name


def test_the_initial_weights_are_nn_linears_own_initialisation_drawn_from_the_seed():
    torch.manual_seed(7)
    reference = nn.Linear(1280, 4)
    ours = make_head(1280, 4, 0.2, generator=torch.Generator().manual_seed(7))[1]
    assert torch.equal(ours.weight, reference.weight) and torch.equal(ours.bias, reference.bias)


def reference_fit(X, y, *, epochs, batch_size, seed):
    """The training loop written with torch's modules and AdamW, from the head's initial weights and batch order."""
    generator = torch.Generator().manual_seed(seed)
    head = make_head(X.shape[1], 4, 0.0, generator=generator)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y).long()
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(X_t), generator=generator).split(batch_size):
            optimiser.zero_grad()
            nn.CrossEntropyLoss()(head(X_t[batch].clone()), y_t[batch]).backward()
            optimiser.step()
    return head


@pytest.mark.parametrize(("lr", "weight_decay"), [(1e-3, 1e-2), (3e-2, 0.0)])
def test_a_flat_step_is_autograd_and_adamw_to_float32_rounding(lr, weight_decay):
    generator = torch.Generator().manual_seed(0)
    reference = make_head(1280, 4, 0.0, generator=generator)[1]
    ours = copy.deepcopy(reference)
    optimiser = torch.optim.AdamW(reference.parameters(), lr=lr, weight_decay=weight_decay)
    step = AdamWStep(ours, lr=lr, weight_decay=weight_decay)
    for size in [64, 64, 37, 64, 1]:  # a short batch and a single row too
        x = torch.randn(size, 1280, generator=generator)
        y = torch.randint(0, 4, (size,), generator=generator)
        optimiser.zero_grad()
        loss = nn.CrossEntropyLoss()(reference(x), y)
        loss.backward()
        optimiser.step()
        torch.testing.assert_close(step(x, y), loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.weight, reference.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.bias, reference.bias.detach(), rtol=1e-5, atol=1e-6)


def test_head_trains_as_torchs_own_modules_and_adamw():
    X, y = blobs(53, seed=4)  # 212 rows: the last batch of each epoch is short
    model = LinearHeadClassifier(n_classes=4, dropout=0.0, max_epochs=4, batch_size=64, seed=7).fit(X, y)
    reference = reference_fit(X, y, epochs=4, batch_size=64, seed=7)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.head_.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_head_training_is_deterministic():
    X, y = blobs(20, seed=0)
    a = LinearHeadClassifier(n_classes=4, max_epochs=5, seed=3).fit(X, y).logits(X)
    b = LinearHeadClassifier(n_classes=4, max_epochs=5, seed=3).fit(X, y).logits(X)
    np.testing.assert_array_equal(a, b)


def test_full_model_on_image_files_equals_head_on_cached_embeddings(dataset, calibrated_checkpoint, tmp_path,
                                                                    monkeypatch):
    params = write_params(tmp_path / "params.yaml", {
        **SMALL_RUN, "data.root": str(dataset), "backbones.efficientnet_b1.checkpoint": str(calibrated_checkpoint)})
    monkeypatch.chdir(tmp_path)
    warnings.simplefilter("ignore", UserWarning)
    for stage in ["prepare", "audit", "folds", "extract"]:
        assert run_stage(stage, params) == 0
    assert run_stage("train", params, "head") == 0
    assert run_stage("export", params) == 0

    feats = features.load("features/efficientnet_b1")
    head_logits = load_model("artifacts/models/efficientnet_b1/head").model.logits(feats["test"].X)

    model = torchvision.models.efficientnet_b1(num_classes=4)
    model.load_state_dict(load_file("artifacts/export/efficientnet_b1_head.safetensors"))
    model.eval()
    transform = torchvision.models.EfficientNet_B1_Weights.IMAGENET1K_V2.transforms(crop_size=64, resize_size=72)
    images = torch.stack([transform(load_rgb(dataset / "Master Folder" / p)) for p in feats["test"].paths])
    with torch.no_grad():
        full_logits = model(images).numpy()

    assert head_logits.std(axis=0).max() > 1e-3  # logits differ between images: the check has teeth
    np.testing.assert_allclose(full_logits, head_logits, rtol=1e-3, atol=1e-3 * np.abs(head_logits).max())


def test_export_refuses_a_backbone_other_than_the_one_that_made_the_features(dataset, tmp_path, monkeypatch):
    params = write_params(tmp_path / "params.yaml", {**SMALL_RUN, "data.root": str(dataset)})
    monkeypatch.chdir(tmp_path)
    warnings.simplefilter("ignore", UserWarning)
    for stage in ["prepare", "audit", "folds", "extract"]:
        assert run_stage(stage, params) == 0
    assert run_stage("train", params, "head") == 0
    write_params(params, {**SMALL_RUN, "data.root": str(dataset), "backbones.efficientnet_b1.init_seed": 7})
    from pipeline.embed.backbone import BackboneError

    with pytest.raises(BackboneError, match="fingerprints differ"):
        run_stage("export", params)
    assert not (tmp_path / "artifacts" / "export" / "efficientnet_b1_head.safetensors").exists()


def test_export_refuses_a_model_that_is_not_the_head(tmp_path, monkeypatch):
    from pipeline.common.errors import PipelineError
    from tests.test_train import foreign_features

    monkeypatch.chdir(tmp_path)
    foreign_features(tmp_path / "features" / "efficientnet_b1", groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    params = write_params(tmp_path / "params.yaml", SMALL_RUN)
    assert run_stage("train", params, "knn", without=("--manifest",)) == 0
    with pytest.raises(PipelineError, match="not the linear head"):
        run_stage("export", params, None, "--model", "artifacts/models/efficientnet_b1/knn")
