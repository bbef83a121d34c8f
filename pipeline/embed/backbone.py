"""The frozen backbone: architecture registry, weights, preprocessing and the embedding.

The embedding is the pooled feature vector torchvision's classifier receives
(after ``avgpool``, before its dropout), so a head trained on cached embeddings
drops straight into ``model.classifier`` of the full network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import urllib.error
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import EfficientNet_B1_Weights, WeightsEnum

from pipeline.common.errors import PipelineError
from pipeline.common.params import ModelParams

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Architecture:
    build: Callable[..., nn.Module]
    weights: type[WeightsEnum]
    default_weights: str
    feature_dim: int


ARCHITECTURES: dict[str, Architecture] = {
    "efficientnet_b1": Architecture(
        build=torchvision.models.efficientnet_b1,
        weights=EfficientNet_B1_Weights,
        default_weights="IMAGENET1K_V2",
        feature_dim=1280,
    ),
}


class BackboneError(PipelineError):
    """The backbone cannot be built as configured (unknown name, missing weights, bad checkpoint)."""


@dataclasses.dataclass
class Backbone:
    model: nn.Module  # the full torchvision network, eval mode, frozen
    transform: nn.Module  # preprocessing: PIL image -> normalised tensor
    info: dict[str, Any]  # what was built, for features/meta.json

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features of a preprocessed batch, shape (n, feature_dim)."""
        return torch.flatten(self.model.avgpool(self.model.features(images)), 1)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise BackboneError(f"model.arch={name!r} is not supported; choose one of {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def _weights_enum(arch: Architecture, name: str) -> WeightsEnum:
    valid = [w.name for w in arch.weights]
    if name not in valid:
        raise BackboneError(f"model.weights={name!r} is not known; choose one of {valid} or null (random init).")
    return arch.weights[name]


def check_model_params(params: ModelParams) -> None:
    """Refuse an unknown architecture or weights name before any work (prepare calls this)."""
    arch = get_architecture(params.arch)
    if params.weights is not None:
        _weights_enum(arch, params.weights)


def resize_of(params: ModelParams, resize_size: int | None) -> int:
    """The size extraction resizes the shorter side to: ``extract.resize_size``, else the weights' own
    (prepare uses it to refuse, before extraction, an image whose resized size would be unbounded)."""
    if resize_size is not None:
        return resize_size
    arch = get_architecture(params.arch)
    return int(_weights_enum(arch, params.weights or arch.default_weights).transforms().resize_size[0])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _official_weights_for(arch: Architecture, sha256: str) -> str | None:
    """The weights enum whose published file this is (torchvision names files by hash prefix)."""
    for weights in arch.weights:
        match = re.search(r"-([0-9a-f]{8,})\.pth$", weights.url)
        if match and sha256.startswith(match.group(1)):
            return weights.name
    return None


def state_dict_fingerprint(module: nn.Module) -> str:
    """Hash of all parameters and buffers: proves two stages use the very same backbone."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _download_state_dict(weights: WeightsEnum) -> dict[str, torch.Tensor]:
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        raise BackboneError(
            f"Could not download the {weights} weights ({type(err).__name__}: {err}). Offline, place "
            f"{weights.url.rsplit('/', 1)[-1]} at {target} (TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}"
            "), or set model.checkpoint to a local copy of it."
        ) from err


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    name = f"model.checkpoint={str(path)!r}"
    if not path.exists():
        raise BackboneError(f"{name} does not exist; point it at a state dict file "
                            "(e.g. efficientnet_b1-c27df63c.pth).")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise BackboneError(f"{name} exists but is {kind}; point it at a state dict file "
                            "(e.g. efficientnet_b1-c27df63c.pth).")
    if path.stat().st_size == 0:
        raise BackboneError(f"{name} is an empty file; copy the weights file again.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise BackboneError(f"{name} is not a PyTorch state dict file ({type(err).__name__}: {detail}); point it at "
                            "a .pth file saved with torch.save, e.g. efficientnet_b1-c27df63c.pth.") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{name} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


def _load_features(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load the convolutional trunk only: the classifier may have any number of classes."""
    trunk = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    expected = model.features.state_dict()
    missing = sorted(set(expected) - set(trunk))
    mismatched = [k for k in expected if k in trunk and trunk[k].shape != expected[k].shape]
    if missing or mismatched:
        detail = f"{len(missing)} missing key(s) e.g. {missing[:3]}" if missing else (
            f"shape mismatch at {mismatched[0]}: {tuple(trunk[mismatched[0]].shape)} vs "
            f"{tuple(expected[mismatched[0]].shape)}")
        raise BackboneError(f"{source} does not fit {type(model).__name__}'s features: {detail}. "
                            "Is it a checkpoint of another architecture?")
    damaged = [k for k, v in trunk.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if damaged:
        raise BackboneError(f"{source} holds NaN or infinite values in {len(damaged)} tensor(s), e.g. "
                            f"features.{damaged[0]}: the file is damaged; copy it again.")
    model.features.load_state_dict(trunk, strict=True)


def build_backbone(params: ModelParams, *, crop_size: int | None = None,
                   resize_size: int | None = None) -> Backbone:
    """Build the frozen backbone described by the ``model`` params (eval mode, no grad)."""
    arch = get_architecture(params.arch)
    info: dict[str, Any] = {"arch": params.arch, "weights": params.weights, "checkpoint": None,
                            "checkpoint_sha256": None, "init_seed": None}
    transform_weights = _weights_enum(arch, params.weights or arch.default_weights)
    torch.manual_seed(params.init_seed)  # makes the random init (weights: null) reproducible
    model = arch.build()
    if params.checkpoint is not None:
        path = Path(params.checkpoint)
        sha = _file_sha256(path) if path.is_file() else ""
        _load_features(model, _load_checkpoint(path), f"model.checkpoint={params.checkpoint!r}")
        official = _official_weights_for(arch, sha)
        info.update(checkpoint=str(path), checkpoint_sha256=sha, weights=official, pretrained=official is not None)
        if official is None:
            warnings.warn(f"{path} is not a published torchvision file for {params.arch}; its results are "
                          "recorded as pretrained: false.", stacklevel=2)
    elif params.weights is not None:
        weights = _weights_enum(arch, params.weights)
        _load_features(model, _download_state_dict(weights), str(weights))
        info["pretrained"] = True
    else:
        info.update(pretrained=False, init_seed=params.init_seed)
        warnings.warn("model.weights is null: the backbone is RANDOMLY INITIALISED. Its embeddings carry no "
                      "signal; results are recorded as pretrained: false.", stacklevel=2)
    model.eval().requires_grad_(False)
    overrides = {k: v for k, v in {"crop_size": crop_size, "resize_size": resize_size}.items() if v is not None}
    transform = transform_weights.transforms(**overrides)
    info.update(
        feature_dim=arch.feature_dim,
        fingerprint=state_dict_fingerprint(model.features),
        transform={
            "weights": transform_weights.name,
            "crop_size": list(transform.crop_size), "resize_size": list(transform.resize_size),
            "mean": list(transform.mean), "std": list(transform.std),
            "interpolation": transform.interpolation.value,
        },
    )
    log.info("backbone %s weights=%s pretrained=%s transform=%s", params.arch, info["weights"],
             info["pretrained"], info["transform"])
    return Backbone(model=model, transform=transform, info=info)


def full_model_with_head(backbone: Backbone, head: nn.Sequential) -> nn.Module:
    """The torchvision network for ``n`` classes with the trained head as its classifier."""
    arch = get_architecture(backbone.info["arch"])
    n_classes = head[-1].out_features
    model = arch.build(num_classes=n_classes)
    model.features.load_state_dict(backbone.model.features.state_dict())
    model.classifier.load_state_dict(head.state_dict())
    return model.eval()
