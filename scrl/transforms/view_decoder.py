"""Both views of a batch made on the device: batched JPEG decoding, then the exact antialiased crop, resize and flip."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from ..geometry import ViewGeometry, check_view_size
from .geometric import view_size
from .normalize import IMAGENET_MEAN
from .resample import RESAMPLE_FILTERS, resample_crops

__all__ = ["DamagedImageWarning", "DecodedViews", "ViewDecoder"]

OUTPUTS = ("uint8", "float")


class DecodedViews(NamedTuple):
    """What :class:`ViewDecoder` returns.

    Attributes:
        view1: ``[B, 3, H, W]`` view-1 images on the device (uint8, or float in [0, 1]).
        view2: the same for view 2.
        skipped: files no decoder could read, path to reason; each was replaced by an image of
            the ImageNet mean colour (its views then carry no signal), so the batch keeps its shape.
    """

    view1: Tensor
    view2: Tensor
    skipped: dict[str, str]


class DamagedImageWarning(UserWarning):
    """A JPEG file decoded despite damage libjpeg reported (e.g. "Corrupt JPEG data: premature end of data segment")."""


@contextmanager
def _stderr_lines() -> Iterator[list[str]]:
    """The lines written meanwhile to the process's standard error at the file-descriptor level.

    libjpeg reports damaged data by printing to file descriptor 2 from C, with no file name;
    catching it there is the only way to say which file it was about.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


def _decode_named(data: list[Tensor], names: list[str], device: torch.device) -> list[Tensor]:
    """:func:`_decode`; on the CPU, each libjpeg message becomes a :class:`DamagedImageWarning` naming its file."""
    if device.type != "cpu":
        return _decode(data, device)
    with _stderr_lines() as printed:
        decoded = _decode(data, device)
    if not printed:
        return decoded
    claimed: set[str] = set()
    for image, name in zip(data, names):
        if len(data) == 1:
            own = printed
        else:  # one call decoded them all: decode each again alone to learn whose messages they were
            with _stderr_lines() as own:
                _decode([image], device)
        if own:
            warnings.warn(f"{name}: {'; '.join(own)} (decoded anyway)", DamagedImageWarning, stacklevel=3)
            claimed.update(own)
    for line in printed:  # anything else printed meanwhile goes on to where it was going
        if line not in claimed:
            print(line, file=sys.stderr)
    return decoded


def _decode(data: list[Tensor], device: torch.device) -> list[Tensor]:
    with warnings.catch_warnings():  # torchvision >= 0.29 flags its decoders as deprecated in favour of TorchCodec
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


class ViewDecoder(nn.Module):
    """Decodes a batch of images on the device and makes both views of each exactly where its geometry says.

    The device side of decoding on the device; the data workers run :class:`TwoViewCrops`.
    One call does, for a whole batch:

    1. decode: all JPEG files at once with ``torchvision.io.decode_jpeg`` on the geometries'
       device (nvJPEG on CUDA, libjpeg-turbo on the CPU, the same library PIL uses, so the
       decoded pixels equal PIL's there);
    2. crop, resize and flip: each view's float crop box resampled to ``size`` with the
       antialiased filter of PIL's resize (:func:`~scrl.transforms.resample.resample_crops`);
       images of one size go through one batched matrix product;
    3. nothing else: the photometric steps and the normalisation are :class:`BatchPhotometric`'s.

    Images decoded in the workers (uint8 ``[3, H, W]``: non-JPEG files, or any image dataset)
    are moved to the device and resampled the same way. A file that fails to decode in the
    batch is retried alone, then on the CPU; if no decoder reads it, it is replaced by an image
    of the ImageNet mean colour and reported in :attr:`DecodedViews.skipped`. A damaged file that
    libjpeg still decodes (it prints "Corrupt JPEG data: ..." to the process's standard error,
    naming no file) is named in a :class:`DamagedImageWarning` instead, once per file and process.

    Synchronisation: torchvision's batched decoder does its own host work (it parses every file
    and, on CUDA, waits for its decoding stream); the resampling after it reads nothing back. The
    only transfers are host-to-device: each image size's list of batch positions, and the images
    decoded in the workers. Output shapes are static: ``[B, 3, *size]``.

    Args:
        size: view ``(height, width)``, or an int for square views; the size the geometries record.
        interpolation: ``BICUBIC`` (the SCRL/BYOL views) or ``BILINEAR``, as in the workers' crop.
        output: ``"uint8"`` (for :class:`BatchPhotometric`) or ``"float"`` (in [0, 1]).

    Example:
        >>> decoder = ViewDecoder(224)
        >>> batch = next(iter(loader))  # an EncodedTwoViewBatch
        >>> views = decoder(batch.images, batch.geom1.to("cuda"), batch.geom2.to("cuda"), batch.paths)
        >>> views.view1.shape, views.view1.device
        (torch.Size([256, 3, 224, 224]), device(type='cuda', index=0))
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
        output: str = "uint8",
    ) -> None:
        super().__init__()
        if interpolation not in RESAMPLE_FILTERS:
            raise ValueError(f"interpolation must be one of {[m.name for m in RESAMPLE_FILTERS]}, got {interpolation!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
        self.size = view_size(size)
        self.interpolation = interpolation
        self.output = output

    def forward(
        self, images: Sequence[Tensor], geom1: ViewGeometry, geom2: ViewGeometry, paths: Sequence[str] | None = None
    ) -> DecodedViews:
        """Decode ``images`` and make their views.

        Args:
            images: ``B`` host tensors: uint8 ``[L]`` JPEG bytes, or uint8 ``[3, H, W]`` decoded images.
            geom1: batched geometry of view 1 (``crop`` ``[B, 4]`` in source pixels of each
                image); its device is where the views are made.
            geom2: the same for view 2.
            paths: each image's file, to name undecodable ones (``""`` or ``None`` for none).

        Returns:
            :class:`DecodedViews` ``(view1, view2, skipped)``.
        """
        count = len(images)
        if geom1.crop.shape[:-1] != (count,) or geom2.crop.shape[:-1] != (count,):
            raise ValueError(
                f"geom1 and geom2 must be batched over the {count} images, got crop shapes "
                f"{list(geom1.crop.shape)} and {list(geom2.crop.shape)}"
            )
        paths = list(paths) if paths is not None else [""] * count
        if len(paths) != count:
            raise ValueError(f"paths must name the {count} images, got {len(paths)} paths")
        device = geom1.crop.device
        decoded, skipped = self._decode_all(images, paths, device, geom1, geom2)
        height, width = self.size
        views = torch.empty(count, 2, 3, height, width, dtype=torch.uint8, device=device)
        crops = torch.stack([geom1.crop, geom2.crop], dim=1)  # [B, 2, 4]
        flipped = torch.stack([geom1.flipped, geom2.flipped], dim=1)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(decoded):
            by_size.setdefault(tuple(image.shape), []).append(i)
        for members in by_size.values():
            where = torch.tensor(members).to(device, non_blocking=True)
            group = torch.stack([decoded[i] for i in members])
            views.index_copy_(0, where, resample_crops(group, crops[where], flipped[where], self.size, self.interpolation))
        view1, view2 = views.unbind(1)
        if self.output == "float":
            view1, view2 = view1.float().div_(255), view2.float().div_(255)
        check_view_size(view1, geom1, "view1")
        check_view_size(view2, geom2, "view2")
        return DecodedViews(view1, view2, skipped)

    def _decode_all(
        self, images: Sequence[Tensor], paths: list[str], device: torch.device, geom1: ViewGeometry, geom2: ViewGeometry
    ) -> tuple[list[Tensor], dict[str, str]]:
        """Every image as uint8 ``[3, H, W]`` on ``device``, and the files no decoder could read."""
        decoded: list[Tensor | None] = [None] * len(images)
        encoded = []
        for i, image in enumerate(images):
            if image.dtype != torch.uint8 or image.dim() not in (1, 3):
                raise ValueError(
                    f"images[{i}] must be uint8 JPEG bytes [L] or a uint8 [3, H, W] image, got {image.dtype} {list(image.shape)}"
                )
            if image.dim() == 3:
                decoded[i] = image
            else:
                encoded.append(i)
        decode_device = device if device.type == "cuda" else torch.device("cpu")
        names = [path or f"images[{i}]" for i, path in enumerate(paths)]
        skipped: dict[str, str] = {}
        try:
            if encoded:
                for i, image in zip(encoded, _decode_named([images[i] for i in encoded], [names[i] for i in encoded], decode_device)):
                    decoded[i] = image
        except RuntimeError:  # one bad file fails the whole call: find it
            for i in encoded:
                try:
                    decoded[i] = _decode_named([images[i]], [names[i]], decode_device)[0]
                except RuntimeError:
                    try:
                        decoded[i] = _decode_named([images[i]], [names[i]], torch.device("cpu"))[0]
                    except RuntimeError as exc:
                        skipped[names[i]] = f"RuntimeError: {exc}"
                        decoded[i] = self._stand_in(geom1.crop[i], geom2.crop[i], device)
        # Worker-decoded images, and files only the CPU decoder read, still have to move.
        return [image.to(device, non_blocking=True) for image in decoded], skipped

    @staticmethod
    def _stand_in(crop1: Tensor, crop2: Tensor, device: torch.device) -> Tensor:
        """A mean-coloured image covering both crops, for a file no decoder reads (reads the crops: a rare sync)."""
        x1, y1 = torch.maximum(crop1[2:], crop2[2:]).tolist()
        mean = torch.tensor([round(255 * m) for m in IMAGENET_MEAN], dtype=torch.uint8, device=device)
        return mean[:, None, None].expand(3, math.ceil(y1), math.ceil(x1)).contiguous()

    def extra_repr(self) -> str:
        return f"size={self.size}, interpolation={self.interpolation.value}, output={self.output!r}"
