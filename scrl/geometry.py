"""Exact bookkeeping of where an augmented view came from in its source image.

A view is an axis-aligned crop of the source image, resized to the view's size and
optionally mirrored left-right. :class:`ViewGeometry` records exactly that, in float, so
that boxes move between source and view coordinates without any rounding.

Conventions:
    * Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates: a ``W``-pixel-wide image
      spans ``[0, W]``, and the centre of pixel column ``i`` is at ``i + 0.5``.
    * Source coordinates are pixels of the decoded original image.
    * A horizontal flip maps ``x -> W - x`` in view coordinates.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["ViewGeometry", "check_view_size"]


class _Fields(NamedTuple):
    crop: Tensor
    flipped: Tensor
    size: Tensor


class ViewGeometry(_Fields):
    """Where a view came from: its crop in the source image, its flip and its size.

    A single view holds ``crop`` of shape ``[4]``, ``flipped`` of shape ``[]`` and ``size``
    of shape ``[2]``. A batch of ``N`` views holds ``[N, 4]``, ``[N]`` and ``[N, 2]``. Being
    a ``NamedTuple`` of tensors, geometries batch with
    :func:`torch.utils.data.default_collate` and pass through ``torch.compile`` as pytrees.

    Attributes:
        crop: float ``[..., 4]``, the crop ``(x0, y0, x1, y1)`` in source pixels.
        flipped: bool ``[...]``, whether the view is mirrored left-right after resizing.
        size: float ``[..., 2]``, the view's ``(height, width)`` in view pixels.

    Raises:
        ValueError: a field has the wrong dtype or shape, or the batch shapes disagree (read from
            the tensors' metadata, always); a value of ``crop`` or ``size`` is not finite, a
            ``size`` is not positive, or a crop is empty or inverted (``x1 <= x0`` or
            ``y1 <= y0``). Values are read only while the fields are on the CPU and outside
            ``torch.compile``, where that costs no device synchronisation and breaks no graph:
            a geometry built on an accelerator is not read, and moving one (:meth:`to` without
            ``dtype``) or flipping it (:meth:`hflip`) does not read again the values it keeps.

    Example:
        >>> g = ViewGeometry.full(640, 480).crop_to([100.0, 50.0, 420.0, 290.0])
        >>> g = g.resize(224, 224).hflip()
        >>> g.source_to_view(torch.tensor([[100.0, 50.0, 420.0, 290.0]]))
        tensor([[  0.,   0., 224., 224.]])
    """

    __slots__ = ()

    def __new__(cls, crop: Tensor, flipped: Tensor, size: Tensor) -> "ViewGeometry":
        _check_fields(crop, flipped, size)
        _check_values(crop, size)
        return super().__new__(cls, crop, flipped, size)

    @classmethod
    def _rewrap(cls, crop: Tensor, flipped: Tensor, size: Tensor) -> "ViewGeometry":
        """Wrap fields taken over from checked geometries (moved, flipped, stacked, unpickled); metadata checks only.

        Their values were checked when those geometries were built; reading them again would add
        value reads to every training step, which moves and stacks geometries.
        """
        _check_fields(crop, flipped, size)
        return super().__new__(cls, crop, flipped, size)

    def __reduce__(self) -> tuple:
        # A geometry that crossed from a data worker was checked there; unpickling it in the
        # training loop must not read its values again.
        return ViewGeometry._rewrap, tuple(self)

    @classmethod
    def _make(cls, iterable: Sequence[Tensor]) -> "ViewGeometry":  # so that _replace checks its fields too
        return cls(*iterable)

    @classmethod
    def full(cls, width: float, height: float) -> "ViewGeometry":
        """The identity view of a ``width`` x ``height`` source image (no crop, no flip)."""
        if not (width > 0 and height > 0):
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        crop = torch.tensor([0.0, 0.0, float(width), float(height)], dtype=torch.float64)
        size = torch.tensor([float(height), float(width)], dtype=torch.float64)
        return cls(crop, torch.tensor(False), size)

    # ------------------------------------------------------------------ composition
    def crop_to(self, box: Sequence[float] | Tensor) -> "ViewGeometry":
        """Crop the view to ``box`` ``(x0, y0, x1, y1)`` given in this view's pixels.

        The cropped view keeps the box's size in pixels (no resize) and this view's flip.
        """
        box = torch.as_tensor(box, dtype=self.crop.dtype, device=self.crop.device)
        new_crop = self.view_to_source(box)
        size = torch.stack([box[..., 3] - box[..., 1], box[..., 2] - box[..., 0]], dim=-1)
        return ViewGeometry(new_crop, self.flipped, size)

    def resize(self, height: float, width: float) -> "ViewGeometry":
        """Resize the view to ``height`` x ``width`` pixels (crop and flip unchanged)."""
        size = torch.tensor([float(height), float(width)], dtype=self.size.dtype, device=self.size.device)
        return ViewGeometry(self.crop, self.flipped, size.expand_as(self.size).clone())

    def hflip(self) -> "ViewGeometry":
        """Mirror the view left-right."""
        return ViewGeometry._rewrap(self.crop, ~self.flipped, self.size)

    # ------------------------------------------------------------------ mapping
    @property
    def scale(self) -> Tensor:
        """View pixels per source pixel along ``(x, y)``; float ``[..., 2]``."""
        crop_wh = self.crop[..., 2:] - self.crop[..., :2]
        return self.size.flip(-1) / crop_wh

    def _broadcast(self, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-coordinate offset, scale, view width and flip, shaped to broadcast with ``boxes``."""
        batch_dims = self.flipped.dim()
        if boxes.dim() <= batch_dims or boxes.shape[:batch_dims] != self.flipped.shape or boxes.shape[-1] != 4:
            raise ValueError(
                f"boxes must have shape [*{list(self.flipped.shape)}, ..., 4] to match this geometry, "
                f"got {list(boxes.shape)}"
            )
        index = (...,) + (None,) * (boxes.dim() - 1 - batch_dims) + (slice(None),)
        offset = self.crop[..., :2].to(boxes.dtype)[index]
        offset = torch.cat([offset, offset], dim=-1)  # (x0, y0, x0, y0)
        scale = self.scale.to(boxes.dtype)[index]
        scale = torch.cat([scale, scale], dim=-1)  # (sx, sy, sx, sy)
        width = self.size[..., 1:2].to(boxes.dtype)[index]
        flipped = self.flipped[index[:-1] + (None,)]
        return offset, scale, width, flipped

    @staticmethod
    def _mirror(boxes: Tensor, width: Tensor) -> Tensor:
        """``x -> width - x`` on both x edges, keeping ``x0 <= x1``."""
        return torch.cat([width - boxes[..., 2:3], boxes[..., 1:2], width - boxes[..., 0:1], boxes[..., 3:4]], dim=-1)

    def source_to_view(self, boxes: Tensor) -> Tensor:
        """Map boxes from source pixels to this view's pixels.

        Args:
            boxes: float ``[*batch, K, 4]`` (or ``[*batch, 4]``) ``(x0, y0, x1, y1)`` in source
                pixels, where ``*batch`` is this geometry's batch shape (empty for one view).

        Returns:
            The same boxes in view pixels, same shape and dtype; ``x0 <= x1`` after a flip.
        """
        offset, scale, width, flipped = self._broadcast(boxes)
        view = (boxes - offset) * scale
        return torch.where(flipped, self._mirror(view, width), view)

    def view_to_source(self, boxes: Tensor) -> Tensor:
        """Map boxes from this view's pixels to source pixels (inverse of :meth:`source_to_view`).

        Args:
            boxes: float ``[*batch, K, 4]`` (or ``[*batch, 4]``) in view pixels.

        Returns:
            The same boxes in source pixels, same shape and dtype.
        """
        offset, scale, width, flipped = self._broadcast(boxes)
        unflipped = torch.where(flipped, self._mirror(boxes, width), boxes)
        return unflipped / scale + offset

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, *, non_blocking: bool = False
    ) -> "ViewGeometry":
        """Move to ``device`` and/or cast ``crop`` and ``size`` to ``dtype``.

        Args:
            device: target device; ``None`` keeps each tensor where it is.
            dtype: floating dtype for ``crop`` and ``size`` (``flipped`` stays bool); ``None``
                keeps theirs.
            non_blocking: copy asynchronously where possible (from pinned host memory to a GPU).

        Returns:
            The geometry with the same shapes (``[..., 4]``, ``[...]``, ``[..., 2]``).

        Raises:
            ValueError: ``dtype`` is not a floating dtype, or the cast turns a value invalid (as
                :class:`ViewGeometry` checks them: e.g. a crop overflowing float16), found while
                the result is on the CPU and the copy is blocking.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype (for crop and size), got {dtype}")
        # A move keeps the values; a cast can overflow or collapse a crop, so it is checked again,
        # unless the copy is asynchronous (its values may not have arrived yet).
        make = ViewGeometry if dtype is not None and not non_blocking else ViewGeometry._rewrap
        return make(
            self.crop.to(device=device, dtype=dtype, non_blocking=non_blocking),
            self.flipped.to(device=device, non_blocking=non_blocking),
            self.size.to(device=device, dtype=dtype, non_blocking=non_blocking),
        )


def _check_fields(crop: Tensor, flipped: Tensor, size: Tensor) -> None:
    """Refuse fields of the wrong type, dtype or shape, from their metadata alone."""
    for name, value in (("crop", crop), ("flipped", flipped), ("size", size)):
        if not isinstance(value, Tensor):
            raise ValueError(f"ViewGeometry.{name} must be a tensor, got {type(value).__name__}")
    if not crop.is_floating_point() or crop.dim() < 1 or crop.shape[-1] != 4:
        raise ValueError(f"ViewGeometry.crop must be a float [..., 4] tensor (x0, y0, x1, y1), got {crop.dtype} {list(crop.shape)}")
    if not size.is_floating_point() or size.shape != crop.shape[:-1] + (2,):
        raise ValueError(
            f"ViewGeometry.size must be a float [..., 2] tensor (height, width) with crop's batch shape "
            f"{list(crop.shape[:-1])}, got {size.dtype} {list(size.shape)}"
        )
    if flipped.dtype != torch.bool or flipped.shape != crop.shape[:-1]:
        raise ValueError(
            f"ViewGeometry.flipped must be a bool tensor of crop's batch shape {list(crop.shape[:-1])}, "
            f"got {flipped.dtype} {list(flipped.shape)}"
        )


def _reads_values(tensor: Tensor) -> bool:
    """Whether reading ``tensor``'s values is free: on the CPU and outside ``torch.compile``."""
    return tensor.device.type == "cpu" and not torch.compiler.is_compiling()  # a value read would break the graph


def _check_values(crop: Tensor, size: Tensor) -> None:
    """Refuse non-finite fields, non-positive sizes and empty or inverted crops, when reading them is free.

    Without this, a negative size gives valid-looking box pairs in mirrored pixels and a NaN one
    fails deep inside the sampler with a meaningless index error.
    """
    if not (_reads_values(crop) and _reads_values(size)):
        return
    span = crop[..., 2:] - crop[..., :2]  # (width, height); NaN or inf anywhere in crop leaves it NaN or inf
    # One combined test first (NaN fails it too): this runs for every view the data workers make.
    extents = torch.cat([span, size], dim=-1)
    if ((extents > 0) & (extents < math.inf)).all():
        return
    for name, value in (("crop", crop), ("size", size)):
        if not torch.isfinite(value).all():
            raise ValueError(f"ViewGeometry {name} must be finite, got {_first(value, ~torch.isfinite(value))}")
    if not (size > 0).all():
        raise ValueError(f"ViewGeometry size must be positive (height, width) in view pixels, got {_first(size, size <= 0)}")
    raise ValueError(
        "ViewGeometry crop must have x0 < x1 and y0 < y1 (a positive, finite width and height), got "
        f"{_first(crop, ~((span > 0) & (span < math.inf)))}"
    )


def _first(field: Tensor, bad: Tensor) -> list[float]:
    """The first row of ``field`` ``[..., F]`` where ``bad`` ``[..., F']`` holds anywhere, as a list."""
    rows = field.reshape(-1, field.shape[-1])
    return rows[bad.reshape(rows.shape[0], -1).any(-1)][0].tolist()


def check_view_size(views: Tensor, geom: ViewGeometry, name: str = "view") -> None:
    """Check that ``geom`` describes views of the size ``views`` have.

    Box pairs are drawn in the pixels the geometry records; views of another size would be
    pooled at the wrong places without any error. The batch shapes are always compared; the
    recorded sizes only when the geometry lives on the CPU, where reading them synchronises
    nothing (geometry already on an accelerator is not read, so a training step never waits),
    and not under ``torch.compile`` (a value read would break the graph).

    Args:
        views: ``[3, H, W]`` or ``[B, 3, H, W]`` images.
        geom: the geometry of one view (``size`` ``[2]``) or of a batch (``[B, 2]``).
        name: how the error names the views.

    Raises:
        ValueError: the batch shapes or the sizes differ.
    """
    batch = tuple(views.shape[:-3])
    if tuple(geom.size.shape[:-1]) != batch:
        raise ValueError(f"{name}: the geometry's batch shape {list(geom.size.shape[:-1])} differs from the views' {list(batch)}")
    if not _reads_values(geom.size):
        return
    height, width = views.shape[-2:]
    wrong = (geom.size[..., 0] != height) | (geom.size[..., 1] != width)
    if wrong.any():
        first = geom.size.reshape(-1, 2)[wrong.reshape(-1)][0].tolist()
        raise ValueError(
            f"{name} is {height} x {width} px but its geometry says {first[0]:g} x {first[1]:g} (height x width): boxes "
            "would be drawn in other pixels than the views have; make the views and geometries with the same transform"
        )
