"""Run the frozen backbone over image files, batch by batch.

Images are decoded by ``pipeline.images.load_rgb`` and preprocessed exactly by
the weights' own transform; the same loader serves extraction and prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline.backbone import Backbone
from pipeline.images import load_rgb
from pipeline.params import ViewsParams

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("extract.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return torch.device(name)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CUDA (fast, tensor cores) and fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return name


def view_transform(transform: torch.nn.Module, views: ViewsParams) -> torch.nn.Module:
    """A random augmented view with the weights' own crop size, interpolation and normalisation."""
    j = views.jitter
    return v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(transform.crop_size, scale=(views.crop_scale_min, 1.0),
                             interpolation=transform.interpolation, antialias=True),
        v2.RandomHorizontalFlip(views.hflip),
        v2.ColorJitter(brightness=j, contrast=j, saturation=j),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=transform.mean, std=transform.std),
    ])


class ImageFiles(Dataset):
    """Preprocessed tensors of a list of image files, in order.

    With ``seed``, each item's random transform is seeded by (seed, index), so
    random views are the same whatever the batch size or number of workers.
    """

    def __init__(self, paths: Sequence[Path], transform: torch.nn.Module, seed: Sequence[int] | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.seed is not None:
            torch.manual_seed(int(np.random.SeedSequence([*self.seed, i]).generate_state(1)[0]))
        return self.transform(load_rgb(self.paths[i]))


@torch.inference_mode()
def iter_embeddings(backbone: Backbone, paths: Sequence[Path], *, batch_size: int, num_workers: int,
                    device: torch.device, channels_last: bool = True, precision: str = "fp32",
                    transform: torch.nn.Module | None = None, seed: Sequence[int] | None = None,
                    desc: str = "embedding") -> Iterator[np.ndarray]:
    """Yield float32 embeddings (batch, dim) of ``paths``, in order, one batch at a time.

    ``precision`` other than fp32 runs the backbone under autocast; the pooled
    embedding is returned as float32 either way.
    """
    dtype = PRECISIONS[precision]
    model = backbone.model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    files = ImageFiles(paths, transform or backbone.transform, seed=seed)
    loader = DataLoader(files, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for batch in loader:
            batch = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                embedding = backbone.embed(batch)
            yield embedding.float().cpu().numpy()
            bar.update(len(batch))
