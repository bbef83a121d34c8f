"""Turn work items into what the device needs: 8-bit pixels, or a JPEG's bytes to decode there.

Preprocessing is split where the image becomes 8-bit RGB at the crop size: the
geometric part (decode, resize, crop; random crop, flip and colour jitter for a
view) runs in the loader workers, the float conversion and normalisation run on
the extraction device over the whole batch. The same torchvision functions run in
the same order as ``weights.transforms()`` and the views' ``v2`` pipeline, so the
pixels are exactly theirs, and a quarter of the bytes cross to the device.

Two decode paths:

- ``cpu``: workers decode with ``pipeline.data.images.load_rgb`` (PIL): every
  format and every oddity (EXIF rotation, alpha, CMYK, 16-bit).
- ``device``: workers only read the bytes of plain JPEGs (RGB or grayscale, no EXIF
  rotation), which are decoded on the extraction device in one batched
  ``torchvision.io.decode_jpeg`` call (nvjpeg on CUDA) and resized there. Any other
  file, and every random view, takes the ``cpu`` path, so the rules above hold for
  every file. The two paths differ by IDCT and resampling rounding, at most one
  grey level per pixel (tests/test_embedding.py).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import warnings
from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as F
from torchvision.transforms import v2

from pipeline.common.params import ViewsParams
from pipeline.data.images import ImageError, load_rgb, read_image_bytes, resized_too_large, too_large
from pipeline.embed.sources.base import Preset
from pipeline.embed.work import PLAIN, Work

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclasses.dataclass(frozen=True)
class Preprocess(Preset):
    """A backbone's preset (and the views'), split into the 8-bit part and the normalisation."""

    views: ViewsParams | None = None

    def geometry(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """Resize and centre crop as the weights' transform does: 8-bit (3, crop, crop), or a batch of them.
        An image whose resized size would be unbounded (an extreme aspect ratio) is refused, as prepare does."""
        size = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])
        refused = resized_too_large(size, self.resize_size[0])
        if refused:
            raise ImageError(refused)
        image = F.resize(image, self.resize_size, interpolation=self.interpolation, antialias=self.antialias)
        image = F.center_crop(image, self.crop_size)
        return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The rest of the weights' transform on 8-bit pixels (any batch shape, any device): the arithmetic of
        torchvision's ``convert_image_dtype`` and ``normalize``, without their device-to-host check of std."""
        mean, std = _moments(tuple(self.mean), tuple(self.std), pixels.device)
        return (pixels.to(torch.float32) / 255.0).sub_(mean).div_(std)

    def view_geometry(self) -> v2.Compose:
        """A random augmented view at the weights' crop size and interpolation, still 8-bit."""
        assert self.views is not None
        j = self.views.jitter
        return v2.Compose([
            v2.PILToTensor(),
            v2.RandomResizedCrop(self.crop_size, scale=(self.views.crop_scale_min, 1.0),
                                 interpolation=self.interpolation, antialias=True),
            v2.RandomHorizontalFlip(self.views.hflip),
            v2.ColorJitter(brightness=j, contrast=j, saturation=j),
        ])

    def view_normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The end of the views' ``v2`` pipeline (``ToDtype(scale=True)``, ``Normalize``): its arithmetic."""
        mean, std = _moments(tuple(self.mean), tuple(self.std), pixels.device)
        return pixels.to(torch.float32).mul_(1.0 / 255.0).sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _moments(mean: tuple[float, ...], std: tuple[float, ...],
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (3, 1, 1) tensors on ``device``, made once (each new one is a host-to-device copy)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1))


def device_decodable(data: bytes, resize: int) -> bool:
    """A JPEG that ``decode_jpeg`` turns into the pixels ``load_rgb`` gives, up to IDCT rounding:
    colour or grayscale (not CMYK), and upright (no EXIF rotation to apply)."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                return (image.mode in ("RGB", "L") and image.getexif().get(EXIF_ORIENTATION, 1) == 1
                        and too_large(image.size) is None  # the cpu path refuses an oversized one
                        and resized_too_large(image.size, resize) is None)
    except Exception:
        return False  # let the cpu path raise its own clear error


@dataclasses.dataclass
class Chunk:
    """A few items decoded by one loader worker, in item order."""

    items: np.ndarray  # (m,) item indices
    views: np.ndarray  # (m,) view number of each (PLAIN or k)
    pixels: torch.Tensor | None  # (p, 3, crop, crop) uint8: the items decoded here, in order
    pixel_at: np.ndarray  # (p,) their positions within the chunk
    encoded: list[bytes]  # JPEG files to decode on the device (plain bytes: no shared-memory handle each)
    encoded_at: np.ndarray  # their positions within the chunk
    failed: list[tuple[int, str]]  # (position, why) of the items that could not be read or decoded


class WorkImages(Dataset):
    """Items of a ``Work`` list: 8-bit pixels, or the bytes of a JPEG the device will decode.

    A view's randomness is seeded by (views seed, view number, row), so the same
    image gets the same view whatever the batch size, worker count or shard.
    """

    def __init__(self, work: Work, items: np.ndarray, preprocess: Preprocess, *, decode_on_device: bool) -> None:
        self.work = work
        self.items = np.asarray(items)
        self.preprocess = preprocess
        self.decode_on_device = decode_on_device
        self.view_geometry = preprocess.view_geometry() if work.n_views else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[int, int, torch.Tensor | bytes | str]:
        """(item, view, pixels or a JPEG's bytes); a file that cannot be read gives the reason instead."""
        item = int(self.items[j])
        try:
            return self._load(item)
        except ImageError as err:  # deleted or unreadable since the manifest was made, or no longer an image
            return item, int(self.work.views[item]), str(err)

    def _load(self, item: int) -> tuple[int, int, torch.Tensor | bytes]:
        path, view = self.work.paths[item], int(self.work.views[item])
        if view != PLAIN:
            seed = np.random.SeedSequence([self.preprocess.views.seed, view, int(self.work.rows[item])])
            torch.manual_seed(int(seed.generate_state(1)[0]))
            return item, view, self.view_geometry(load_rgb(path))
        if self.decode_on_device:
            data = read_image_bytes(path)
            if device_decodable(data, self.preprocess.resize_size[0]):
                return item, view, data
            return item, view, self.preprocess.geometry(load_rgb(data))
        return item, view, self.preprocess.geometry(load_rgb(path))


def collate(samples: list[tuple[int, int, torch.Tensor | bytes | str]]) -> Chunk:
    failed = [(k, t) for k, (_, _, t) in enumerate(samples) if isinstance(t, str)]
    pixel_at = [k for k, (_, _, t) in enumerate(samples) if isinstance(t, torch.Tensor)]
    encoded_at = [k for k, (_, _, t) in enumerate(samples) if isinstance(t, bytes)]
    return Chunk(items=np.array([s[0] for s in samples]), views=np.array([s[1] for s in samples]),
                 pixels=torch.stack([samples[k][2] for k in pixel_at]) if pixel_at else None,
                 pixel_at=np.array(pixel_at, dtype=int), encoded=[samples[k][2] for k in encoded_at],
                 encoded_at=np.array(encoded_at, dtype=int), failed=failed)


def decode_on_device(encoded: list[bytes], preprocess: Preprocess,
                     device: torch.device) -> tuple[torch.Tensor, dict[int, str]]:
    """Decode JPEG bytes on ``device`` in one call and resize and crop them there: (n, 3, crop, crop) uint8.

    Images of one size are resized in one call. A batch the decoder refuses is
    decoded with PIL instead, one file at a time, with a warning; a file PIL cannot
    decode either is returned among the failures (its position -> why), its pixels zero.
    """
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in encoded]
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec, which is not a dependency
            # here; this one (nvjpeg on CUDA) ships with the pinned torchvision.
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as error:  # a JPEG variant the device decoder refuses: take the PIL path
        log.warning("device JPEG decode failed (%s); decoding these %d images with PIL", error, len(encoded))
        out = torch.zeros((len(encoded), 3, *preprocess.size), dtype=torch.uint8)
        failed = {}
        for k, data in enumerate(encoded):
            try:
                out[k] = preprocess.geometry(load_rgb(data))
            except ImageError as err:  # a damaged body behind a valid header
                failed[k] = str(err)
        return out.to(device), failed
    by_shape: dict[torch.Size, list[int]] = defaultdict(list)
    for k, image in enumerate(images):
        by_shape[image.shape].append(k)
    if len(by_shape) == 1:  # the usual case: a dataset of one image size
        return preprocess.geometry(torch.stack(images)), {}
    out = torch.empty((len(images), 3, *preprocess.size), dtype=torch.uint8, device=device)
    for same in by_shape.values():
        out[torch.tensor(same, device=device)] = preprocess.geometry(torch.stack([images[k] for k in same]))
    return out, {}


