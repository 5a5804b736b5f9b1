"""An image file kept encoded: its bytes and the size its header states, to be decoded on the device."""

from __future__ import annotations

import io
import os
from typing import NamedTuple

import torch
from PIL import Image
from torch import Tensor

from .image_file import open_rgb

__all__ = ["EncodedImage", "read_encoded", "read_for_device"]

# JPEG markers: every file starts with SOI and a complete one ends with EOI. Inside the
# entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so an EOI
# near the end of the file is the end of the image, not a chance byte pair.
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# Some writers append padding or metadata after EOI; this much is still accepted.
_TAIL = 4096
# Colour models the device decoders turn into RGB exactly as PIL's RGB conversion does.
_DECODABLE_MODES = ("RGB", "L")


class EncodedImage(NamedTuple):
    """A JPEG file's bytes with its size, read without decoding.

    Attributes:
        data: uint8 ``[L]``, the whole file.
        width: image width in pixels, from the header.
        height: image height in pixels, from the header.
        path: the file it was read from.
    """

    data: Tensor
    width: int
    height: int
    path: str


def read_encoded(path: str | os.PathLike) -> EncodedImage | None:
    """The file's bytes if it is a complete 8-bit RGB or grayscale JPEG, else ``None``.

    Only the header is parsed (PIL reads the markers up to the first scan); the pixels are not
    decoded. ``None`` means the file must be decoded in the worker instead: another format, a
    CMYK or 12-bit JPEG, a header PIL cannot parse, a file cut short (no end-of-image marker),
    which is how a truncated download usually looks, or one with more than 4 KiB after its
    end-of-image marker (appended data; the worker path reads it all the same). A file cut short
    and then given an end-of-image marker passes, and decodes with its missing rows gray, as
    libjpeg-turbo decodes it for PIL with ``ImageFile.LOAD_TRUNCATED_IMAGES``.

    Args:
        path: an image file.

    Returns:
        An :class:`EncodedImage`, or ``None`` (see above).

    Raises:
        OSError: the file cannot be read at all (missing, unreadable); the message names ``path``.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise OSError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    end = data.rfind(_EOI)
    if not data.startswith(_SOI) or end < 0 or end < len(data) - _TAIL:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            if img.mode not in _DECODABLE_MODES or getattr(img, "bits", 8) != 8:
                return None
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8), width, height, path)


def read_for_device(path: str | os.PathLike) -> EncodedImage | Image.Image:
    """What a data worker hands on when the device decodes: the JPEG undecoded, any other file decoded.

    Returns:
        :func:`read_encoded`'s :class:`EncodedImage`, or the RGB image of :func:`~scrl.data.image_file.open_rgb`.

    Raises:
        OSError: the file cannot be read or decoded; the message names ``path``.
    """
    return read_encoded(path) or open_rgb(path)
