"""Which torch device a stage runs on, resolved without importing the extraction code (or torchvision with it).

The train stage of the head resolves ``extract.device`` too: importing ``pipeline.embed.embedding`` for
that alone cost it 2.9 s of torchvision imports.
"""

from __future__ import annotations

import torch

from pipeline.common.errors import PipelineError


class DeviceError(PipelineError):
    """The device asked for is not known, or not on this machine."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a device that is not there is an error."""
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        return torch.device(next(device for device in ("cuda", "mps", "cpu") if available[device]))
    if name not in available:
        raise DeviceError(f"device {name!r} is not known; use one of auto, cpu, cuda, mps.")
    if not available[name]:
        raise DeviceError(f"device {name!r} is not available on this machine (torch {torch.__version__} sees "
                          f"{[d for d, ok in available.items() if ok]}); set extract.device: auto or cpu.")
    return torch.device(name)
