"""A view pipeline (tracked geometry, photometric noise, tensor output) and the two-view transform."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from ..geometry import ViewGeometry
from .geometric import RandomHorizontalFlip, RandomResizedCrop, check_crop_args
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from .photometric import byol_photometric
from ..data.rgb import to_rgb

__all__ = ["TwoViewTransform", "ViewTransform", "byol_view"]

View = Callable[[Image.Image], tuple[Tensor, ViewGeometry]]
Photometric = bool | Literal["device"]
Output = Literal["normalized", "float", "uint8"]
OUTPUTS: tuple[Output, ...] = ("normalized", "float", "uint8")


class ViewTransform(nn.Module):
    """One augmented view: geometric steps (tracked), photometric steps, then a tensor.

    Every random choice is drawn from torch's global RNG (see :mod:`scrl.transforms`).

    Args:
        geometric: steps called as ``step(img, geom) -> (img, geom)``, e.g.
            :class:`RandomResizedCrop` then :class:`RandomHorizontalFlip`.
        photometric: PIL-to-PIL callable (e.g. :func:`byol_photometric`), or ``None``.
        output: ``"normalized"``: float32 ``[3, H, W]``, :func:`normalize_images` with
            ``mean``/``std``; ``"float"``: float32 ``[3, H, W]`` in [0, 1]; ``"uint8"``: uint8
            ``[3, H, W]``, to normalise on the device with :func:`normalize_images` (the data
            loader then ships 4x fewer bytes, and the result is the same to the bit).
        mean: per-channel mean for ``"normalized"``.
        std: per-channel standard deviation for ``"normalized"``.

    Example:
        >>> view = ViewTransform([RandomResizedCrop(96), RandomHorizontalFlip()], output="float")
        >>> x, geom = view(img)
        >>> x.shape, x.dtype
        (torch.Size([3, 96, 96]), torch.float32)
    """

    def __init__(
        self,
        geometric: Sequence[nn.Module],
        photometric: Callable[[Image.Image], Image.Image] | None = None,
        *,
        output: Output = "normalized",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
        self.geometric = nn.ModuleList(geometric)
        self.photometric = photometric
        self.output = output
        self.mean = tuple(map(float, mean))
        self.std = tuple(map(float, std))

    def forward(self, img: Image.Image) -> tuple[Tensor, ViewGeometry]:
        """Make the view.

        Args:
            img: PIL image, any mode (converted to RGB), non-empty.

        Returns:
            The view, ``[3, H, W]`` as set by ``output``, and its :class:`ViewGeometry` relative
            to ``img``.
        """
        img = to_rgb(img)
        geom = None
        for step in self.geometric:
            img, geom = step(img, geom)
        if geom is None:
            geom = ViewGeometry.full(img.width, img.height)
        if self.photometric is not None:
            img = self.photometric(img)
        pixels = F.pil_to_tensor(img)
        if self.output == "uint8":
            return pixels, geom
        if self.output == "float":
            return pixels.float().div_(255), geom
        return normalize_images(pixels, self.mean, self.std), geom

    def extra_repr(self) -> str:
        output = f"output={self.output!r}"
        if isinstance(self.photometric, nn.Module):  # printed as a child module already
            return output
        return f"{output}, photometric={self.photometric!r}"


def _view_output(photometric: Photometric, output: Output | None) -> Output:
    """The output of a view whose photometric steps run as ``photometric`` says."""
    if photometric == "device":
        if output not in (None, "uint8"):
            raise ValueError(
                f"output must be 'uint8' (or None) with photometric='device': BatchPhotometric does the "
                f"photometric steps and the normalisation on uint8 views, got output={output!r}"
            )
        return "uint8"
    return "normalized" if output is None else output


def byol_view(
    view: int,
    size: int | Sequence[int] = 224,
    scale: Sequence[float] = (0.2, 1.0),
    photometric: Photometric = True,
    *,
    output: Output | None = None,
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    interpolation: InterpolationMode = InterpolationMode.BICUBIC,
) -> ViewTransform:
    """The SCRL/BYOL augmentation T1 (``view=1``) or T2 (``view=2``), tracking geometry.

    Random resized crop (``scale``, ``ratio``, bicubic) and horizontal flip (p = 0.5), then
    the photometric steps of :func:`byol_photometric`, then the ``output`` tensor.

    ``photometric`` says where the photometric steps run: ``True`` in this transform (in the
    data worker), ``False`` nowhere (the pure geometric warp), ``"device"`` in
    ``BatchPhotometric(view=view)`` (:class:`BatchPhotometric`), which finishes a whole batch of
    these views on the accelerator, normalisation included; a data worker then only decodes,
    crops, resizes and flips.

    Args:
        view: 1 or 2 (they differ in blur and solarize probabilities).
        size: view ``(height, width)``, or an int for a square view, >= 1.
        scale: crop area fraction ``(min, max)``, 0 < min <= max <= 1 (SCRL: 0.2 to 1).
        photometric: ``True``, ``False`` or ``"device"``, as above.
        output: ``"normalized"``, ``"float"`` or ``"uint8"`` (see :class:`ViewTransform`);
            ``None`` means ``"normalized"``, or ``"uint8"`` with ``photometric="device"``, the
            only output that setting allows.
        ratio: crop aspect ratio (width / height) range.
        interpolation: resampling filter (bicubic in the paper).

    Returns:
        A :class:`ViewTransform`: ``view_fn(img) -> (Tensor [3, H, W], ViewGeometry)``.

    Raises:
        ValueError: naming the bad argument, including ``output`` other than ``"uint8"`` with
            ``photometric="device"``.

    Example:
        >>> x, geom = byol_view(1, size=96)(img)
        >>> x.shape, geom.crop.shape
        (torch.Size([3, 96, 96]), torch.Size([4]))
        >>> warp, _ = byol_view(1, size=96, photometric=False, output="float")(img)  # in [0, 1]
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
        output=_view_output(photometric, output),
    )


class TwoViewTransform(nn.Module):
    """Two augmented views of one image with their geometries: the input of SCRL and BYOL.

    Args:
        view1: callable ``(img) -> (Tensor [3, H, W], ViewGeometry)`` making view 1 (e.g.
            ``byol_view(1)``).
        view2: the same for view 2.

    Example:
        >>> transform = TwoViewTransform.byol(size=224)
        >>> torch.manual_seed(0)
        >>> v1, v2, g1, g2 = transform(Image.new("RGB", (640, 480)))
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
        *,
        photometric: Photometric = True,
        output: Output | None = None,
    ) -> "TwoViewTransform":
        """The paper's pair ``(T1, T2)``: :func:`byol_view` 1 and 2 with these settings.

        ``photometric="device"`` makes geometry-only uint8 views; finish them on the device with
        ``BatchPhotometric(view=1)`` and ``BatchPhotometric(view=2)``.
        """
        return cls(
            byol_view(1, size, scale, photometric, output=output), byol_view(2, size, scale, photometric, output=output)
        )

    def forward(self, img: Image.Image) -> tuple[Tensor, Tensor, ViewGeometry, ViewGeometry]:
        """Make both views, view 1 first, drawing from torch's global RNG.

        Args:
            img: PIL image, any mode (converted to RGB once), non-empty.

        Returns:
            ``(view1, view2, geom1, geom2)``; each geometry maps boxes between its view and ``img``.
        """
        img = to_rgb(img)
        (x1, g1), (x2, g2) = self.view1(img), self.view2(img)
        return x1, x2, g1, g2
