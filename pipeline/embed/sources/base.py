"""What every backbone source builds, and the helpers they share (hashes, checkpoints, preprocessing)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from pipeline.common.errors import PipelineError
from pipeline.common.io import file_sha256

INTERPOLATIONS = {mode.value: mode for mode in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR,
                                                InterpolationMode.BICUBIC)}


class BackboneError(PipelineError):
    """A backbone cannot be built as configured (unknown name, missing weights, bad file, missing extra)."""


@dataclasses.dataclass
class Backbone:
    """A frozen network that maps a normalised image batch to embeddings, with its preprocessing."""

    model: nn.Module  # eval mode, frozen: (n, 3, h, w) -> (n, feature_dim)
    transform: Preset  # preprocessing: PIL image -> normalised tensor (resize, centre crop)
    info: dict[str, Any]  # what was built, for features/meta.json

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings of a preprocessed batch, shape (n, feature_dim)."""
        return self.model(images)


def state_dict_fingerprint(module: nn.Module) -> str:
    """Hash of all parameters and buffers: proves two stages use the very same backbone."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def existing_file(path: str, key: str, example: str) -> Path:
    """``path`` as a Path (``~`` expanded, as a shell would), refused with a line naming ``key`` when it is missing,
    not a file, or empty."""
    file = Path(path).expanduser()
    if not file.exists():
        raise BackboneError(f"{key}={path!r} does not exist; point it at {example}.")
    if not file.is_file():
        kind = "a folder" if file.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise BackboneError(f"{key}={path!r} exists but is {kind}; point it at {example}.")
    if file.stat().st_size == 0:
        raise BackboneError(f"{key}={path!r} is an empty file; copy it again.")
    return file


def check_pin(name: str, sha256: str | None, file: str | None, file_key: str) -> None:
    """``<name>.sha256``, where set, is a sha256 and pins a file the entry names."""
    if sha256 is not None and file is None:
        raise BackboneError(f"{name}.sha256 pins {name}.{file_key}, which is not set; set it, or remove sha256.")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise BackboneError(f"{name}.sha256={sha256!r} is not a sha256 (64 hex digits); write the one sha256sum "
                            f"prints for {file}.")


def pinned_sha256(path: Path, sha256: str | None, key: str, *, code: bool) -> str:
    """The sha256 of ``path`` (the file of entry key ``key``), computed before anything reads the file as a model:
    refused in one line unless it is the entry's pin; unpinned, a warning that names the hash to pin.

    ``code``: the file is a program (TorchScript, ``torch.export``), not a weights file read with weights_only.
    """
    sha = file_sha256(path)
    pin = f"{key.rsplit('.', 1)[0]}.sha256"
    if sha256 is not None and sha != sha256.lower():
        raise BackboneError(f"{key}={str(path)!r} has sha256 {sha}, not the pinned {pin}={sha256}: it is not loaded. "
                            "Copy the file you pinned, or pin this one once you trust where it came from.")
    if sha256 is None:
        what = ("executable code (loading it runs the program it holds)" if code else
                "a weights file (read as tensors only, but not the one you checked unless pinned)")
        warnings.warn(f"{key}={str(path)!r} is {what} and is not pinned; pin it with {pin}: {sha} once you trust "
                      "where it came from.", stacklevel=3)
    return sha


def refuse_unsafe_torch_load() -> None:
    """torch honours ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` by unpickling weights files in full, which runs any code
    a file carries: no backbone is built while it is set."""
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise BackboneError("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: torch would then load weights files with full "
                            "pickle, which can run code a file carries; unset it (unset "
                            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) and run again.")


def load_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A checkpoint file's state dict (a bare one, or under ``state_dict``), refused with one line if it is not."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors alike
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise BackboneError(f"{key}={str(path)!r} is not a PyTorch state dict file ({type(err).__name__}: "
                            f"{detail}); point it at a .pth file saved with torch.save.") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{key}={str(path)!r} holds a {type(state).__name__}, not a state dict of tensors.")
    return state


@dataclasses.dataclass(frozen=True)
class Preset:
    """The eval preprocessing every source is expressed in: resize the shorter side, centre crop, normalise.

    torchvision's ``weights.transforms()``, read through its public attributes and computed with
    ``torchvision.transforms.functional``, so the device decode path and the view augmentations
    (``pipeline.embed.loading.Preprocess``) read one set of attributes whatever the source.
    """

    crop_size: list[int]
    resize_size: list[int]
    interpolation: InterpolationMode
    antialias: bool
    mean: list[float]
    std: list[float]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the crop."""
        return (self.crop_size[0], self.crop_size[-1])

    @classmethod
    def of(cls, transform: Any, *, crop_size: int | None = None, resize_size: int | None = None, **extra: Any):
        """From another preset or ``weights.transforms()``, with ``crop_size``/``resize_size`` (``extract``'s)
        applied where set; ``extra``: a subclass's own fields."""
        return cls(crop_size=[crop_size or transform.crop_size[0]],
                   resize_size=[resize_size or transform.resize_size[0]], interpolation=transform.interpolation,
                   antialias=transform.antialias, mean=list(transform.mean), std=list(transform.std), **extra)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """A PIL image or 8-bit tensor -> the normalised float tensor, as ``weights.transforms()`` computes it."""
        image = F.resize(image, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        image = F.center_crop(image, self.crop_size)
        image = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)
        return F.normalize(F.convert_image_dtype(image, torch.float), mean=self.mean, std=self.std)


def transform_info(transform: Preset, **extra: Any) -> dict[str, Any]:
    return {**extra, "crop_size": list(transform.crop_size), "resize_size": list(transform.resize_size),
            "mean": list(transform.mean), "std": list(transform.std),
            "interpolation": transform.interpolation.value}


def check_embedding_shape(model: nn.Module, crop_size: int, key: str) -> int:
    """Run batches of 2 and 3 images through ``model``: each must give (n, d) finite floats, the same d > 0 for both
    (a model that ignores the batch size, or returns nothing, is caught here, not by a later stage). Returns d."""
    dims = []
    for n in (2, 3):
        image = torch.linspace(-1, 1, n * 3 * crop_size * crop_size).reshape(n, 3, crop_size, crop_size)
        try:
            with torch.inference_mode():
                out = model(image)
        except Exception as err:  # whatever the user's program raises
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BackboneError(f"{key}: the model fails on a ({n}, 3, {crop_size}, {crop_size}) batch "
                                f"({type(err).__name__}: {detail[:300]}); it must take a normalised image batch of "
                                "any size n (export it with a dynamic batch dimension) at the entry's crop_size.") from err
        if (not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n or out.shape[1] == 0
                or not out.is_floating_point()):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BackboneError(f"{key}: the model returns {shape} for a batch of {n} images; it must return (n, d) "
                                "float embeddings with d >= 1, one row per image (pool and flatten inside the model).")
        if not torch.isfinite(out).all():
            raise BackboneError(f"{key}: the model returns NaN or infinite embeddings for a batch of {n} test "
                                "images; check the file (its weights, or its arithmetic in this precision).")
        dims.append(int(out.shape[1]))
    if dims[0] != dims[1]:
        raise BackboneError(f"{key}: the model returns {dims[0]} features per image for a batch of 2 and {dims[1]} "
                            "for a batch of 3; the width must not depend on the batch size.")
    return dims[0]
