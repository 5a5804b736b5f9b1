"""The paper's photometric augmentation for a whole batch at once, on any device.

Data workers then only decode, crop, resize and flip; colour jitter, grayscale, blur,
solarize and normalisation run batched on the accelerator with independent random
parameters per sample and the per-image semantics of the torchvision ops they replace.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.transforms.v2.functional import rgb_to_grayscale

from .normalize import IMAGENET_MEAN, IMAGENET_STD, normalize_images
from .photometric import BLUR_P, BLUR_SIGMA, COLOR_JITTER, GRAYSCALE_P, JITTER_P, SOLARIZE_P, blur_kernel_size

__all__ = ["BatchPhotometric", "adjust_hue", "gaussian_blur"]

def _per_sample(values: Tensor) -> Tensor:
    return values[:, None, None, None]


def adjust_hue(images: Tensor, hue_shift: Tensor) -> Tensor:
    """Rotate the hue of each image by its own shift, like ``torchvision.transforms.functional.adjust_hue``.

    Args:
        images: float ``[B, 3, H, W]`` RGB in ``[0, 1]``.
        hue_shift: float ``[B]`` in ``[-0.5, 0.5]``, fractions of a full turn of the hue circle.

    Returns:
        float ``[B, 3, H, W]`` in ``[0, 1]``.
    """
    minimum, value = torch.aminmax(images, dim=1, keepdim=True)
    chroma = value - minimum
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    # Hue in sextants, measured from whichever channel holds the maximum (red wins ties, as in
    # PIL). Gray pixels have a zero numerator, so the clamped divisor gives them hue 0.
    numerator = torch.where(value == r, g - b, torch.where(value == g, (b - r) + 2 * chroma, (r - g) + 4 * chroma))
    hue = numerator.div_(chroma.clamp_min(torch.finfo(images.dtype).tiny))
    hue.add_(6 * _per_sample(hue_shift))
    # HSV -> RGB: channel n is v - c * clamp(min(k, 4 - k), 0, 1) with k = (n + h) mod 6, where
    # c = v * s is the chroma, which the rotation leaves unchanged.
    offsets = torch.arange(5.0, 0.0, -2.0, device=images.device, dtype=images.dtype)[None, :, None, None]  # 5, 3, 1
    k = (hue + offsets).remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return torch.addcmul(value, chroma, ramp, value=-1)


def _gaussian_kernels(sigma: Tensor, size: int, channels: int, dtype: torch.dtype) -> Tensor:
    """Normalised 1-D Gaussians of ``size`` taps, one per sample and channel: ``[B * C, size]``."""
    half = size // 2
    x = torch.arange(-half, half + 1, device=sigma.device, dtype=dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None].to(dtype)) ** 2)
    return (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int | tuple[int, int]) -> Tensor:
    """Blur each image with its own Gaussian, like ``torchvision``'s ``gaussian_blur`` (reflect padding).

    Args:
        images: float ``[B, C, H, W]``.
        sigma: float ``[B]``, > 0, in pixels; a sample with a tiny sigma is left unchanged.
        kernel_size: odd kernel side in pixels, or ``(along x, along y)`` as torchvision takes it;
            each smaller than twice the image side along its axis.

    Returns:
        float ``[B, C, H, W]``.
    """
    b, c, h, w = images.shape
    size_x, size_y = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    flat = images.reshape(1, b * c, h, w)
    flat = torch.nn.functional.pad(flat, (size_x // 2, size_x // 2, size_y // 2, size_y // 2), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, _gaussian_kernels(sigma, size_x, c, images.dtype)[:, None, None, :], groups=b * c)
    flat = torch.nn.functional.conv2d(flat, _gaussian_kernels(sigma, size_y, c, images.dtype)[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


class BatchPhotometric(torch.nn.Module):
    """Colour jitter, grayscale, Gaussian blur and solarize with per-sample parameters, then normalise.

    The steps and ranges of the paper's Table A1 (BYOL's augmentation), each sample drawing its
    own parameters exactly as the per-image torchvision pipeline would:

    * colour jitter with probability ``jitter_p``: brightness, contrast, saturation and hue
      factors drawn uniformly, applied in a random order per sample, clamped to ``[0, 1]``
      after each step;
    * grayscale with probability ``grayscale_p`` (three equal channels of the luma);
    * Gaussian blur with probability ``blur_p``, ``sigma ~ U(blur_sigma)``, reflect padding;
    * solarize with probability ``solarize_p``: values ``>= 0.5`` become ``1 - x``;
    * normalise with ``mean`` and ``std``.

    Args:
        view: 1 or 2, picks the paper's blur (1.0 / 0.1) and solarize (0.0 / 0.2) probabilities.
        kernel_size: blur kernel side in pixels (odd); ``None`` takes about 10 % of the image's
            width and height, per axis, as the per-image pipeline does.
        brightness, contrast, saturation: jitter strengths in ``[0, 1]``; factors are ``U(1 - s, 1 + s)``.
        hue: hue strength in ``[0, 0.5]``; the shift is ``U(-hue, hue)`` of a turn.
        jitter_p, grayscale_p, blur_p, solarize_p: probabilities in ``[0, 1]``; ``blur_p`` and
            ``solarize_p`` default to the view's.
        blur_sigma: ``(low, high)`` sigma range in pixels, ``0 < low <= high``.
        normalize: normalise the result with :func:`normalize_images`; ``False`` returns
            ``[0, 1]`` floats.
        mean, std: normalisation per channel.

    Example:
        >>> augment = BatchPhotometric(view=1)
        >>> views = torch.randint(0, 256, (8, 3, 224, 224), dtype=torch.uint8)
        >>> augment(views, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 224, 224])
    """

    def __init__(
        self,
        view: int = 1,
        kernel_size: int | None = None,
        brightness: float = COLOR_JITTER["brightness"],
        contrast: float = COLOR_JITTER["contrast"],
        saturation: float = COLOR_JITTER["saturation"],
        hue: float = COLOR_JITTER["hue"],
        jitter_p: float = JITTER_P,
        grayscale_p: float = GRAYSCALE_P,
        blur_p: float | None = None,
        blur_sigma: tuple[float, float] = BLUR_SIGMA,
        solarize_p: float | None = None,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if view not in (1, 2):
            raise ValueError(f"view must be 1 or 2, got {view!r}")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be an odd integer >= 1 or None, got {kernel_size!r}")
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue!r}")
        blur_p = BLUR_P[view] if blur_p is None else blur_p
        solarize_p = SOLARIZE_P[view] if solarize_p is None else solarize_p
        for name, value in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p), ("blur_p", blur_p), ("solarize_p", solarize_p)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < low <= high, got {blur_sigma!r}")
        self.view = view
        self.kernel_size = kernel_size
        self.strengths = (brightness, contrast, saturation, hue)
        self.jitter_p, self.grayscale_p, self.blur_p, self.solarize_p = jitter_p, grayscale_p, blur_p, solarize_p
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.normalize = normalize
        self.mean = tuple(map(float, mean))
        self.std = tuple(map(float, std))

    def sample_parameters(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw every per-sample parameter; ``forward`` with these is deterministic.

        Returns:
            ``factors`` float ``[B, 4]`` (brightness, contrast, saturation, hue shift; neutral
            values where the sample is not jittered), ``order`` long ``[B, 4]`` (a permutation of
            the four jitter steps), ``grayscale``, ``blur``, ``solarize`` bool ``[B]`` and
            ``sigma`` float ``[B]``.
        """
        u = torch.rand(batch, 12, generator=generator, device=device)
        jitter = u[:, 4] < self.jitter_p
        # Built from Python scalars, not torch.tensor(...): a host-to-device copy per call would
        # synchronise the stream.
        b, c, s, h = self.strengths
        factors = torch.stack(
            [
                torch.where(jitter, (1 - b) + u[:, 0] * (2 * b), 1.0),
                torch.where(jitter, (1 - c) + u[:, 1] * (2 * c), 1.0),
                torch.where(jitter, (1 - s) + u[:, 2] * (2 * s), 1.0),
                torch.where(jitter, -h + u[:, 3] * (2 * h), 0.0),
            ],
            dim=1,
        )
        order = torch.argsort(torch.rand(batch, 4, generator=generator, device=device), dim=1)
        sigma = self.blur_sigma[0] + u[:, 8] * (self.blur_sigma[1] - self.blur_sigma[0])
        return {
            "factors": factors,
            "order": order,
            "grayscale": u[:, 5] < self.grayscale_p,
            "blur": u[:, 6] < self.blur_p,
            "solarize": u[:, 7] < self.solarize_p,
            "sigma": sigma,
        }

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None, params: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Augment a batch.

        Args:
            images: uint8 ``[B, 3, H, W]`` (or float in ``[0, 1]``), on any device.
            generator: optional ``torch.Generator`` on the images' device.
            params: parameters from :meth:`sample_parameters` to apply instead of drawing new ones.

        Returns:
            float32 ``[B, 3, H, W]``, normalised unless ``normalize=False``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}")
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        if params is None:
            params = self.sample_parameters(x.shape[0], x.device, generator)
        x = self._color_jitter(x, params["factors"], params["order"])
        x = torch.where(_per_sample(params["grayscale"]), rgb_to_grayscale(x).expand_as(x), x)
        kernel_size = self.kernel_size or (blur_kernel_size(x.shape[-1]), blur_kernel_size(x.shape[-2]))
        # Samples that skip the blur get a kernel so narrow that it is the identity.
        sigma = torch.where(params["blur"], params["sigma"], torch.full_like(params["sigma"], 1e-3))
        x = gaussian_blur(x, sigma, kernel_size)
        # Solarizing at an infinite threshold leaves a sample unchanged.
        threshold = _per_sample(torch.where(params["solarize"], 0.5, float("inf")))
        x = torch.where(x >= threshold, 1 - x, x)
        return normalize_images(x, self.mean, self.std) if self.normalize else x

    @staticmethod
    def _color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
        # The expensive hue step runs once: the three blend steps that precede it in a sample's
        # order run in three slots before it, those that follow in three slots after it, with
        # neutral factors in the slots a sample does not use.
        batch = x.shape[0]
        positions = torch.arange(4, device=x.device).expand(batch, 4)
        hue_position = (order == 3).to(torch.int64).argmax(dim=1)
        blend_order = order.gather(1, torch.argsort(torch.where(order == 3, 4, positions), dim=1)[:, :3])
        for before_hue in (True, False):
            for slot in range(3):
                active = slot < hue_position if before_hue else slot >= hue_position
                x = _blend_step(x, blend_order[:, slot], torch.where(active, factors.gather(1, blend_order[:, slot : slot + 1])[:, 0], 1.0))
            if before_hue:
                x = adjust_hue(x, factors[:, 3])
        return x

    def extra_repr(self) -> str:
        b, c, s, h = self.strengths
        return (
            f"view={self.view}, brightness={b}, contrast={c}, saturation={s}, hue={h}, jitter_p={self.jitter_p}, "
            f"grayscale_p={self.grayscale_p}, blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, "
            f"solarize_p={self.solarize_p}, normalize={self.normalize}"
        )


def _blend_step(x: Tensor, step: Tensor, factor: Tensor) -> Tensor:
    """Brightness (step 0), contrast (1) or saturation (2) per sample: blend with black, the mean
    gray level or the gray image by ``factor``, then clamp to ``[0, 1]`` as torchvision does."""
    gray = rgb_to_grayscale(x)
    target = torch.where(
        _per_sample(step == 0),
        0.0,
        torch.where(_per_sample(step == 1), gray.mean(dim=(1, 2, 3), keepdim=True), gray),
    )
    return torch.lerp(target, x, _per_sample(factor)).clamp_(0, 1)
