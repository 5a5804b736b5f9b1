"""A view pipeline (tracked geometry, photometric noise, tensor output) and the two-view transform."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from ..geometry import ViewGeometry
from .geometric import RandomHorizontalFlip, RandomResizedCrop, check_crop_args
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .photometric import byol_photometric, global_rng_from
from .rgb import to_rgb

__all__ = ["TwoViewTransform", "ViewTransform", "byol_view"]

View = Callable[..., tuple[Tensor, ViewGeometry]]
Photometric = bool | Literal["device"]


class ViewTransform(nn.Module):
    """One augmented view: geometric steps (tracked), photometric steps, then a tensor.

    Args:
        geometric: steps called as ``step(img, geom, generator=...) -> (img, geom)``, e.g.
            :class:`RandomResizedCrop` then :class:`RandomHorizontalFlip`.
        photometric: PIL-to-PIL callable drawing from torch's global RNG (e.g.
            :func:`byol_photometric`), or ``None``.
        normalize: normalise with ``mean``/``std`` (float output); otherwise float in [0, 1].
        uint8: return uint8 ``[3, H, W]`` instead (``normalize`` is then not applied; use
            :func:`normalize_uint8` on the device).
        mean: per-channel mean for ``normalize``.
        std: per-channel standard deviation for ``normalize``.

    Example:
        >>> view = ViewTransform([RandomResizedCrop(96), RandomHorizontalFlip()], normalize=False)
        >>> x, geom = view(img, generator=torch.Generator().manual_seed(0))
        >>> x.shape, x.dtype
        (torch.Size([3, 96, 96]), torch.float32)
    """

    def __init__(
        self,
        geometric: Sequence[nn.Module],
        photometric: Callable[[Image.Image], Image.Image] | None = None,
        normalize: bool = True,
        uint8: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.geometric = nn.ModuleList(geometric)
        self.photometric = photometric
        self.normalize = bool(normalize)
        self.uint8 = bool(uint8)
        self.mean = tuple(map(float, mean))
        self.std = tuple(map(float, std))

    def forward(self, img: Image.Image, generator: torch.Generator | None = None) -> tuple[Tensor, ViewGeometry]:
        """Make the view.

        Args:
            img: PIL image, any mode (converted to RGB), non-empty.
            generator: optional CPU ``torch.Generator`` driving every random choice of this
                view; the global RNG when ``None`` (as seeded per DataLoader worker).

        Returns:
            The view, float ``[3, H, W]`` (normalised, or in [0, 1]) or uint8 ``[3, H, W]``, and
            its :class:`ViewGeometry` relative to ``img``.
        """
        img = to_rgb(img)
        geom = None
        for step in self.geometric:
            img, geom = step(img, geom, generator=generator)
        if geom is None:
            geom = ViewGeometry.full(img.width, img.height)
        if self.photometric is not None:
            with global_rng_from(generator):
                img = self.photometric(img)
        if self.uint8:
            return F.pil_to_tensor(img), geom
        pixels = F.to_tensor(img)
        return (F.normalize(pixels, self.mean, self.std) if self.normalize else pixels), geom

    def extra_repr(self) -> str:
        output = "uint8" if self.uint8 else f"normalize={self.normalize}"
        if isinstance(self.photometric, nn.Module):  # printed as a child module already
            return output
        return f"{output}, photometric={self.photometric!r}"


def byol_view(
    view: int,
    size: int | Sequence[int] = 224,
    scale: Sequence[float] = (0.2, 1.0),
    photometric: Photometric = True,
    normalize: bool = True,
    uint8: bool = False,
    *,
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> ViewTransform:
    """The SCRL/BYOL augmentation T1 (``view=1``) or T2 (``view=2``), tracking geometry.

    Random resized crop (``scale``, ``ratio``, bicubic) and horizontal flip (p = 0.5), then
    the photometric steps of :func:`byol_photometric`, then to-tensor and ImageNet
    normalisation.

    With ``photometric="device"`` the view stops after the geometric steps and is returned as
    uint8 ``[3, H, W]``: the photometric steps and the normalisation are left to
    ``BatchPhotometric(view=view)`` (:class:`BatchPhotometric`), which runs them on a whole batch
    on the accelerator. A data worker then only decodes, crops, resizes and flips.

    Args:
        view: 1 or 2 (they differ in blur and solarize probabilities).
        size: view ``(height, width)``, or an int for a square view, >= 1.
        scale: crop area fraction ``(min, max)``, 0 < min <= max <= 1 (SCRL: 0.2 to 1).
        photometric: ``True`` adds the photometric steps here; ``False`` gives the pure
            geometric warp; ``"device"`` gives the geometric warp as uint8 for
            :class:`BatchPhotometric` (``normalize`` and ``uint8`` are then not used).
        normalize: ImageNet-normalise; ``False`` keeps values in [0, 1].
        uint8: return uint8 ``[3, H, W]`` without normalisation (see :func:`normalize_uint8`).
        ratio: crop aspect ratio (width / height) range.
        interpolation: resampling filter (bicubic in the paper).

    Returns:
        A :class:`ViewTransform`: ``view_fn(img, generator=None) -> (Tensor [3, H, W], ViewGeometry)``.

    Example:
        >>> x, geom = byol_view(1, size=96)(img)
        >>> x.shape, geom.crop.shape
        (torch.Size([3, 96, 96]), torch.Size([4]))
        >>> raw, geom = byol_view(1, size=96, photometric="device")(img)  # uint8, crop + flip only
        >>> BatchPhotometric(view=1)(raw[None]).shape  # photometric steps + normalisation, any device
        torch.Size([1, 3, 96, 96])
    """
    if isinstance(view, bool) or view not in (1, 2):
        raise ValueError(f"view must be 1 or 2, got {view!r}")
    if not (isinstance(photometric, bool) or photometric == "device"):
        raise ValueError(f"photometric must be True, False or 'device', got {photometric!r}")
    hw = check_crop_args(size, scale, ratio, interpolation)
    return ViewTransform(
        [RandomResizedCrop(hw, scale, ratio, interpolation), RandomHorizontalFlip(0.5)],
        byol_photometric(view, hw) if photometric is True else None,
        normalize=normalize,
        uint8=uint8 or photometric == "device",
    )


class TwoViewTransform(nn.Module):
    """Two augmented views of one image with their geometries: the input of SCRL and BYOL.

    Args:
        view1: callable ``(img) -> (Tensor, ViewGeometry)`` making view 1 (e.g. ``byol_view(1)``);
            called with ``generator=`` when one is given.
        view2: the same for view 2.

    Example:
        >>> transform = TwoViewTransform.byol(size=224)
        >>> v1, v2, g1, g2 = transform(Image.new("RGB", (640, 480)), generator=torch.Generator().manual_seed(0))
        >>> v1.shape, g1.crop  # crop in source pixels
        (torch.Size([3, 224, 224]), tensor([ 46.,  63., 509., 459.], dtype=torch.float64))
    """

    def __init__(self, view1: View, view2: View) -> None:
        super().__init__()
        for name, fn in (("view1", view1), ("view2", view2)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable (img) -> (Tensor, ViewGeometry), got {type(fn).__name__}")
        self.view1 = view1
        self.view2 = view2

    @classmethod
    def byol(
        cls,
        size: int | Sequence[int] = 224,
        scale: Sequence[float] = (0.2, 1.0),
        uint8: bool = False,
        photometric: Photometric = True,
    ) -> "TwoViewTransform":
        """The paper's pair ``(T1, T2)``: :func:`byol_view` 1 and 2 with these settings.

        ``photometric="device"`` makes geometry-only uint8 views; finish them on the device with
        ``BatchPhotometric(view=1)`` and ``BatchPhotometric(view=2)``.
        """
        return cls(
            byol_view(1, size, scale, photometric, uint8=uint8), byol_view(2, size, scale, photometric, uint8=uint8)
        )

    def forward(
        self, img: Image.Image, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, ViewGeometry, ViewGeometry]:
        """Make both views.

        Args:
            img: PIL image, any mode (converted to RGB once), non-empty.
            generator: optional CPU ``torch.Generator`` for both views; the global RNG when
                ``None``. Do not store one generator in a transform shared by DataLoader
                workers: each worker would get a copy in the same state.

        Returns:
            ``(view1, view2, geom1, geom2)``; each geometry maps boxes between its view and ``img``.
        """
        img = to_rgb(img)
        if generator is None:
            (x1, g1), (x2, g2) = self.view1(img), self.view2(img)
        else:
            (x1, g1), (x2, g2) = self.view1(img, generator=generator), self.view2(img, generator=generator)
        return x1, x2, g1, g2
