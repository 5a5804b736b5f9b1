"""The photometric steps of SCRL/BYOL (SCRL paper, Table A1), built from torchvision's ops."""

from __future__ import annotations

from typing import Callable, Sequence

import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor

from .geometric import view_size

__all__ = ["GaussianBlur", "blur_kernel_size", "byol_photometric"]

# Table A1, shared by the per-image steps here and the batched ones (batch_photometric.py).
COLOR_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
JITTER_P = 0.8
GRAYSCALE_P = 0.2
BLUR_SIGMA = (0.1, 2.0)
# View 1 is always blurred and never solarised; view 2 rarely blurred, sometimes solarised.
BLUR_P = {1: 1.0, 2: 0.1}
SOLARIZE_P = {1: 0.0, 2: 0.2}


def blur_kernel_size(side: int) -> int:
    """Gaussian-blur kernel for a view side: ``2 * floor(side / 20) + 1``, odd and about 10 % of it (23 at 224)."""
    return 2 * int(0.05 * side) + 1


class GaussianBlur(T.GaussianBlur):
    """torchvision's ``GaussianBlur``, applied as two 1-D passes.

    A Gaussian kernel is separable, so blurring the rows and then the columns with
    torchvision's own ``gaussian_blur`` (kernels ``k x 1`` and ``1 x k``, same sigma, reflect
    padding) equals its dense ``k x k`` convolution up to float rounding, at ``2k`` instead of
    ``k^2`` multiply-adds per pixel: about 1 ms instead of 11 ms for a 224-px view with the
    23-px kernel on one CPU thread. Sigma is drawn by ``T.GaussianBlur.get_params``.

    Args:
        kernel_size: odd int or ``(kx, ky)`` (width, height), as in torchvision.
        sigma: ``(min, max)`` of the uniformly drawn standard deviation, in pixels.

    Example:
        >>> GaussianBlur(23, sigma=(0.1, 2.0))(img)  # PIL in, PIL out; tensors keep their dtype
    """

    def forward(self, img: Image.Image | Tensor) -> Image.Image | Tensor:
        sigma = self.get_params(self.sigma[0], self.sigma[1])
        kx, ky = self.kernel_size
        pixels = img if isinstance(img, Tensor) else F.pil_to_tensor(img)
        # Blur in float so the intermediate row pass is not rounded to 8 bits.
        out = pixels if pixels.is_floating_point() else pixels.float()
        out = F.gaussian_blur(out, [kx, 1], [sigma, sigma])
        out = F.gaussian_blur(out, [1, ky], [sigma, sigma])
        if not pixels.is_floating_point():
            out = out.round_().to(pixels.dtype)
        return out if isinstance(img, Tensor) else F.to_pil_image(out, mode=img.mode)


def _with_probability(step: Callable, p: float) -> Callable | None:
    """``step`` applied with probability ``p``: omitted at 0, unconditional at 1."""
    if p == 0.0:
        return None
    return step if p == 1.0 else T.RandomApply([step], p=p)


def byol_photometric(view: int, size: int | Sequence[int] = 224) -> T.Compose:
    """The photometric steps of view 1 or view 2 (SCRL paper, Table A1), on PIL images.

    Colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order) with
    p = 0.8; grayscale with p = 0.2; Gaussian blur (sigma in [0.1, 2], kernel about 10 % of
    the view side) with p = 1.0 for view 1 and 0.1 for view 2; solarize at 128 with p = 0.0
    for view 1 and 0.2 for view 2. Randomness comes from torch's global RNG, as in every
    worker-side transform (see :mod:`scrl.transforms`).

    Args:
        view: 1 or 2.
        size: the view's size, ``(height, width)`` or an int; sets the blur kernel.

    Returns:
        A ``torchvision.transforms.Compose`` mapping an RGB PIL image to an RGB PIL image.

    Example:
        >>> byol_photometric(2, 224)(img)  # PIL RGB -> PIL RGB
    """
    if isinstance(view, bool) or view not in (1, 2):
        raise ValueError(f"view must be 1 or 2, got {view!r}")
    height, width = view_size(size)
    steps = [
        _with_probability(T.ColorJitter(**COLOR_JITTER), JITTER_P),
        T.RandomGrayscale(p=GRAYSCALE_P),
        _with_probability(
            GaussianBlur((blur_kernel_size(width), blur_kernel_size(height)), sigma=BLUR_SIGMA), BLUR_P[view]
        ),
        T.RandomSolarize(threshold=128, p=SOLARIZE_P[view]) if SOLARIZE_P[view] > 0 else None,
    ]
    return T.Compose([step for step in steps if step is not None])

