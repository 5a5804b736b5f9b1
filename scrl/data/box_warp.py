"""Resize and mirror an image together with its ground-truth boxes, with torchvision's v2 kernels.

The boxes travel as ``torchvision.tv_tensors.BoundingBoxes`` (format XYXY, canvas the image),
so pixels and boxes are warped by the same torchvision call and cannot drift apart. In the
pixel-edge convention of the library: resizing a ``W x H`` image to ``w x h`` scales box
coordinates by ``(w / W, h / H)``; a mirror maps ``x`` to ``W - x`` and swaps ``x0``/``x1``.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

__all__ = ["hflip_with_boxes", "resize_with_boxes"]

ImageLike = TypeVar("ImageLike", Image.Image, Tensor)


def _bounding_boxes(boxes: Tensor, image: Image.Image | Tensor) -> tv_tensors.BoundingBoxes:
    if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        raise ValueError(f"boxes must be a floating tensor [M, 4] (x0, y0, x1, y1), got {boxes.dtype} {list(boxes.shape)}")
    height, width = F.get_size(image)
    return tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))


def resize_with_boxes(
    image: ImageLike,
    boxes: Tensor,
    size: tuple[int, int],
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> tuple[ImageLike, Tensor]:
    """Resize ``image`` to ``size`` and scale ``boxes`` exactly as its pixels.

    The aspect ratio is not kept: boxes follow the anisotropic scaling,
    ``boxes * (width / W, height / H, width / W, height / H)``.

    Args:
        image: PIL image, or a tensor ``[..., C, H, W]``.
        boxes: float ``[M, 4]`` ``(x0, y0, x1, y1)`` in ``image`` pixels.
        size: ``(height, width)`` of the output in pixels, each >= 1.
        interpolation: resampling filter of the pixels (PIL's own for PIL images).

    Returns:
        ``(resized image, boxes [M, 4] in its pixels)``, same types and dtypes as given.
    """
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
        raise ValueError(f"size must be (height, width), integers >= 1 (pixels), got {size!r}")
    boxed = _bounding_boxes(boxes, image)
    resized = F.resize(boxed, list(size))
    return F.resize(image, list(size), interpolation=interpolation), resized.as_subclass(torch.Tensor)


def hflip_with_boxes(image: ImageLike, boxes: Tensor) -> tuple[ImageLike, Tensor]:
    """Mirror ``image`` left-right and ``boxes`` with it: ``(W - x1, y0, W - x0, y1)``.

    Args:
        image: PIL image, or a tensor ``[..., C, H, W]``.
        boxes: float ``[M, 4]`` ``(x0, y0, x1, y1)`` in ``image`` pixels.

    Returns:
        ``(mirrored image, mirrored boxes [M, 4])``, same types and dtypes as given.
    """
    boxed = _bounding_boxes(boxes, image)
    return F.horizontal_flip(image), F.horizontal_flip(boxed).as_subclass(torch.Tensor)
