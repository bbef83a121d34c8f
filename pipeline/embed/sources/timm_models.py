"""Backbones from timm (an optional extra: ``pip install -e '.[timm]'``).

``timm.create_model(name, num_classes=0)`` returns the pooled pre-logits
embedding; the preprocessing is timm's own eval transform for the model
(``resolve_model_data_config`` + ``create_transform``), expressed as torchvision's
preset so that every decode path runs it. Offline, a local weights file is loaded
through ``pretrained_cfg_overlay=dict(file=...)``; it counts as ``pretrained: true``
only when its sha256 matches the hash timm publishes in the file name of the
model's ``url`` (most timm weights live on the Hugging Face Hub with no hash in
timm itself: those files are recorded as unverified, ``pretrained: false``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from pipeline.common.params import SEED
from pipeline.embed.sources.base import (
    INTERPOLATIONS,
    Backbone,
    BackboneError,
    Preset,
    check_embedding_shape,
    check_pin,
    existing_file,
    pinned_sha256,
    state_dict_fingerprint,
    transform_info,
)

INSTALL = "pip install -e '.[timm]'"


@dataclasses.dataclass(frozen=True)
class TimmEntry:
    source: Literal["timm"]
    model: str  # a timm model name, optionally with its pretrained tag (vit_small_patch16_224.augreg_in21k)
    pretrained: bool = True  # false: random initialisation (recorded as pretrained: false)
    checkpoint: str | None = None  # a local weights file for the model, used instead of the Hub download
    init_seed: int = 0  # seed of the random initialisation (pretrained: false)
    sha256: str | None = None  # the checkpoint's pinned hash: a file with other bytes is refused before it is read
    RANGES: ClassVar[dict] = {"init_seed": SEED}

    def check(self, name: str) -> None:
        check_pin(name, self.sha256, self.checkpoint, "checkpoint")


def _timm(key: str):
    try:
        import timm
        import timm.data
    except ImportError as err:
        raise BackboneError(f"{key}.source: timm needs the timm extra, which is not installed: {INSTALL} "
                            "(or remove the entry).") from err
    return timm


def check(entry: TimmEntry, key: str) -> None:
    timm = _timm(key)
    if not timm.is_model(entry.model):
        base = entry.model.split(".")[0]
        close = timm.list_models(f"{base.split('_')[0]}*")[:10]
        raise BackboneError(f"{key}.model={entry.model!r} is not a timm model; e.g. {close} "
                            "(timm.list_models() lists them all).")


def resize(entry: TimmEntry) -> int:
    """From the model's pretrained config (timm's rule: the crop over its crop_pct), without building it."""
    timm = _timm("timm")
    cfg = timm.models.get_pretrained_cfg(entry.model)
    size = (cfg.input_size if cfg is not None else (3, 224, 224))[-1]
    return int(math.floor(size / (cfg.crop_pct if cfg is not None and cfg.crop_pct else 0.875)))


def _to_preset(transform: Any, key: str, crop_size: int | None, resize_size: int | None) -> Preset:
    """timm's eval transform (Resize shorter side, CenterCrop, ToTensor, Normalize) as torchvision's preset, with
    ``extract.crop_size``/``resize_size`` applied where set."""
    steps = {type(step).__name__: step for step in getattr(transform, "transforms", [])}
    resize, crop, normalize = steps.get("Resize"), steps.get("CenterCrop"), steps.get("Normalize")
    if resize is None or crop is None or normalize is None or not isinstance(resize.size, int) and len(resize.size) != 1:
        raise BackboneError(f"{key}: timm's eval transform for this model is {transform}; only resize + centre "
                            "crop + normalise is supported (set crop_mode center in the model's pretrained config).")
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    if resize.interpolation.value not in INTERPOLATIONS:
        raise BackboneError(f"{key}: timm's interpolation {resize.interpolation.value!r} is not supported.")
    return Preset([crop_size or int(crop.size[0])], [resize_size or int(size)], resize.interpolation, True,
                  normalize.mean.tolist(), normalize.std.tolist())


def build(entry: TimmEntry, key: str, *, crop_size: int | None, resize_size: int | None) -> Backbone:
    timm = _timm(key)
    check(entry, key)
    info: dict[str, Any] = {"arch": entry.model, "weights": None, "checkpoint": None, "checkpoint_sha256": None,
                            "init_seed": None}
    torch.manual_seed(entry.init_seed)
    try:
        if entry.checkpoint is not None:
            path = existing_file(entry.checkpoint, f"{key}.checkpoint", f"a weights file of timm's {entry.model}")
            sha = pinned_sha256(path, entry.sha256, f"{key}.checkpoint", code=False)
            model = timm.create_model(entry.model, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"file": str(path)})
            url = model.pretrained_cfg.get("url") or ""
            published = re.search(r"-([0-9a-f]{8,})\.(pth|pt|bin|safetensors)$", url)  # a hash prefix, if any
            verified = published is not None and sha.startswith(published.group(1))
            info.update(checkpoint=str(path), checkpoint_sha256=sha, weights=model.pretrained_cfg.get("tag"),
                        pretrained=verified)
            if not verified:
                warnings.warn(f"{path}: timm publishes no hash this file matches for {entry.model}, so its results "
                              "are recorded as pretrained: false (unverified).", stacklevel=2)
        elif entry.pretrained:
            model = timm.create_model(entry.model, pretrained=True, num_classes=0)
            info.update(weights=model.pretrained_cfg.get("tag"), pretrained=True)
        else:
            model = timm.create_model(entry.model, pretrained=False, num_classes=0)
            info.update(pretrained=False, init_seed=entry.init_seed)
            warnings.warn(f"{key}.pretrained is false: the backbone is RANDOMLY INITIALISED. Its embeddings carry "
                          "no signal; results are recorded as pretrained: false.", stacklevel=2)
    except (RuntimeError, OSError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        fix = ("is the file a checkpoint of another model?" if entry.checkpoint else
               f"offline, set {key}.checkpoint to a local copy of the weights file")
        raise BackboneError(f"{key}: timm could not build {entry.model!r} ({type(err).__name__}: {detail[:300]}); "
                            f"{fix}.") from err
    model.eval().requires_grad_(False)
    data = timm.data.resolve_model_data_config(model)
    transform = _to_preset(timm.data.create_transform(**data, is_training=False), key, crop_size, resize_size)
    info.update(feature_dim=check_embedding_shape(model, transform.crop_size[0], key),
                fingerprint=state_dict_fingerprint(model), head=model.pretrained_cfg.get("classifier"),
                transform=transform_info(transform, weights=f"timm:{entry.model}"))
    return Backbone(model=model, transform=transform, info=info)


def full_model_with_head(backbone: Backbone, linear: nn.Linear, key: str) -> nn.Module:
    """timm's model for ``n`` classes with the trained head's ``linear`` as its classifier."""
    timm = _timm(key)
    model = timm.create_model(backbone.info["arch"], pretrained=False, num_classes=linear.out_features)
    trunk = backbone.model.state_dict()
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    if unexpected or any(not k.startswith(f"{backbone.info['head']}.") for k in missing):
        raise BackboneError(f"{key}: the trunk does not fit timm's {backbone.info['arch']} with a classifier.")
    model.get_classifier().load_state_dict(linear.state_dict())
    return model.eval()
