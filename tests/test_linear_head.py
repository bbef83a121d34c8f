import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pipeline.data.images import load_rgb
from pipeline.embed import features
from pipeline.evaluate.linear_head import LinearHeadClassifier, dropout_, dropped_batches, make_head
from pipeline.evaluate.results import load_model
from tests.conftest import SMALL_RUN, run_stage, write_params


def blobs(n_per_class, seed, dim=1280, k=4, noise=2.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, dim)).astype(np.float32)
    y = np.repeat(np.arange(k), n_per_class)
    return (centres[y] + rng.normal(scale=noise, size=(len(y), dim))).astype(np.float32), y


def test_head_has_exactly_torchvisions_classifier_layout():
    reference = torchvision.models.efficientnet_b1(num_classes=4).classifier
    ours = make_head(1280, 4, 0.2)
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
    X, y = blobs(50, seed=0, noise=6.0)  # noisy enough to overfit: valid loss turns up
    Xv, yv = blobs(10, seed=1, noise=6.0)
    model = LinearHeadClassifier(n_classes=4, max_epochs=200, patience=5, seed=0).fit(X, y, X_valid=Xv, y_valid=yv)
    losses = [row["valid_loss"] for row in model.history_]
    assert len(losses) == model.best_epoch_ + 5 < 200
    assert model.best_epoch_ == int(np.argmin(losses)) + 1


def bits(tensor):
    tensor = tensor.detach().contiguous()
    return tensor.view(torch.int64 if tensor.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("layout", ["float32", "float64", "transposed"])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.37, 0.5, 0.9, 1.0])
def test_fast_dropout_draws_torchs_mask_and_leaves_the_generator_as_torch_does(p, layout):
    x = torch.randn(301, 1280, generator=torch.Generator().manual_seed(1))
    x[0, :4] = torch.tensor([-0.0, float("inf"), float("-inf"), float("nan")])
    x = {"float32": x, "float64": x.double(), "transposed": x.t()}[layout]
    torch.manual_seed(5)
    expected = nn.Dropout(p, inplace=True).train()(x.clone())
    expected_state = torch.get_rng_state()
    torch.manual_seed(5)
    got = dropout_(x.clone(), p)
    assert torch.equal(bits(got), bits(expected)) and torch.equal(torch.get_rng_state(), expected_state)


def batches_both_ways(X, p):
    """Each batch of X (64 rows, the last short) dropped out by nn.Dropout and by dropped_batches from the same
    seed: (ours, torch's, the generator's state after ours, after torch's)."""
    batches = torch.randperm(len(X), generator=torch.Generator().manual_seed(3)).split(64)
    torch.manual_seed(5)
    expected = [nn.Dropout(p, inplace=True).train()(X[batch].clone()) for batch in batches]
    expected_state = torch.get_rng_state()
    torch.manual_seed(5)
    dropped = dropped_batches(X, p, 64)
    got = [dropped(batch).clone() for batch in batches]  # clone: the next batch reuses the buffer
    return got, expected, torch.get_rng_state(), expected_state


@pytest.mark.parametrize("p", [0.2, 0.37, 0.9])
def test_dropped_batches_are_torchs_dropout_of_the_gathered_rows(p):
    """Gathered, drawn and scaled in one pass into a reused buffer: the bits of nn.Dropout on X[batch], batch after
    batch (the last one short), and the generator left where it leaves it."""
    X = torch.randn(301, 1280, generator=torch.Generator().manual_seed(2))
    X[7, :4] = torch.tensor([-0.0, float("inf"), float("-inf"), float("nan")])
    got, expected, state, expected_state = batches_both_ways(X, p)
    assert [len(g) for g in got] == [64, 64, 64, 64, 45]
    assert all(torch.equal(bits(g), bits(e)) for g, e in zip(got, expected))
    assert torch.equal(state, expected_state)


@pytest.mark.parametrize("p, dtype", [(0.0, torch.float32), (1.0, torch.float32), (0.2, torch.float64)])
def test_dropped_batches_fall_back_to_torchs_dropout_where_the_one_pass_does_not_apply(p, dtype):
    X = torch.randn(130, 1280, generator=torch.Generator().manual_seed(2), dtype=dtype)
    got, expected, state, expected_state = batches_both_ways(X, p)
    assert all(torch.equal(bits(g), bits(e)) for g, e in zip(got, expected))
    assert torch.equal(state, expected_state)


def reference_fit(X, y, *, dropout, epochs, batch_size, seed):
    """The training loop written with torch's own modules only: what LinearHeadClassifier must equal."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = make_head(X.shape[1], 4, dropout)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2)
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y).long()
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(X_t), generator=generator).split(batch_size):
            optimiser.zero_grad()
            nn.CrossEntropyLoss()(head(X_t[batch].clone()), y_t[batch]).backward()
            optimiser.step()
    return head


@pytest.mark.parametrize("dropout", [0.2, 0.37, 0.0])
def test_head_trains_exactly_as_torchs_own_modules(dropout):
    X, y = blobs(53, seed=4)  # 212 rows: the last batch of each epoch is short
    model = LinearHeadClassifier(n_classes=4, dropout=dropout, max_epochs=4, batch_size=64, seed=7).fit(X, y)
    reference = reference_fit(X, y, dropout=dropout, epochs=4, batch_size=64, seed=7)
    for name, value in reference.state_dict().items():
        assert torch.equal(bits(model.head_.state_dict()[name]), bits(value)), name


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
    head_logits = load_model("artifacts/models/efficientnet_b1/head.joblib").model.logits(feats["test"].X)

    model = torchvision.models.efficientnet_b1(num_classes=4)
    model.load_state_dict(torch.load("artifacts/export/efficientnet_b1_head.pt", weights_only=True))
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
    assert not (tmp_path / "artifacts" / "export" / "efficientnet_b1_head.pt").exists()


def test_export_refuses_a_model_that_is_not_the_head(tmp_path, monkeypatch):
    from pipeline.common.errors import PipelineError
    from tests.test_train import foreign_features

    monkeypatch.chdir(tmp_path)
    foreign_features(tmp_path / "features" / "efficientnet_b1", groups_path=tmp_path / "artifacts" / "data" / "groups.csv")
    params = write_params(tmp_path / "params.yaml", SMALL_RUN)
    assert run_stage("train", params, "knn", without=("--manifest",)) == 0
    with pytest.raises(PipelineError, match="not the linear head"):
        run_stage("export", params, None, "--model", "artifacts/models/efficientnet_b1/knn.joblib")
