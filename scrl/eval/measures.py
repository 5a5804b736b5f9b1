"""All box measures of one trunk on one image split: RoI linear, RoI k-NN and cross-view retrieval."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .bn_adaptation import adapted_trunk
from .retrieval import cross_view_retrieval
from .roi_eval import roi_linear_eval, split_by_image

__all__ = ["RoIMeasures", "roi_measures"]


@dataclass
class RoIMeasures:
    """Outcome of :func:`roi_measures`; accuracies in percent.

    Attributes:
        linear_runs: RoI linear top-1 of each linear head.
        knn_top1: cosine k-NN top-1.
        retrieval_top1, retrieval_chance: cross-view retrieval top-1 and its chance rate.
        chance: ``100 / num_classes``.
        majority: top-1 of always answering the most frequent training class.
        num_classes, train_images, test_images, test_boxes: sizes.
    """

    linear_runs: list[float]
    knn_top1: float
    retrieval_top1: float
    retrieval_chance: float
    chance: float
    majority: float
    num_classes: int
    train_images: int
    test_images: int
    test_boxes: int

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """Plain ``dict`` for JSON."""
        return asdict(self)


def roi_measures(
    trunk: nn.Module,
    dataset: Dataset,
    *,
    split_seed: int = 0,
    test_fraction: float = 0.5,
    image_size: int = 224,
    view_size: int = 224,
    head_epochs: int = 100,
    head_seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> RoIMeasures:
    """RoI linear (one head per seed), RoI k-NN and cross-view retrieval of ``trunk`` on one split.

    ``dataset`` is split by image (:func:`~scrl.eval.split_by_image` with ``split_seed``); the
    trunk is frozen and its BatchNorm statistics re-estimated once on the training images
    (:func:`~scrl.eval.adapted_trunk`); that copy gives the RoI features of both sides
    (:func:`~scrl.eval.roi_linear_eval`) and the retrieval score on the held-out images
    (:func:`~scrl.eval.cross_view_retrieval`, views and boxes seeded with ``split_seed``).

    Args:
        trunk: a ``Trunk`` (or any module returning a feature map); never modified.
        dataset: box dataset items ``(PIL image, boxes [M, 4], labels [M])``.
        split_seed: seeds the split and the retrieval views, >= 0.
        test_fraction: share of images held out, in ``(0, 1)``.
        image_size: square side of the RoI evaluation images, in pixels.
        view_size: side of the retrieval views, in pixels.
        head_epochs: linear-head epochs.
        head_seeds: one linear head per seed.
        batch_size: images per trunk forward pass.
        num_workers: DataLoader workers.
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16``.
        channels_last: feed channels-last inputs.

    Returns:
        :class:`RoIMeasures`.

    Example:
        >>> m = roi_measures(trunk, YoloBoxes("../shared/data/coco128-train"), image_size=256)  # doctest: +SKIP
        >>> sum(m.linear_runs) / len(m.linear_runs), m.knn_top1, m.majority                      # doctest: +SKIP
    """
    train_idx, test_idx = split_by_image(len(dataset), test_fraction, seed=split_seed)
    run = dict(device=device, autocast_dtype=autocast_dtype, channels_last=channels_last)
    loading = dict(image_size=image_size, batch_size=batch_size, num_workers=num_workers)
    frozen = adapted_trunk(trunk, dataset, train_idx, **loading, **run)
    result = roi_linear_eval(
        frozen, dataset, adapt_bn=False, test_fraction=test_fraction, split_seed=split_seed, epochs=head_epochs,
        seeds=tuple(head_seeds), **loading, **run,
    )
    retrieval = cross_view_retrieval(frozen, dataset, test_idx, view_size=view_size, batch_size=32, seed=split_seed, **run)
    return RoIMeasures(
        linear_runs=result.linear_runs, knn_top1=result.knn_top1, retrieval_top1=retrieval.top1,
        retrieval_chance=retrieval.chance, chance=result.chance, majority=result.majority, num_classes=result.num_classes,
        train_images=result.train_images, test_images=result.test_images, test_boxes=result.test_boxes,
    )
