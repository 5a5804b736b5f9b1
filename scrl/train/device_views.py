"""A batch's views as the model takes them: decoded, augmented and normalised on the device as configured."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data import EncodedTwoViewBatch, TwoViewBatch
from ..transforms import BatchPhotometric, ViewDecoder, normalize_images

__all__ = ["DeviceViews"]


class DeviceViews:
    """Turn a batch on the device into the two normalised float views of the model's call.

    * uint8 views from the workers (the default): normalised;
    * ``augment``: the photometric steps of each view run here, batched
      (:class:`~scrl.transforms.BatchPhotometric`, parameters drawn from the ``"augment"`` stream);
    * ``decode``: the workers sent encoded files and geometries; decoding, crop, resize and flip
      run here (:class:`~scrl.transforms.ViewDecoder`), then the photometric steps.

    Args:
        image_size: the views' side in pixels.
        device: where the batches are.
        augment: run the photometric steps here.
        decode: decode here (implies ``augment``).
        compile: ``torch.compile`` the photometric steps: dozens of elementwise passes over the
            batch, fused into a few kernels. Their random parameters are drawn outside the
            compiled code, so the graphs hold no generator.
        memory_format: of the returned views.

    Example:
        >>> views = DeviceViews(224, torch.device("cuda"), augment=True)
        >>> view1, view2, skipped = views(batch, generator=streams["augment"])
    """

    def __init__(self, image_size: int, device: torch.device, *, augment: bool = False, decode: bool = False,
                 compile: bool = False, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.decoder = ViewDecoder(image_size) if decode else None
        self.photometric = None
        self.apply = None
        if augment or decode:
            self.photometric = [BatchPhotometric(view=1).to(device), BatchPhotometric(view=2).to(device)]
            self.apply = [torch.compile(op) for op in self.photometric] if compile else self.photometric
        self.memory_format = memory_format

    def __call__(self, batch: TwoViewBatch | EncodedTwoViewBatch,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, dict[str, str]]:
        """``(view1, view2, skipped)``: float ``[B, 3, S, S]`` normalised views, and the files no decoder could read."""
        skipped: dict[str, str] = {}
        if isinstance(batch, EncodedTwoViewBatch):
            decoded = self.decoder(batch.images, batch.geom1, batch.geom2, batch.paths)
            view1, view2, skipped = decoded.view1, decoded.view2, decoded.skipped
        else:
            view1, view2 = batch.view1, batch.view2
        if self.photometric is not None:
            views = []
            for sample, apply, view in zip(self.photometric, self.apply, (view1, view2)):
                views.append(apply(view, params=sample.sample_parameters(view.shape[0], view.device, generator)))
            view1, view2 = views
        else:
            view1, view2 = normalize_images(view1), normalize_images(view2)
        return view1.contiguous(memory_format=self.memory_format), view2.contiguous(memory_format=self.memory_format), skipped
