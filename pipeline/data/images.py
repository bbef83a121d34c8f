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

A file that cannot be decoded raises ``ImageError`` with a reason that is the same
on every run (no memory addresses), so lists of skipped files are reproducible.
"""

from __future__ import annotations

import io
import re
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


def reason(err: BaseException) -> str:
    """A decoding error as one line that is the same on every run (PIL may print object addresses)."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(err)).strip() or "unknown error"
    return f"{type(err).__name__}: {text.splitlines()[0]}"


def load_rgb(source: Path | bytes) -> Image.Image:
    """Decode an image file, or its bytes already read, as upright 8-bit RGB (fully read, file closed)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, by one rule
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
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
