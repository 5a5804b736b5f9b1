"""Decoding one image file into the 8-bit RGB image every dataset here hands out."""

from __future__ import annotations

import os

from PIL import Image

from .rgb import to_rgb

__all__ = ["open_rgb"]


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the image at ``path`` completely, as 8-bit RGB (any mode, 16-bit included).

    Args:
        path: an image file PIL can read.

    Returns:
        The decoded RGB image; the file is closed.

    Raises:
        OSError: the file is missing, unreadable, truncated, corrupt or empty; the message
            names ``path``. (PIL reports broken data as ``OSError``, ``SyntaxError`` or
            ``ValueError`` depending on the format; all of them surface as ``OSError`` here.)
    """
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that truncation surfaces here and not in a worker later
            return to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OSError(f"cannot read image {os.fspath(path)}: {type(exc).__name__}: {exc}") from exc
