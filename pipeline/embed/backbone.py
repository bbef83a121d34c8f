"""The backbone registry: one ``backbones:`` entry in params.yaml -> a frozen model, its preprocessing, its record.

Every source (``pipeline.embed.sources``) answers the same questions: the keys of
its entry, a cheap check run by ``prepare`` before any work, and ``build``. What
is built is recorded in ``features/<backbone>/meta.json`` (``info``) so that
``predict``, ``export`` and the Ray workers rebuild exactly the same backbone and
prove it by fingerprint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.common.errors import PipelineError
from pipeline.common.params import BACKBONES_SECTION, parse_section
from pipeline.embed.sources import exported_models, timm_models, torchvision_models
from pipeline.embed.sources.base import Backbone, BackboneError, refuse_unsafe_torch_load

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    entry: type  # the dataclass of an entry's keys
    check: Callable[[Any, str], None]  # cheap: names exist, files exist, extra installed
    build: Callable[..., Backbone]
    resize: Callable[[Any], int]  # the shorter side its own preprocessing resizes to, without building the model
    exports_full_model: bool  # export can put the linear head back into the library's network


SOURCES: dict[str, Source] = {
    "torchvision": Source(torchvision_models.TorchvisionEntry, torchvision_models.check, torchvision_models.build,
                          torchvision_models.resize, exports_full_model=True),
    "timm": Source(timm_models.TimmEntry, timm_models.check, timm_models.build, timm_models.resize,
                   exports_full_model=True),
    "exported": Source(exported_models.ExportedEntry, exported_models.check, exported_models.build,
                       exported_models.resize, exports_full_model=False),
}


def parse_backbone(name: str, raw: Any) -> Any:
    """The typed entry ``backbones.<name>`` (its keys checked against its source's)."""
    key = f"{BACKBONES_SECTION}.{name}"
    if not isinstance(raw, dict) or "source" not in raw:
        raise BackboneError(f"{key} needs a source: one of {sorted(SOURCES)}, e.g. "
                            "{source: torchvision, model: resnet50, weights: DEFAULT}.")
    if raw["source"] not in SOURCES:
        raise BackboneError(f"{key}.source={raw['source']!r} is not known; choose one of {sorted(SOURCES)}.")
    return parse_section(SOURCES[raw["source"]].entry, raw, key)


def check_backbones(section: dict[str, Any]) -> None:
    """Refuse a bad entry (unknown source, model or weights, missing file or extra) before any work."""
    for name, raw in section.items():
        entry = parse_backbone(name, raw)
        SOURCES[entry.source].check(entry, f"{BACKBONES_SECTION}.{name}")


def resize_of(entry: Any, resize_size: int | None) -> int:
    """The size extraction resizes an image's shorter side to for this entry: ``extract.resize_size``, else the
    source's own (prepare uses it to refuse, before extraction, an image whose resized size would be unbounded)."""
    return resize_size if resize_size is not None else SOURCES[entry.source].resize(entry)


def build_backbone(name: str, entry: Any, *, crop_size: int | None = None,
                   resize_size: int | None = None) -> Backbone:
    """Build the frozen backbone of entry ``name`` (eval mode, no grad), with the preprocessing sizes overridden
    where ``extract.crop_size``/``resize_size`` are set."""
    key = f"{BACKBONES_SECTION}.{name}"
    refuse_unsafe_torch_load()
    backbone = SOURCES[entry.source].build(entry, key, crop_size=crop_size, resize_size=resize_size)
    backbone.info = {"backbone": name, "source": entry.source, "entry": dataclasses.asdict(entry), **backbone.info}
    log.info("backbone %s (%s %s) weights=%s pretrained=%s dim=%d transform=%s", name, entry.source,
             backbone.info["arch"], backbone.info["weights"], backbone.info["pretrained"],
             backbone.info["feature_dim"], backbone.info["transform"])
    return backbone


def full_model_with_head(backbone: Backbone, head: nn.Module) -> nn.Module:
    """The library's network for ``n`` classes with the trained linear head's ``Linear`` as its classifier."""
    source = backbone.info["source"]
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    if source == "torchvision":
        return torchvision_models.full_model_with_head(backbone, linear)
    if source == "timm":
        return timm_models.full_model_with_head(backbone, linear, f"{BACKBONES_SECTION}.{backbone.info['backbone']}")
    raise PipelineError(f"backbone {backbone.info['backbone']!r} comes from an exported file: no library network "
                        "to put the head into; export saves the head alone (its state dict).")


def rebuild_backbone(info: dict[str, Any], *, where: str) -> Backbone:
    """Build again the backbone that ``info`` (a features ``meta.json``) records, and prove it is the same one.

    ``where`` says who rebuilds (predict, export, a Ray worker) for the error, which names the entry.
    """
    entry = parse_backbone(info["backbone"], info["entry"])
    # the file that made the features, and no other, is loaded (checked before it is read as a model)
    entry = dataclasses.replace(entry, sha256=entry.sha256 or info.get("checkpoint_sha256"))
    t = info["transform"]
    backbone = build_backbone(info["backbone"], entry, crop_size=t["crop_size"][0], resize_size=t["resize_size"][0])
    if backbone.info["fingerprint"] != info["fingerprint"] or backbone.info["transform"] != t:
        raise BackboneError(f"The backbone {info['backbone']!r} rebuilt {where} differs from the one that made the "
                            f"features (weights or preprocessing changed: {info.get('weights')!r}, "
                            f"{info.get('checkpoint')!r}); make the weights file the same (checkpoint, TORCH_HOME) "
                            "or re-run dvc repro.")
    return backbone
