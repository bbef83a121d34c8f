"""Run the frozen backbone over image files, batch by batch.

Two decode paths feed the same weights' transform:

- ``cpu``: loader workers decode with ``pipeline.data.images.load_rgb`` (PIL) and
  preprocess; every format and every oddity (EXIF rotation, alpha, CMYK, 16-bit).
- ``device``: workers only read the bytes; plain baseline JPEGs (RGB or grayscale,
  no EXIF rotation) are decoded on the extraction device in one batched
  ``torchvision.io.decode_jpeg`` call (nvjpeg on CUDA) and resized there. Any other
  file takes the ``cpu`` path, so the decoding rules above hold for every file.
  On a GPU, CPU decoding is the bottleneck (measured on an H100: PIL in 15 workers
  fed about 6% of the model's bf16 throughput), which this removes.

The two paths differ only by IDCT and resampling rounding, at most one grey level
per pixel (tests/test_embedding.py); the path used is recorded in ``features/meta.json``.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2
from tqdm import tqdm

from pipeline.common.errors import PipelineError
from pipeline.common.params import ViewsParams
from pipeline.data.images import load_rgb
from pipeline.embed.backbone import Backbone

log = logging.getLogger(__name__)


class EmbeddingError(PipelineError):
    """The backbone produced embeddings that cannot be used."""


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


DECODES = ("auto", "cpu", "device")
EXIF_ORIENTATION = 0x0112
JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decode(name: str, device: torch.device) -> str:
    """``auto`` decodes JPEGs on the GPU when extracting on CUDA, with PIL on the CPU otherwise."""
    if name == "auto":
        return "device" if device.type == "cuda" else "cpu"
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


def device_decodable(data: bytes) -> bool:
    """A JPEG that ``decode_jpeg`` turns into the pixels ``load_rgb`` gives, up to IDCT rounding:
    colour or grayscale (not CMYK), and upright (no EXIF rotation to apply)."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.mode in ("RGB", "L") and image.getexif().get(EXIF_ORIENTATION, 1) == 1
    except (OSError, SyntaxError, ValueError):
        return False  # let the cpu path raise its own clear error


class EncodedImageFiles(ImageFiles):
    """Items ``(index, tensor)``: the file's raw bytes (1-D uint8) when the device can decode it,
    else its pixels preprocessed on the CPU path (3-D float)."""

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        data = self.paths[i].read_bytes()
        if device_decodable(data):
            return i, torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return i, self.transform(load_rgb(data))


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec, which is not a dependency
        # here; this one (nvjpeg on CUDA) ships with the pinned torchvision.
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def preprocess_on_device(items: list[tuple[int, torch.Tensor]], files: EncodedImageFiles,
                         device: torch.device) -> torch.Tensor:
    """Decode the encoded items of a batch on ``device`` in one call, apply the transform there,
    and stack them with the items already preprocessed, in order."""
    out: list[torch.Tensor | None] = [None] * len(items)
    encoded = [k for k, (_, item) in enumerate(items) if item.dim() == 1]
    if encoded:
        try:
            images = dict(zip(encoded, _decode_jpegs([items[k][1] for k in encoded], device), strict=True))
            by_shape: dict[torch.Size, list[int]] = defaultdict(list)
            for k, image in images.items():
                by_shape[image.shape].append(k)
            for same in by_shape.values():  # one transform call per image size, not one per image
                for k, pixels in zip(same, files.transform(torch.stack([images[k] for k in same])), strict=True):
                    out[k] = pixels  # the weights' transform takes (batches of) uint8 tensors too
        except RuntimeError as error:  # a JPEG variant the device decoder refuses: take the PIL path
            log.warning("device JPEG decode failed (%s); decoding this batch with PIL", error)
            for k in encoded:
                out[k] = files.transform(load_rgb(files.paths[items[k][0]])).to(device)
    for k, (_, item) in enumerate(items):
        if out[k] is None:
            out[k] = item.to(device, non_blocking=True)
    return torch.stack(out)


@torch.inference_mode()
def iter_embeddings(backbone: Backbone, paths: Sequence[Path], *, batch_size: int, num_workers: int,
                    device: torch.device, channels_last: bool = True, precision: str = "fp32",
                    transform: torch.nn.Module | None = None, seed: Sequence[int] | None = None,
                    decode: str = "cpu", desc: str = "embedding") -> Iterator[np.ndarray]:
    """Yield float32 embeddings (batch, dim) of ``paths``, in order, one batch at a time.

    ``precision`` other than fp32 runs the backbone under autocast; the pooled
    embedding is returned as float32 either way. ``decode="device"`` applies to the
    weights' own transform only: random views are always drawn on the CPU path.
    """
    dtype = PRECISIONS[precision]
    model = backbone.model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    on_device = decode == "device" and transform is None
    files = (EncodedImageFiles(paths, backbone.transform) if on_device
             else ImageFiles(paths, transform or backbone.transform, seed=seed))
    loader = DataLoader(files, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=list if on_device else None,  # encoded items differ in length
                        pin_memory=device.type == "cuda" and not on_device, persistent_workers=False)
    offset = 0
    with tqdm(total=len(paths), desc=desc, unit="img") as bar:
        for batch in loader:
            if on_device:
                batch = preprocess_on_device(batch, files, device)
            batch = batch.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                embedding = backbone.embed(batch)
            embedding = embedding.float().cpu().numpy()
            bad = np.flatnonzero(~np.isfinite(embedding).all(axis=1))
            if bad.size:  # fp16 overflows where fp32 and bf16 do not
                raise EmbeddingError(f"The {precision} embedding of {paths[offset + bad[0]]} is not finite; "
                                     "set extract.precision: fp32 or bf16.")
            yield embedding
            offset += len(batch)
            bar.update(len(batch))
