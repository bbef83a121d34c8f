"""Decode an image file the one way every stage does: upright, 8-bit RGB.

- EXIF orientation is applied, so a phone photo is seen the way viewers show it
  (in the audit, in extraction and in prediction alike).
- Transparency is composited over white, not dropped: the hidden colour under
  transparent pixels is arbitrary.
- 16-bit images are scaled to 8 bits, not clipped (PIL's plain conversion turns
  most 16-bit pixels white).
- Grayscale, palette and CMYK images are converted to RGB.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

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


def load_rgb(source: Path | bytes) -> Image.Image:
    """Decode an image file, or its bytes already read, as upright 8-bit RGB (fully read, file closed)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        return to_rgb(image)
