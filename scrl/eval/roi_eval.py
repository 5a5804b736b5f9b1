"""RoI linear evaluation (SCRL paper, Sec. 4.2.5) and its cheap online form, the RoI probe.

Protocol: frozen trunk; images resized to a square; every ground-truth box pooled with
RoIAlign on C5 (or several stages, concatenated); BatchNorm statistics re-estimated on the
evaluation images; one linear layer trained with SGD and a cosine schedule on the cached
features; top-1 accuracy on the boxes of held-out images (split by image, never by box).
A cosine k-NN classifier on the same features is reported beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import require_boxes_in
from .bn_adaptation import adapted_trunk
from .frozen import frozen_copy
from .knn import knn_predict
from .linear_head import top1_accuracy, train_linear_head
from .roi_features import RoIFeatures, extract_roi_features
from .trunk_forward import module_device

__all__ = ["RoIEvalResult", "roi_linear_eval", "roi_probe", "split_by_image"]


def split_by_image(num_images: int, test_fraction: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split image indices ``0 .. num_images - 1`` into (train, test) at random, by image.

    Boxes of one image never end up on both sides, so a classifier cannot score by
    recognising the image. Both sides get at least one image.

    Args:
        num_images: >= 2.
        test_fraction: share of images held out, in ``(0, 1)``.
        seed: seeds the permutation.

    Returns:
        ``(train_indices, test_indices)``, each sorted.

    Example:
        >>> split_by_image(10, 0.3)
        ([0, 2, 3, 5, 6, 8, 9], [1, 4, 7])
    """
    if not isinstance(num_images, int) or num_images < 2:
        raise ValueError(f"num_images must be an integer >= 2 to split, got {num_images!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).tolist()
    num_test = min(num_images - 1, max(1, round(test_fraction * num_images)))
    return sorted(order[num_test:]), sorted(order[:num_test])


@dataclass
class RoIEvalResult:
    """Outcome of :func:`roi_linear_eval`; accuracies in percent.

    Attributes:
        linear_top1: mean top-1 of the linear head over ``seeds``.
        linear_top1_std: their standard deviation (0 for one seed).
        linear_runs: top-1 of each seed.
        knn_top1: cosine k-NN top-1.
        chance: ``100 / num_classes``.
        majority: top-1 of always answering the most frequent training class.
        num_classes: classes of the dataset.
        train_boxes, test_boxes, train_images, test_images: sizes of the two sides.
        seconds: wall time of the whole evaluation.
    """

    linear_top1: float
    linear_top1_std: float
    linear_runs: list[float]
    knn_top1: float
    chance: float
    majority: float
    num_classes: int
    train_boxes: int
    test_boxes: int
    train_images: int
    test_images: int
    seconds: float

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """Plain ``dict`` for JSON."""
        return asdict(self)


def _num_classes(dataset: Dataset, *features: RoIFeatures) -> int:
    declared = getattr(dataset, "num_classes", None)
    if isinstance(declared, int) and declared >= 1:
        return declared
    return 1 + max(int(f.labels.max()) for f in features if f.labels.numel())


def roi_linear_eval(
    trunk: nn.Module,
    dataset: Dataset,
    test_dataset: Dataset | None = None,
    *,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    image_size: int = 800,
    stages: Sequence[str] | None = None,
    adapt_bn: bool = True,
    hflip: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    head_batch_size: int = 256,
    seeds: Sequence[int] = (0, 1, 2),
    knn_k: int = 20,
) -> RoIEvalResult:
    """RoI linear evaluation of ``trunk`` on the ground-truth boxes of ``dataset``.

    Args:
        trunk: a ``Trunk`` (any module returning a feature map; ``.stride`` read when present).
            Never modified: a frozen copy is evaluated.
        dataset: items ``(PIL image, boxes [M, 4] xyxy source pixels, labels [M])``, e.g.
            :class:`~scrl.data.CocoBoxes`, :class:`~scrl.data.YoloBoxes`,
            :class:`~scrl.data.SyntheticScenes`.
        test_dataset: held-out images; when ``None``, ``dataset`` is split by image.
        test_fraction: share of images held out when splitting, in ``(0, 1)``.
        split_seed: seeds the split.
        image_size: square side images are resized to (paper: 800; smaller on CPUs).
        stages: modules of ``trunk.body`` to pool and concatenate (``None``: C5 only).
        adapt_bn: re-estimate BatchNorm statistics on the training images (paper protocol).
        hflip: add mirrored training images as a second set of training features (the paper
            trains with random flips; cached features make that a fixed doubling).
        batch_size: images per trunk forward pass.
        num_workers: DataLoader workers for decoding and resizing.
        device: where to run; the trunk's device when ``None``.
        autocast_dtype: e.g. ``torch.bfloat16`` on accelerators.
        channels_last: feed channels-last inputs.
        epochs: linear-head epochs over the cached features.
        lr: linear-head peak learning rate.
        weight_decay: linear-head L2 penalty.
        head_batch_size: features per linear-head step.
        seeds: one linear head per seed (initialisation and batch order); mean and std reported.
        knn_k: neighbours of the k-NN classifier.

    Returns:
        :class:`RoIEvalResult`.

    Raises:
        BoxDataError: the training or the held-out images hold no box (:func:`scrl.data.require_boxes_in`).

    Example:
        >>> trunk = resnet_trunk("resnet50")
        >>> trunk.body.load_state_dict(to_torchvision("checkpoint_last.pth"))   # doctest: +SKIP
        >>> result = roi_linear_eval(trunk, CocoBoxes("instances_val2017.json", "val2017"))
        >>> print(f"{result.linear_top1:.1f} +- {result.linear_top1_std:.1f}")  # doctest: +SKIP
    """
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    start = time.perf_counter()
    device = module_device(trunk, device)
    if test_dataset is None:
        train_idx, test_idx = split_by_image(len(dataset), test_fraction, split_seed)
        test_dataset = dataset
    else:
        train_idx, test_idx = list(range(len(dataset))), list(range(len(test_dataset)))
    require_boxes_in(dataset, train_idx, "training")  # before the trunk runs, not after
    require_boxes_in(test_dataset, test_idx, "held-out")
    run = dict(device=device, autocast_dtype=autocast_dtype, channels_last=channels_last)
    loading = dict(image_size=image_size, batch_size=batch_size, num_workers=num_workers)
    if adapt_bn:
        frozen = adapted_trunk(trunk, dataset, train_idx, **loading, **run)
    else:
        frozen = frozen_copy(trunk, device)
    extract = dict(stages=stages, **loading, **run)
    train = extract_roi_features(frozen, dataset, train_idx, **extract)
    if hflip:
        flipped = extract_roi_features(frozen, dataset, train_idx, hflip=True, **extract)
        train = RoIFeatures(*(torch.cat(pair) for pair in zip(train, flipped)))
    test = extract_roi_features(frozen, test_dataset, test_idx, **extract)
    num_classes = _num_classes(dataset, train, test)

    train_x, test_x = train.features.to(device), test.features.to(device)
    runs = []
    for seed in seeds:
        head = train_linear_head(
            train_x,
            train.labels,
            num_classes,
            epochs=epochs,
            batch_size=head_batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_epochs=min(5, epochs),
            generator=torch.Generator().manual_seed(int(seed)),
        )
        runs.append(top1_accuracy(head(test_x), test.labels))
    knn = knn_predict(train_x, train.labels, test_x, num_classes, k=knn_k)
    majority_class = int(torch.bincount(train.labels, minlength=num_classes).argmax())
    runs_t = torch.tensor(runs, dtype=torch.float64)
    return RoIEvalResult(
        linear_top1=float(runs_t.mean()),
        linear_top1_std=float(runs_t.std(unbiased=False)),
        linear_runs=runs,
        knn_top1=top1_accuracy(knn, test.labels),
        chance=100.0 / num_classes,
        majority=100.0 * float((test.labels == majority_class).double().mean()),
        num_classes=num_classes,
        train_boxes=int(train.labels.numel() // (2 if hflip else 1)),
        test_boxes=int(test.labels.numel()),
        train_images=len(train_idx),
        test_images=len(test_idx),
        seconds=time.perf_counter() - start,
    )


def roi_probe(
    trunk: nn.Module, dataset: Dataset, *, image_size: int = 224, epochs: int = 50, seed: int = 0, **options: Any
) -> dict[str, float]:
    """The online RoI probe: a quick RoI linear + k-NN evaluation to log during pretraining.

    Paper appendix C: RoI linear accuracy tracks downstream detection AP far better than
    ImageNet linear accuracy, so watching it while pretraining shows transfer quality early.
    The trunk is copied (never modified, mode untouched); call it on one process (rank 0)
    with the unwrapped online trunk, e.g. ``roi_probe(model.trunk, probe_data)`` every N
    epochs, and log the returned numbers. Same split and seeds every call, so the values
    of one run are comparable over time. It is :func:`roi_linear_eval` with one linear head,
    smaller images and fewer epochs.

    Args:
        trunk: the online trunk (DDP / compile wrappers are removed).
        dataset: a small box dataset (a few hundred images).
        image_size: square side in pixels.
        epochs: linear-head epochs.
        seed: split and head seed.
        **options: :func:`roi_linear_eval`'s other keywords under its defaults, e.g.
            ``test_fraction`` (0.5), ``batch_size`` (16 images per forward pass), ``device``
            (the trunk's), ``autocast_dtype`` (e.g. ``torch.bfloat16``), ``channels_last``.

    Returns:
        ``{"roi_linear_top1", "roi_knn_top1", "roi_chance", "roi_majority", "roi_train_boxes",
        "roi_test_boxes", "roi_probe_seconds"}`` (accuracies in percent).

    Example:
        >>> probe_data = SyntheticScenes(256, seed=1000)
        >>> metrics = roi_probe(model.trunk, probe_data, image_size=160)
        >>> metrics["roi_linear_top1"]                # doctest: +SKIP
        23.8
    """
    result = roi_linear_eval(trunk, dataset, image_size=image_size, epochs=epochs, split_seed=seed, seeds=(seed,), **options)
    return {
        "roi_linear_top1": result.linear_top1,
        "roi_knn_top1": result.knn_top1,
        "roi_chance": result.chance,
        "roi_majority": result.majority,
        "roi_train_boxes": float(result.train_boxes),
        "roi_test_boxes": float(result.test_boxes),
        "roi_probe_seconds": result.seconds,
    }
