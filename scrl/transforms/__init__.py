"""Two-view augmentation that records exactly where each view came from.

Geometric steps (:class:`RandomResizedCrop`, :class:`RandomHorizontalFlip`) take and return
``(PIL image, ViewGeometry)``; photometric steps are torchvision's own; :func:`byol_view`
and :class:`TwoViewTransform` assemble the SCRL/BYOL pipeline. :class:`BatchPhotometric`
runs the photometric steps on a whole batch on the device instead.
"""

from .batch_photometric import BatchPhotometric
from .geometric import RandomHorizontalFlip, RandomResizedCrop, random_resized_crop_params, resized_crop
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_uint8
from .photometric import GaussianBlur, blur_kernel_size, byol_photometric, global_rng_from
from .rgb import to_rgb
from .view import TwoViewTransform, ViewTransform, byol_view

__all__ = [
    "BatchPhotometric",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GaussianBlur",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "TwoViewTransform",
    "ViewTransform",
    "blur_kernel_size",
    "byol_photometric",
    "byol_view",
    "global_rng_from",
    "normalize_uint8",
    "random_resized_crop_params",
    "resized_crop",
    "to_rgb",
]
