"""Backbones from torchvision's classification models (``torchvision.models.list_models``).

The embedding is the input of the model's last ``Linear`` layer: that layer is
replaced by ``Identity``, so the same rule serves every family (ResNet ``fc``,
EfficientNet/MobileNet/ConvNeXt ``classifier``, ViT ``heads``, Swin ``head``, ...)
and the original head applied to the embedding gives the model's logits
(``tests/test_backbone.py`` checks one model of each family).
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.error
import warnings
from typing import Any, ClassVar, Literal

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from pipeline.common.params import SEED
from pipeline.embed.sources.base import (
    Backbone,
    BackboneError,
    Preset,
    check_pin,
    existing_file,
    load_state_dict,
    pinned_sha256,
    state_dict_fingerprint,
    transform_info,
)


@dataclasses.dataclass(frozen=True)
class TorchvisionEntry:
    source: Literal["torchvision"]
    model: str  # a name of torchvision.models.list_models(module=torchvision.models)
    # weights enum name (e.g. IMAGENET1K_V2, DEFAULT); null = random initialisation (recorded as pretrained: false)
    weights: str | None = "DEFAULT"
    checkpoint: str | None = None  # a local state dict of the same model, used instead of downloading
    init_seed: int = 0  # seed of the random initialisation (weights: null)
    sha256: str | None = None  # the checkpoint's pinned hash: a file with other bytes is refused before it is read
    RANGES: ClassVar[dict] = {"init_seed": SEED}

    def check(self, name: str) -> None:
        check_pin(name, self.sha256, self.checkpoint, "checkpoint")


def _weights(entry: TorchvisionEntry, key: str, name: str) -> WeightsEnum:
    enum = torchvision.models.get_model_weights(entry.model)
    valid = [w.name for w in enum]
    if name == "DEFAULT":
        return enum.DEFAULT
    if name not in valid:
        raise BackboneError(f"{key}.weights={name!r} is not a weights name of {entry.model}; choose one of "
                            f"{valid}, DEFAULT, or null (random init).")
    return enum[name]


def check(entry: TorchvisionEntry, key: str) -> None:
    """An unknown model or weights name fails before any work (prepare calls this)."""
    models = torchvision.models.list_models(module=torchvision.models)
    if entry.model not in models:
        family = re.match(r"[a-z]*", entry.model.lower()).group()
        close = [m for m in models if family and m.startswith(family)] or models[:12]
        raise BackboneError(f"{key}.model={entry.model!r} is not a torchvision classification model; e.g. "
                            f"{close} (torchvision.models.list_models() lists them all).")
    if entry.weights is not None:
        _weights(entry, key, entry.weights)


def resize(entry: TorchvisionEntry) -> int:
    return int(_weights(entry, "", entry.weights or "DEFAULT").transforms().resize_size[0])


def split_head(model: nn.Module, key: str = "the model") -> tuple[str, nn.Linear]:
    """Replace the model's last ``Linear`` by ``Identity``; return its name and the layer."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise BackboneError(f"{key}: {type(model).__name__} has no Linear classifier to take the embedding before; "
                            "choose another model.")
    name, head = linears[-1]
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return name, head


def _download(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise BackboneError(
            f"Could not download the {weights} weights ({type(err).__name__}: {err}). Offline, place "
            f"{weights.url.rsplit('/', 1)[-1]} at {target} (TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}"
            "), or set the entry's checkpoint to a local copy of it."
        ) from err


def _official(model: str, sha256: str) -> str | None:
    """The weights enum whose published file this is (torchvision names files by a hash prefix)."""
    for weights in torchvision.models.get_model_weights(model):
        match = re.search(r"-([0-9a-f]{8,})\.pth$", weights.url)
        if match and sha256.startswith(match.group(1)):
            return weights.name
    return None


def _load_trunk(model: nn.Module, head_name: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load everything but the classification layer: a checkpoint may have any number of classes."""
    trunk = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(trunk))
    mismatched = [k for k in expected if k in trunk and trunk[k].shape != expected[k].shape]
    if missing or mismatched:
        detail = f"{len(missing)} missing key(s) e.g. {missing[:3]}" if missing else (
            f"shape mismatch at {mismatched[0]}: {tuple(trunk[mismatched[0]].shape)} vs "
            f"{tuple(expected[mismatched[0]].shape)}")
        raise BackboneError(f"{source} does not fit {type(model).__name__}: {detail}. "
                            "Is it a checkpoint of another architecture?")
    damaged = [k for k, v in trunk.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if damaged:
        raise BackboneError(f"{source} holds NaN or infinite values in {len(damaged)} tensor(s), e.g. "
                            f"{damaged[0]}: the file is damaged; copy it again.")
    model.load_state_dict({k: trunk[k] for k in expected}, strict=True)


def build(entry: TorchvisionEntry, key: str, *, crop_size: int | None, resize_size: int | None) -> Backbone:
    check(entry, key)
    info: dict[str, Any] = {"arch": entry.model, "weights": entry.weights, "checkpoint": None,
                            "checkpoint_sha256": None, "init_seed": None}
    weights = _weights(entry, key, entry.weights or "DEFAULT")  # weights: null still preprocesses as DEFAULT
    torch.manual_seed(entry.init_seed)  # makes the random init (weights: null) reproducible
    model = torchvision.models.get_model(entry.model)
    head_name, head = split_head(model, key)
    if entry.checkpoint is not None:
        path = existing_file(entry.checkpoint, f"{key}.checkpoint",
                             f"a state dict of {entry.model} (a .pth file saved with torch.save)")
        sha = pinned_sha256(path, entry.sha256, f"{key}.checkpoint", code=False)
        _load_trunk(model, head_name, load_state_dict(path, f"{key}.checkpoint"), f"{key}.checkpoint={entry.checkpoint!r}")
        official = _official(entry.model, sha)
        info.update(checkpoint=str(path), checkpoint_sha256=sha, weights=official, pretrained=official is not None)
        if official is None:
            warnings.warn(f"{path} is not a published torchvision file for {entry.model}; its results are "
                          "recorded as pretrained: false.", stacklevel=2)
    elif entry.weights is not None:
        _load_trunk(model, head_name, _download(weights), str(weights))
        info.update(weights=weights.name, pretrained=True)
    else:
        info.update(pretrained=False, init_seed=entry.init_seed)
        warnings.warn(f"{key}.weights is null: the backbone is RANDOMLY INITIALISED. Its embeddings carry no "
                      "signal; results are recorded as pretrained: false.", stacklevel=2)
    model.eval().requires_grad_(False)
    transform = Preset.of(weights.transforms(), crop_size=crop_size, resize_size=resize_size)
    info.update(feature_dim=head.in_features, fingerprint=state_dict_fingerprint(model), head=head_name,
                transform=transform_info(transform, weights=weights.name))
    return Backbone(model=model, transform=transform, info=info)


def full_model_with_head(backbone: Backbone, linear: nn.Linear) -> nn.Module:
    """The torchvision network for ``n`` classes with the trained head's ``linear`` as its last layer.

    Loads into ``get_model(arch, num_classes=n)`` as it is, so the saved state dict needs only torchvision.
    """
    model = torchvision.models.get_model(backbone.info["arch"], num_classes=linear.out_features)
    head_name = backbone.info["head"]
    state = {**backbone.model.state_dict(), **{f"{head_name}.{k}": v for k, v in linear.state_dict().items()}}
    model.load_state_dict(state, strict=True)
    return model.eval()
