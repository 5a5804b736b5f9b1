"""Pretraining batches: two augmented views of each image, with geometries, made in the data workers."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from ..geometry import ViewGeometry, check_view_size
from ..runtime.random_streams import seeded_global_rngs
from .seeding import SeededDataset

__all__ = ["EncodedTwoViewBatch", "EncodedTwoViewItem", "TwoViewBatch", "TwoViewDataset", "TwoViewItem", "collate_two_views"]

TwoViewFn = Callable[[Any], tuple[Tensor, Tensor, ViewGeometry, ViewGeometry]]


class TwoViewItem(NamedTuple):
    """One sample of a :class:`TwoViewDataset` whose transform makes the views (e.g. :class:`~scrl.TwoViewTransform`)."""

    view1: Tensor
    view2: Tensor
    geom1: ViewGeometry
    geom2: ViewGeometry
    skipped: dict[str, str]


class EncodedTwoViewItem(NamedTuple):
    """One sample of a :class:`TwoViewDataset` with :class:`~scrl.transforms.TwoViewCrops`: the image and its views' geometry.

    Attributes:
        image: uint8 ``[L]`` JPEG bytes, or uint8 ``[3, H, W]`` pixels decoded in the worker.
        geom1: view 1's geometry relative to the image.
        geom2: view 2's.
        path: the image's file (``""`` when the dataset names none).
        skipped: unreadable files replaced on the way, path to reason.
    """

    image: Tensor
    geom1: ViewGeometry
    geom2: ViewGeometry
    path: str
    skipped: dict[str, str]


class TwoViewBatch(NamedTuple):
    """A collated pretraining batch.

    Attributes:
        view1: ``[B, 3, H, W]`` view-1 images (uint8 when the transform returns uint8).
        view2: ``[B, 3, H, W]`` view-2 images.
        geom1: batched :class:`~scrl.ViewGeometry` of view 1 (``crop`` ``[B, 4]`` source px ...).
        geom2: batched geometry of view 2.
        skipped: unreadable files replaced while building this batch, path to reason.
    """

    view1: Tensor
    view2: Tensor
    geom1: ViewGeometry
    geom2: ViewGeometry
    skipped: dict[str, str]

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "TwoViewBatch":
        """Move views and geometries to ``device`` (asynchronously from pinned memory with ``non_blocking``)."""
        return TwoViewBatch(
            self.view1.to(device, non_blocking=non_blocking),
            self.view2.to(device, non_blocking=non_blocking),
            self.geom1.to(device, non_blocking=non_blocking),
            self.geom2.to(device, non_blocking=non_blocking),
            self.skipped,
        )


class EncodedTwoViewBatch(NamedTuple):
    """A collated batch of :class:`EncodedTwoViewItem`: images still to decode, with their views' geometries.

    Make the views with :class:`~scrl.transforms.ViewDecoder` on the device.

    Attributes:
        images: ``B`` uint8 tensors, ``[L]`` JPEG bytes or ``[3, H, W]`` decoded pixels (sizes differ).
        geom1: batched geometry of view 1.
        geom2: batched geometry of view 2.
        paths: each image's file.
        skipped: unreadable files replaced while building this batch, path to reason.
    """

    images: list[Tensor]
    geom1: ViewGeometry
    geom2: ViewGeometry
    paths: list[str]
    skipped: dict[str, str]

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "EncodedTwoViewBatch":
        """Move the geometries to ``device``; the images stay on the host, where the decoder reads them."""
        return self._replace(
            geom1=self.geom1.to(device, non_blocking=non_blocking), geom2=self.geom2.to(device, non_blocking=non_blocking)
        )


def _merged(skipped: Sequence[dict[str, str]]) -> dict[str, str]:
    return {path: reason for paths in skipped for path, reason in paths.items()}


def collate_two_views(items: Sequence[TwoViewItem | EncodedTwoViewItem]) -> TwoViewBatch | EncodedTwoViewBatch:
    """Stack :class:`TwoViewDataset` items into a :class:`TwoViewBatch` (views stay separate, never concatenated),
    or :class:`EncodedTwoViewItem` items into an :class:`EncodedTwoViewBatch` (images listed, geometries stacked)."""
    if isinstance(items[0], EncodedTwoViewItem):
        images, geom1, geom2, paths, skipped = zip(*items)
        return EncodedTwoViewBatch(
            list(images), default_collate(list(geom1)), default_collate(list(geom2)), list(paths), _merged(skipped)
        )
    view1, view2, geom1, geom2, skipped = zip(*items)
    return TwoViewBatch(
        torch.stack(view1),
        torch.stack(view2),
        default_collate(list(geom1)),
        default_collate(list(geom2)),
        _merged(skipped),
    )


class TwoViewDataset(SeededDataset):
    """Applies a two-view transform to the images of a dataset, with randomness fixed per sample.

    This is where the library's one randomness rule for worker-side transforms is enforced
    (:mod:`scrl.transforms`): the transform takes no generator and draws from the global RNGs,
    and for each sample those are seeded from ``(seed, epoch, index)`` (:func:`~scrl.runtime.random_streams.mix_seed`):
    torch's CPU RNG, Python's ``random`` and NumPy's, the last two for third-party transforms.
    They are restored afterwards, so the caller's streams are left untouched (with
    ``workers=0`` the transform runs in the training process). A sample therefore looks the
    same whichever worker, process or resumed run produces it, and the number of workers does
    not change the training run. Keys are ``(epoch, index)`` tuples as yielded by
    :class:`~scrl.data.ResumableSampler`, or plain indices (epoch 0).

    Images come from the dataset by a duck-typed protocol. A dataset that replaces unreadable
    files (such as :class:`~scrl.data.ImageFolderDataset`) exposes
    ``load(index) -> (PIL image, {skipped path: reason})``, and the skipped files are reported
    in the item. Any other dataset is read as ``dataset[index]``: the item itself when it is an
    image, or its first element when it is a tuple (object-box datasets give
    ``(image, boxes, labels)``). A transform that decodes nothing (``reads_encoded = True``, as
    :class:`~scrl.transforms.TwoViewCrops`) reads through ``load_encoded(index)`` where the
    dataset has it, which returns JPEG files undecoded (:class:`~scrl.data.EncodedImage`).

    Args:
        dataset: an image dataset (see above).
        transform: ``image -> (view1, view2, geom1, geom2)``, e.g.
            ``scrl.TwoViewTransform.byol(size=224, photometric="device")``; or
            ``image -> (image tensor, geom1, geom2, path)``, :class:`~scrl.transforms.TwoViewCrops`.
        seed: base seed of the augmentations, >= 0.

    Each item is a :class:`TwoViewItem` ``(view1, view2, geom1, geom2, skipped)`` with ``skipped``
    a dict of unreadable paths to reasons, or with ``TwoViewCrops`` an :class:`EncodedTwoViewItem`;
    batch either with :func:`collate_two_views`. A view whose size differs from the size its
    geometry records is a ``ValueError`` here, in the worker, before any training.

    Example:
        >>> ds = TwoViewDataset(SyntheticScenes(512), TwoViewTransform.byol(size=96, output="uint8"), seed=0)
        >>> loader = DataLoader(ds, batch_size=32, sampler=ResumableSampler(ds, 1, 0), collate_fn=collate_two_views)
        >>> next(iter(loader)).view1.shape, next(iter(loader)).view1.dtype
        (torch.Size([32, 3, 96, 96]), torch.uint8)
    """

    def __init__(self, dataset: Dataset, transform: TwoViewFn, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        self.transform = transform

    def _image(self, index: int, encoded: bool) -> tuple[Any, dict[str, str]]:
        load = getattr(self.dataset, "load_encoded" if encoded else "load", None)
        if not callable(load):
            load = getattr(self.dataset, "load", None)
        if callable(load):
            image, skipped = load(index)
            return image, dict(skipped)
        item = self.dataset[index]
        return (item[0] if isinstance(item, tuple) else item), {}

    def __getitem__(self, key: int | tuple[int, int]) -> TwoViewItem | EncodedTwoViewItem:
        index, seed = self.item_seed(key)
        encoded = getattr(self.transform, "reads_encoded", False)
        image, skipped = self._image(index, encoded)
        # Every generator a transform might draw from, seeded per sample; the caller's streams
        # (the training process's, with workers=0) are left untouched.
        with seeded_global_rngs(seed):
            made = self.transform(image)
        if encoded:
            return EncodedTwoViewItem(*made, skipped)
        view1, view2, geom1, geom2 = made
        check_view_size(view1, geom1, "view1")
        check_view_size(view2, geom2, "view2")
        return TwoViewItem(view1, view2, geom1, geom2, skipped)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dataset={self.dataset!r}, transform={self.transform!r}, seed={self.seed})"
