"""A team's own model as a file: a ``torch.export`` program (``.pt2``) or a TorchScript file.

The file maps a normalised image batch ``(n, 3, crop, crop)`` to embeddings
``(n, d)``; the entry states its preprocessing (resize of the shorter side, centre
crop, interpolation, mean, std) and whether it is pretrained, since no library can
vouch for the file. Its sha256 is the backbone's fingerprint.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from pipeline.common.params import in_range
from pipeline.embed.sources.base import (
    INTERPOLATIONS,
    Backbone,
    BackboneError,
    Preset,
    check_embedding_shape,
    check_pin,
    existing_file,
    pinned_sha256,
    transform_info,
)


@dataclasses.dataclass(frozen=True)
class ExportedEntry:
    source: Literal["exported"]
    file: str  # a torch.export program (.pt2) or a TorchScript file (.pt, .ts, ...)
    pretrained: bool  # required: what the file's results are recorded as (nothing else can tell)
    crop_size: int
    resize_size: int
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: list[float] = dataclasses.field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = dataclasses.field(default_factory=lambda: [0.229, 0.224, 0.225])
    sha256: str | None = None  # the file's pinned hash: a file with other bytes is refused before it is loaded

    def check(self, name: str) -> None:
        check_pin(name, self.sha256, self.file, "file")
        in_range(name, "crop_size", self.crop_size, 8, 4096)
        in_range(name, "resize_size", self.resize_size, self.crop_size, 4096)
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3:
                raise BackboneError(f"{name}.{key}={values!r} must hold 3 numbers, one per RGB channel.")
        for i, value in enumerate(self.std):
            in_range(name, f"std[{i}]", value, 1e-6, None)


def _load(path: Path, entry: ExportedEntry, key: str) -> nn.Module:
    logging.disable(logging.WARNING)  # torch logs its own traceback before raising: the one line below says it all
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # zip, pickle, torch errors alike
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        kind = "torch.export program (.pt2)" if path.suffix == ".pt2" else "TorchScript file"
        raise BackboneError(f"{key}.file={entry.file!r} is not a readable {kind} ({type(err).__name__}: "
                            f"{detail[:300]}); save it with torch.export.save or torch.jit.save.") from err
    finally:
        logging.disable(logging.NOTSET)


def resize(entry: ExportedEntry) -> int:
    return entry.resize_size


def check(entry: ExportedEntry, key: str) -> Path:
    return existing_file(entry.file, f"{key}.file", "a torch.export program (.pt2) or a TorchScript file")


def build(entry: ExportedEntry, key: str, *, crop_size: int | None, resize_size: int | None) -> Backbone:
    path = check(entry, key)
    sha = pinned_sha256(path, entry.sha256, f"{key}.file", code=True)
    model = _load(path, entry, key)
    for parameter in model.parameters():  # ScriptModules refuse requires_grad_ on the module itself
        parameter.requires_grad_(False)
    if isinstance(model, torch.jit.ScriptModule):
        model.eval()  # an exported program's module is in eval form already and refuses eval()
    transform = Preset([crop_size or entry.crop_size], [resize_size or entry.resize_size],
                       INTERPOLATIONS[entry.interpolation], True, list(entry.mean), list(entry.std))
    dim = check_embedding_shape(model, transform.crop_size[0], f"{key}.file={entry.file!r}")
    if not entry.pretrained:
        warnings.warn(f"{key}.pretrained is false: results are recorded as pretrained: false.", stacklevel=2)
    info: dict[str, Any] = {"arch": entry.file, "weights": None, "checkpoint": entry.file, "checkpoint_sha256": sha,
                            "init_seed": None, "pretrained": entry.pretrained, "fingerprint": sha, "head": None,
                            "feature_dim": dim, "transform": transform_info(transform, weights=None)}
    return Backbone(model=model, transform=transform, info=info)
