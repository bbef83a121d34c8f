"""Decode an image file the one way every stage does: upright, 8-bit RGB.

- EXIF orientation is applied, so a phone photo is seen the way viewers show it
  (in the audit, in extraction and in prediction alike).
- Transparency is composited over white, not dropped: the hidden colour under
  transparent pixels is arbitrary.
- 16-bit images are scaled to 8 bits, not clipped (PIL's plain conversion turns
  most 16-bit pixels white).
- Grayscale, palette and CMYK images are converted to RGB.
- One size limit everywhere: PIL's decompression-bomb threshold
  (``Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels, e.g. 9459x9459). A larger file is a
  bad image, reported before it is decoded (prepare: error or skip, as
  ``data.on_bad_image`` says; predict: a row with the reason).
- One bound on the resized image too: resizing the shorter side to ``resize_size``
  may make the longer side huge (1x50000 pixels at 255 would be 255x12,750,000, about
  9.6 GB), so an image whose resized size exceeds ``RESIZED_PIXELS`` (4096x4096) is
  refused the same way, by prepare, extract and predict alike.
- Only regular files are read: a FIFO, socket or device named like an image would
  block the reader for ever, so it is a bad image like a dangling link.

A file that cannot be decoded raises ``ImageError`` with a reason that is the same
on every run (no memory addresses), so lists of skipped files are reproducible.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.common.errors import PipelineError

SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(image: Image.Image) -> Image.Image:
    """An upright 8-bit RGB copy of an opened PIL image."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImageError(PipelineError):
    """An image file cannot be decoded (damaged, not an image, too large).

    The message completes a sentence about the file: ``f"{path} {error}"``.
    """


def too_large(size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (width, height) is refused, or None."""
    return _too_many(size[0] * size[1], f" ({size[0]}x{size[1]})")


def _too_many(pixels: int, shape: str = "") -> str | None:
    if pixels > Image.MAX_IMAGE_PIXELS:
        return (f"is too large: {pixels:,} pixels{shape}, above the limit of {Image.MAX_IMAGE_PIXELS:,} "
                "(PIL's decompression-bomb guard); resize it")
    return None


RESIZED_PIXELS = 4096 * 4096  # bound on an image resized for the backbone: ~50 MB of 8-bit RGB


def resized_size(size: tuple[int, int], resize: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``resize(image, [resize])``: the shorter side becomes ``resize``."""
    w, h = size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(resize * long / short)
    return (resize, new_long) if w <= h else (new_long, resize)


def resized_too_large(size: tuple[int, int], resize: int) -> str | None:
    """Why an image of ``size`` is refused for a resize of its shorter side to ``resize``, or None."""
    w, h = resized_size(size, resize)
    if w * h > RESIZED_PIXELS:
        return (f"has an extreme aspect ratio ({size[0]}x{size[1]}): resized to {resize} pixels on its shorter "
                f"side it would be {w:,}x{h:,}, {w * h:,} pixels, above the limit of {RESIZED_PIXELS:,}; crop it")
    return None


def read_image_bytes(path: Path) -> bytes:
    """The bytes of an image file; anything but a regular file (a FIFO, a socket, a device) is refused before
    it is opened, since reading it could block for ever. ``ImageError`` for a file that cannot be read too."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageError(f"is not a regular file ({_kind(path)}); only image files are read")
        return Path(path).read_bytes()
    except OSError as err:  # deleted, a dangling link, no read permission
        raise ImageError(f"cannot be read ({type(err).__name__}: {err.strerror or err})") from err


def _kind(path: Path) -> str:
    mode = os.stat(path).st_mode
    for test, name in [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]:
        if test(mode):
            return name
    return "a special file"


def reason(err: BaseException) -> str:
    """A decoding error as one line that is the same on every run (PIL may print object addresses)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip() or "unknown error"
    return f"{type(err).__name__}: {text.splitlines()[0]}"


def load_rgb(source: Path | bytes) -> Image.Image:
    """Decode an image file, or its bytes already read, as upright 8-bit RGB (fully read, file closed)."""
    if not isinstance(source, bytes):
        source = read_image_bytes(source)  # never opens a FIFO or a device
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by one rule
            with Image.open(io.BytesIO(source)) as image:
                refused = too_large(image.size)
                if refused:
                    raise ImageError(refused)
                return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:  # PIL refuses above twice the limit before we see the size
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageError(_too_many(int(found[1])) if found else f"is too large ({reason(err)})") from err
    except Exception as err:  # PIL raises many types for damaged files
        raise ImageError(f"is not a readable image ({reason(err)})") from err
