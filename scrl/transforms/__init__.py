"""Two-view augmentation that records exactly where each view came from.

Geometric steps (:class:`RandomResizedCrop`, :class:`RandomHorizontalFlip`) take and return
``(PIL image, ViewGeometry)``; photometric steps are torchvision's own; :func:`byol_view`
and :class:`TwoViewTransform` assemble the SCRL/BYOL pipeline. :class:`BatchPhotometric`
runs the photometric steps on a whole batch on the device instead, and
:func:`normalize_images` is the one normalisation of every view, uint8 or float, anywhere.
To decode on the device as well, the workers run :class:`TwoViewCrops` (geometry only, JPEG
files left encoded) and :class:`ViewDecoder` decodes, crops, resizes and flips the batch there,
as PIL would have (:func:`resample_crops`).

Randomness follows one rule. The worker-side transforms (everything here that takes a PIL
image) draw from torch's global RNG and take no generator, like torchvision's own, so that
they compose with torchvision's; :class:`~scrl.data.TwoViewDataset` seeds that RNG (and
Python's and NumPy's) per sample from ``(seed, epoch, index)`` and restores it afterwards,
which makes a run reproducible whatever the number of workers. Outside a dataset, seed it
yourself (``torch.manual_seed``, or inside ``torch.random.fork_rng()`` to leave the caller's
stream alone). The batched steps that run where the tensors live, :class:`BatchPhotometric`
and :class:`~scrl.BoxPairSampler`, take an optional ``torch.Generator`` on that device.
"""

from .batch_photometric import BatchPhotometric
from .geometric import RandomHorizontalFlip, RandomResizedCrop
from .resample import resample_crops
from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from .photometric import GaussianBlur, byol_photometric
from .two_view_crops import TwoViewCrops
from .view import TwoViewTransform, ViewTransform, byol_view
from .view_decoder import DamagedImageWarning, DecodedViews, ViewDecoder

__all__ = [
    "BatchPhotometric",
    "DamagedImageWarning",
    "DecodedViews",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GaussianBlur",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "TwoViewCrops",
    "TwoViewTransform",
    "ViewDecoder",
    "ViewTransform",
    "byol_photometric",
    "byol_view",
    "normalize_images",
    "resample_crops",
]
