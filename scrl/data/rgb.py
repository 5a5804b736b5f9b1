"""Turning any PIL image into the 8-bit RGB image the augmentation pipeline works on."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb"]

# Modes that store 16-bit samples. PIL's own conversion clips them to 0..255, which turns
# most 16-bit images white, so they are rescaled (top 8 bits kept) instead.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def _high_byte(samples: np.ndarray) -> Image.Image:
    return Image.fromarray((samples.astype(np.uint16) >> 8).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    16-bit modes (``I;16`` and its byte orders) are rescaled to 8 bits by keeping the high
    byte, and so is a 32-bit ``I`` image whose maximum exceeds 255 (values clipped to
    0..65535 first); an ``I`` image within 0..255 keeps its values. Palette images with
    transparency go through RGBA; alpha is dropped; every other mode (``1``, ``L``, ``LA``,
    ``P``, ``RGBA``, ``CMYK``, ``YCbCr``, ``F`` ...) uses PIL's conversion. An RGB image is
    returned unchanged (no copy).

    Args:
        img: a PIL image, any mode.

    Returns:
        The image in mode ``RGB``, same width and height.

    Raises:
        TypeError: ``img`` is not a PIL image.
        ValueError: the image is empty (width or height 0).

    Example:
        >>> to_rgb(Image.new("I;16", (4, 3), 65535)).getpixel((0, 0))
        (255, 255, 255)
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL.Image.Image, got {type(img).__name__}")
    if img.width < 1 or img.height < 1:
        raise ValueError(
            f"img must be non-empty (width and height >= 1), got size {img.width}x{img.height} (width x height)"
        )
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return _high_byte(np.asarray(img)).convert("RGB")
    if img.mode == "I":
        # Some Pillow versions (9.x) open 16-bit grayscale PNGs as mode I rather than I;16;
        # rescaling them the same way gives the same pixels whichever mode Pillow picked.
        samples = np.asarray(img)
        if samples.max() > 255:
            return _high_byte(np.clip(samples, 0, 0xFFFF)).convert("RGB")
    if img.mode in ("P", "PA") and "transparency" in img.info:
        # PIL warns when a palette with transparency is converted straight to RGB.
        img = img.convert("RGBA")
    return img.convert("RGB")
