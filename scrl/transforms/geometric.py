"""Geometry-aware random resized crop and horizontal flip for PIL images.

Each step takes and returns ``(image, ViewGeometry)``, so the view's exact place in the
source image is known after any chain of steps. The crop and the resize are one resampling
step from the source image with a float box (``PIL.Image.resize(..., box=...)``), so nothing
is rounded between them, and the recorded crop is exactly the region the view shows. Like
torchvision's, the steps draw from torch's global RNG (see :mod:`scrl.transforms`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_modes_mapping

from ..geometry import ViewGeometry

__all__ = [
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "check_crop_args",
    "view_size",
    "random_resized_crop_params",
    "resized_crop",
]

Box = tuple[float, float, float, float]


def view_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``; an int means a square."""
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"size must be an int or a (height, width) pair of ints, each >= 1, got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"size must be >= 1 pixel (an int or a (height, width) pair), got {size!r}")
    return pair


def check_crop_args(
    size: int | Sequence[int],
    scale: Sequence[float],
    ratio: Sequence[float],
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> tuple[int, int]:
    """Validate random-resized-crop arguments; return ``size`` as ``(height, width)``.

    Raises:
        ValueError: naming the first bad argument and its allowed range.
    """
    hw = view_size(size)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1 (area fractions), got {scale!r}")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1] < math.inf:
        raise ValueError(f"ratio must be (min, max) with 0 < min <= max < inf (width / height), got {ratio!r}")
    if interpolation not in pil_modes_mapping:
        raise ValueError(
            f"interpolation must be one of {[m.name for m in pil_modes_mapping]} (a torchvision InterpolationMode), "
            f"got {interpolation!r}"
        )
    return hw


def random_resized_crop_params(
    width: int,
    height: int,
    scale: Sequence[float] = (0.2, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
) -> Box:
    """Draw a crop box exactly as ``torchvision.transforms.RandomResizedCrop.get_params`` does.

    Area fraction ~ U(scale), aspect ratio log-uniform in ``ratio``, integer width and height,
    up to 10 tries, then a centre crop clamped to ``ratio``. The draws are the same calls on
    torch's global RNG in the same order as torchvision's, so the same seed gives the same box.

    Args:
        width: source width in pixels, >= 1.
        height: source height in pixels, >= 1.
        scale: ``(min, max)`` fraction of the source area; SCRL's (0.2, 1.0) by default
            (BYOL and torchvision use (0.08, 1.0)).
        ratio: ``(min, max)`` width / height of the crop.

    Returns:
        ``(x0, y0, x1, y1)`` in source pixels (pixel-edge convention), whole numbers as floats.

    Example:
        >>> torch.manual_seed(0)
        >>> random_resized_crop_params(640, 480, (0.2, 1.0))
        (46.0, 63.0, 509.0, 459.0)
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return float(j), float(i), float(j + w), float(i + h)

    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    i, j = (height - h) // 2, (width - w) // 2
    return float(j), float(i), float(j + w), float(i + h)


def resized_crop(
    img: Image.Image,
    box: Sequence[float],
    size: int | Sequence[int],
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> Image.Image:
    """Resample the region ``box`` of ``img`` to ``size`` in one step.

    Unlike crop-then-resize, the box may have fractional edges, and the filter near the box
    edges reads the source pixels just outside it, as if the view were a window onto the
    continuous image. View pixel centre ``u + 0.5`` samples source ``x0 + (u + 0.5) * (x1 - x0) / W``.

    Args:
        img: PIL image.
        box: ``(x0, y0, x1, y1)`` in source pixels, floats allowed.
        size: output ``(height, width)`` or an int for a square.
        interpolation: torchvision ``InterpolationMode``.

    Returns:
        PIL image of the given size, same mode as ``img``.

    Example:
        >>> resized_crop(img, (10.5, 20.0, 110.5, 95.0), 64).size
        (64, 64)
    """
    height, width = view_size(size)
    return img.resize((width, height), resample=pil_modes_mapping[interpolation], box=tuple(float(b) for b in box))


class RandomResizedCrop(nn.Module):
    """torchvision's RandomResizedCrop for PIL images, recording the crop in a :class:`ViewGeometry`.

    Args:
        size: output ``(height, width)``, or an int for a square view.
        scale: ``(min, max)`` fraction of the input area, within (0, 1]; SCRL's (0.2, 1.0) by
            default (BYOL and torchvision use (0.08, 1.0)).
        ratio: ``(min, max)`` aspect ratio (width / height) before resizing.
        interpolation: resampling filter; bicubic by default (the SCRL/BYOL setting).

    Example:
        >>> crop = RandomResizedCrop(224, scale=(0.2, 1.0))
        >>> torch.manual_seed(0)
        >>> view, geom = crop(img)
        >>> geom.crop, geom.size  # for a 640 x 480 image
        (tensor([ 46.,  63., 509., 459.], dtype=torch.float64), tensor([224., 224.], dtype=torch.float64))
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ) -> None:
        super().__init__()
        self.size = check_crop_args(size, scale, ratio, interpolation)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = interpolation

    def forward(self, img: Image.Image, geom: ViewGeometry | None = None) -> tuple[Image.Image, ViewGeometry]:
        """Crop and resize ``img``.

        Args:
            img: PIL image.
            geom: where ``img`` came from; ``None`` when ``img`` is the source image itself.

        Returns:
            The view (PIL, ``size``) and its geometry relative to the source image.
        """
        if not isinstance(img, Image.Image):
            raise TypeError(f"img must be a PIL.Image.Image, got {type(img).__name__}")
        box, geom = self._draw(img.width, img.height, geom)
        return resized_crop(img, box, self.size, self.interpolation), geom

    def geometry(self, width: int, height: int, geom: ViewGeometry | None = None) -> ViewGeometry:
        """Draw a crop of a ``width`` x ``height`` image as :meth:`forward` does, without touching pixels.

        The same random draws in the same order as :meth:`forward`, so the same seed gives the
        same geometry; the pixels can then be resampled elsewhere (on the device).
        """
        return self._draw(width, height, geom)[1]

    def _draw(self, width: int, height: int, geom: ViewGeometry | None) -> tuple[Box, ViewGeometry]:
        box = random_resized_crop_params(width, height, self.scale, self.ratio)
        out_height, out_width = self.size
        if geom is None:
            # Same result as ViewGeometry.full(...).crop_to(box).resize(...), built in one go
            # because this runs once per view in the data workers.
            return box, ViewGeometry(
                torch.tensor(box, dtype=torch.float64),
                torch.tensor(False),
                torch.tensor((float(out_height), float(out_width)), dtype=torch.float64),
            )
        return box, geom.crop_to(box).resize(out_height, out_width)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, ratio={self.ratio}, interpolation={self.interpolation.value}"


class RandomHorizontalFlip(nn.Module):
    """Mirror a PIL image left-right with probability ``p``, recording it in the geometry.

    Draws ``torch.rand(1) < p`` like torchvision's RandomHorizontalFlip.

    Args:
        p: flip probability in [0, 1].

    Example:
        >>> view, geom = RandomHorizontalFlip(1.0)(img)
        >>> bool(geom.flipped)
        True
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def forward(self, img: Image.Image, geom: ViewGeometry | None = None) -> tuple[Image.Image, ViewGeometry]:
        """Flip ``img`` with probability ``p``.

        Args:
            img: PIL image.
            geom: where ``img`` came from; ``None`` when ``img`` is the source image itself.

        Returns:
            The (possibly mirrored) image and its geometry.
        """
        flip, geom = self._draw(img.width, img.height, geom)
        return (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img), geom

    def geometry(self, width: int, height: int, geom: ViewGeometry | None = None) -> ViewGeometry:
        """Draw the flip of a ``width`` x ``height`` image as :meth:`forward` does, without touching pixels."""
        return self._draw(width, height, geom)[1]

    def _draw(self, width: int, height: int, geom: ViewGeometry | None) -> tuple[bool, ViewGeometry]:
        if geom is None:
            geom = ViewGeometry.full(width, height)
        flip = torch.rand(1).item() < self.p
        return flip, geom.hflip() if flip else geom

    def extra_repr(self) -> str:
        return f"p={self.p}"
