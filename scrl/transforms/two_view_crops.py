"""The worker side of decoding on the device: both views' geometry, drawn without decoding the image."""

from __future__ import annotations

from typing import Sequence

import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor, nn

from ..data.encoded_image import EncodedImage
from ..geometry import ViewGeometry
from ..data.rgb import to_rgb
from .view import ViewTransform, byol_view

__all__ = ["TwoViewCrops"]


class TwoViewCrops(nn.Module):
    """Draws the geometry of two views exactly as a :class:`TwoViewTransform` of the same views would, and keeps the image as it is.

    A data worker running this does no pixel work: a JPEG stays encoded
    (:class:`~scrl.data.EncodedImage`, read with its header size by
    :meth:`~scrl.data.ImageFolderDataset.load_encoded`), and :class:`ViewDecoder` decodes,
    crops, resizes and flips the whole batch on the device. The crop boxes and flips are the
    same random draws, in the same order, as ``TwoViewTransform(view1, view2)`` makes with
    ``photometric="device"`` views, so one seed gives the same geometry on both paths. A PIL
    image (a file decoded in the worker, or any image dataset) is passed on decoded, as uint8
    ``[3, H, W]``, and the device resamples it in the same way.

    Args:
        view1: the view-1 pipeline, geometric steps only (e.g. ``byol_view(1, photometric="device")``);
            each step must offer ``geometry(width, height, geom)`` like :class:`RandomResizedCrop`.
        view2: the same for view 2.

    Example:
        >>> crops = TwoViewCrops.byol(size=224)
        >>> image, geom1, geom2, path = crops(read_encoded("photo.jpg"))
        >>> image.shape, geom1.crop  # the file's bytes, and view 1's crop in source pixels
        (torch.Size([100582]), tensor([ 46.,  63., 509., 459.], dtype=torch.float64))
    """

    reads_encoded = True  # TwoViewDataset hands it undecoded JPEGs where the dataset can

    def __init__(self, view1: ViewTransform, view2: ViewTransform) -> None:
        super().__init__()
        for name, view in (("view1", view1), ("view2", view2)):
            if not isinstance(view, ViewTransform) or view.photometric is not None:
                raise ValueError(f"{name} must be a ViewTransform without photometric steps (they run on the device), got {view!r}")
            for step in view.geometric:
                if not callable(getattr(step, "geometry", None)):
                    raise ValueError(f"{name} step {step!r} cannot draw its geometry without pixels (it has no geometry method)")
        self.view1 = view1
        self.view2 = view2

    @classmethod
    def byol(cls, size: int | Sequence[int] = 224, scale: Sequence[float] = (0.2, 1.0)) -> "TwoViewCrops":
        """The geometry of the paper's pair ``(T1, T2)`` (:meth:`TwoViewTransform.byol`)."""
        return cls(byol_view(1, size, scale, photometric="device"), byol_view(2, size, scale, photometric="device"))

    @staticmethod
    def _geometry(view: ViewTransform, width: int, height: int) -> ViewGeometry:
        geom = None
        for step in view.geometric:
            geom = step.geometry(width, height, geom)
            height, width = (int(side) for side in geom.size.tolist())
        return geom if geom is not None else ViewGeometry.full(width, height)

    def forward(self, image: EncodedImage | Image.Image) -> tuple[Tensor, ViewGeometry, ViewGeometry, str]:
        """Draw both views' geometry, view 1 first, from torch's global RNG.

        Args:
            image: an :class:`~scrl.data.EncodedImage` or a PIL image (any mode).

        Returns:
            ``(image, geom1, geom2, path)``: uint8 ``[L]`` encoded bytes or uint8 ``[3, H, W]``
            decoded pixels, both geometries relative to the image, and the image's file (``""``
            for a PIL image).
        """
        if isinstance(image, EncodedImage):
            pixels, width, height, path = image.data, image.width, image.height, image.path
        elif isinstance(image, Image.Image):
            image = to_rgb(image)
            pixels, (width, height), path = F.pil_to_tensor(image), image.size, ""
        else:
            raise TypeError(f"image must be an EncodedImage or a PIL image, got {type(image).__name__}")
        return pixels, self._geometry(self.view1, width, height), self._geometry(self.view2, width, height), path
