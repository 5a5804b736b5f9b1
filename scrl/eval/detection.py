"""Detection transfer: Faster R-CNN with an FPN on a pretrained trunk, fine-tuned and scored by COCO box AP.

The pieces of the paper's detection protocol (Sec. 4.2) for torchvision's detectors: box datasets
as detection inputs (:class:`DetectionData`), the detector on any registered trunk, torchvision's,
timm's, a YOLO backbone or your own (:func:`detection_trunk`, :func:`build_detector`; a
torchvision classifier from :func:`detection_classifier` too), Detectron2's step schedule
(:func:`step_lr`) and training loop (:func:`train_detector`), and COCO box AP with pycocotools
(:func:`coco_box_ap`). pycocotools is optional (``pip install "scrl[detection]"``) and imported
only when AP is computed.

Randomness comes from a ``seed`` argument alone: flips from a generator seeded per image and
epoch, the batch order from :class:`~scrl.data.ResumableSampler`'s, and what draws from the
global streams without taking a generator (initial weights, the detector's sampling of anchors
and proposals) inside :func:`~scrl.runtime.seeded_global_rngs`. The same seed gives the same
detector, and the caller's global random streams are left as they were.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torchvision
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import FasterRCNN

from ..data import ResumableSampler, hflip_with_boxes
from ..data.seeding import SeededDataset
from ..runtime.random_streams import mix_seed, seeded_global_rngs
from ..export import Source, load_source, resnet_arch, source_arch, to_torchvision, trunk_weights
from ..fpn import FPNBackbone
from ..runtime.distributed import get_rank, get_world_size, wrap_ddp
from ..trunk import Trunk, check_trunk_name, create_trunk, supported_archs

__all__ = [
    "DetectionData", "PYCOCOTOOLS_HINT", "build_detector", "coco_box_ap", "detection_classifier", "detection_collate",
    "detection_trunk", "load_pycocotools", "step_lr", "train_detector",
]

PYCOCOTOOLS_HINT = 'COCO box AP needs pycocotools: pip install "scrl[detection]" (or pycocotools)'

# What each seed derived from a caller's seed is for (mix_seed(seed, stream, ...)).
_FLIPS, _CLASSIFIER, _HEADS, _TRAINING = 0, 1, 2, 3


def load_pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)`` from pycocotools.

    Raises:
        ImportError: pycocotools is not installed; the message says how to install it.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(PYCOCOTOOLS_HINT) from err
    return COCO, COCOeval


class DetectionData(SeededDataset):
    """Box dataset items as torchvision detection inputs: ``(image [3, H, W] in [0, 1], target)``.

    With ``hflip`` an image and its boxes are mirrored with probability 0.5, drawn from a
    generator seeded with ``(seed, epoch, index)``: an item is the same in any worker and any
    run, and no global random stream is used. Labels shift by one: torchvision's detectors
    reserve class 0 for the background.

    Args:
        dataset: items ``(PIL image, boxes [M, 4] xyxy pixels, labels [M])``
            (:func:`scrl.data.open_box_dataset`).
        hflip: random horizontal flips (training).
        seed: seeds the flips, >= 0.

    Items are looked up by index, or by the ``(epoch, index)`` keys of
    :class:`~scrl.data.ResumableSampler` (a plain index is epoch 0).
    """

    def __init__(self, dataset: Dataset, hflip: bool, seed: int = 0) -> None:
        super().__init__(dataset, seed)
        self.hflip = hflip

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        index, seed = self.item_seed(key, _FLIPS)
        image, boxes, labels = self.dataset[index]
        pixels = TF.to_tensor(image)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.hflip and torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:
            pixels, boxes = hflip_with_boxes(pixels, boxes)
        return pixels, {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64) + 1}


def detection_collate(items: list) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """A batch as torchvision's detectors take it: a list of images and a list of targets."""
    return [item[0] for item in items], [item[1] for item in items]


def detection_classifier(
    weights: Source | str = "random", arch: str | None = None, *, weights_only: bool = True, seed: int = 0
) -> tuple[nn.Module, str]:
    """The torchvision classifier a detector's trunk is built from, with pretrained trunk weights.

    BatchNorm stays trainable (torchvision's detection models default to ``FrozenBatchNorm2d``;
    the paper fine-tunes with it trained). The weights not loaded (all of them for
    ``"random"``) are initialised from ``seed``, the same on every process.

    Args:
        weights: ``"random"``; or an exported torchvision trunk, a training checkpoint (path or
            dict), an SCRL/BYOL model or a :class:`~scrl.Trunk` (anything
            :func:`scrl.export.to_torchvision` reads).
        arch: torchvision builder name of :func:`scrl.trunk.supported_archs` (``"convnext_tiny"``);
            default: the one ``weights`` records, else the ResNet its layout implies
            (``resnet50`` for ``"random"``).
        weights_only: load a path with PyTorch's restricted unpickler.
        seed: seeds the initial weights, >= 0.

    Returns:
        ``(model, arch)``: the classifier (its classifier head untrained) and its builder name.

    Raises:
        ValueError: ``arch`` disagrees with the name ``weights`` records, is no torchvision name
            (:func:`detection_trunk` builds the others), or the weights do not fit.
    """
    state = None
    if _is_random(weights):
        arch = arch or "resnet50"
        if arch not in supported_archs():
            raise ValueError(f"{arch!r} is no torchvision classifier (scrl.trunk.supported_archs()); "
                             "detection_trunk builds any trunk")
    else:
        source, arch = _source_and_arch(weights, arch, weights_only)
        state = to_torchvision(source, arch=arch)  # refuses a name that is no torchvision classifier
        arch = arch or resnet_arch(state)
    with seeded_global_rngs(mix_seed(seed, _CLASSIFIER)):  # torchvision initialises from the global stream
        model = torchvision.models.get_model(arch, weights=None)
    if state is not None:
        model.load_state_dict(state, strict=False)  # to_torchvision checked that only the classifier is missing
    return model, arch


def detection_trunk(
    weights: Source | str = "random", arch: str | None = None, *, weights_only: bool = True, seed: int = 0
) -> tuple[Trunk, str]:
    """The trunk of a detector, of any registered trunk name, with pretrained weights.

    The trunk is :func:`scrl.trunk.create_trunk` of its name, its weights initialised from
    ``seed`` (the same on every process, and for a torchvision name the same as
    :func:`detection_classifier`'s), then the pretrained ones loaded strictly. BatchNorm stays
    trainable. :func:`build_detector` puts the detector on it.

    Args:
        weights: ``"random"``; or a training checkpoint (path or dict; it records its trunk's
            name), an SCRL/BYOL model or a :class:`~scrl.trunk.Trunk` (anything
            :func:`scrl.export.trunk_weights` reads), or an exported torchvision trunk.
        arch: a registered trunk name (``"resnet50"``, ``"timm:convnext_nano"``,
            ``"ultralytics:yolo11n.yaml"``, your own); default: the one ``weights`` records,
            else the torchvision ResNet its layout implies (``resnet50`` for ``"random"``).
        weights_only: load a path with PyTorch's restricted unpickler.
        seed: seeds the initial weights, >= 0.

    Returns:
        ``(trunk, arch)``: the trunk and its registered name.

    Raises:
        ValueError: ``arch`` is not registered or disagrees with the name ``weights`` records, no
            name is known for weights of another layout than a torchvision ResNet's, or the
            weights do not fit the trunk (the message names the keys).

    Example:
        >>> trunk, arch = detection_trunk("runs/convnext/checkpoint_last.pth")  # doctest: +SKIP
        >>> detector = build_detector(trunk, num_classes=80)                    # doctest: +SKIP
    """
    state = None
    if _is_random(weights):
        arch = arch or "resnet50"
    else:
        source, arch = _source_and_arch(weights, arch, weights_only)
        state = trunk_weights(source)
        arch = arch or _resnet_arch(state)
    check_trunk_name(arch)
    with seeded_global_rngs(mix_seed(seed, _CLASSIFIER)):  # the trunks initialise from the global stream
        trunk = create_trunk(arch)
    if state is not None:
        _load_trunk_weights(trunk, state)
    return trunk, arch


def _is_random(weights: Source | str) -> bool:
    return isinstance(weights, str) and weights == "random"


def _source_and_arch(weights: Source, arch: str | None, weights_only: bool) -> tuple[Source, str | None]:
    """``weights`` read once, and ``arch`` or else the name it records; refuses the two disagreeing."""
    source = load_source(weights, weights_only=weights_only)
    recorded = source_arch(source)
    if arch is not None and recorded is not None and arch != recorded:
        raise ValueError(f"arch {arch} given, but {weights if isinstance(weights, str) else 'the source'} holds a {recorded}")
    return source, arch or recorded


def _resnet_arch(state: dict[str, Tensor]) -> str:
    """The torchvision ResNet of weights that record no name; the refusal says to name the trunk."""
    try:
        return resnet_arch(state)
    except ValueError as err:
        raise ValueError(f"{err}; for another trunk pass its name as arch= (--arch timm:convnext_nano)") from err


def _load_trunk_weights(trunk: Trunk, state: dict[str, Tensor]) -> None:
    """Load ``state`` strictly, under the keys of the trunk's body or of its ``backbone_state_dict()``.

    A checkpoint holds the body's keys (``trunk.body.*``), a model or trunk its backbone's; they
    differ where the body wraps the model (timm's ``model.*``).
    """
    body_keys = state.keys() == trunk.body.state_dict().keys()
    load = trunk.body.load_state_dict if body_keys else trunk.load_backbone_state_dict
    try:
        load(state)
    except RuntimeError as err:
        raise ValueError(f"the trunk weights do not fit {trunk.arch}: {err}") from err


def build_detector(
    model: Trunk | nn.Module,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    rois_per_image: int = 512,
    proposals: int = 1000,
    score_threshold: float = 0.05,
    seed: int = 0,
) -> FasterRCNN:
    """Faster R-CNN with an FPN (:class:`~scrl.fpn.FPNBackbone`) on the stages of a trunk.

    The FPN, RPN and box heads are initialised from ``seed``, the same on every process.

    Args:
        model: a :class:`~scrl.trunk.Trunk` of any registered trunk (:func:`detection_trunk`), or
            a torchvision classifier of a supported family (:func:`detection_classifier`); its
            modules are the detector's.
        num_classes: object classes, >= 1 (the background class is added).
        min_size: shorter image side after resizing, in pixels (paper: 800).
        max_size: longer side at most, in pixels.
        rois_per_image: RoIs sampled per image for the box head (Detectron2: 512).
        proposals: RPN proposals kept per image after NMS, in training and test (Detectron2: 1000).
        score_threshold: detections scoring below it are dropped at test time, in ``[0, 1)``
            (torchvision's and Detectron2's 0.05). AP ranks detections by score, so a lower
            threshold only adds recall; it keeps a briefly trained detector, whose scores are still
            near ``1 / (num_classes + 1)``, from reporting no detection at all.
        seed: seeds the heads' initial weights, >= 0.

    Raises:
        ValueError: a size or count below 1, or a trunk with no stage at strides 4 to 32.
    """
    for name, value in (("num_classes", num_classes), ("min_size", min_size), ("max_size", max_size),
                        ("rois_per_image", rois_per_image), ("proposals", proposals)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0 <= score_threshold < 1:
        raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold!r}")
    with seeded_global_rngs(mix_seed(seed, _HEADS)):  # torchvision initialises from the global stream
        return FasterRCNN(
            FPNBackbone(model), num_classes=num_classes + 1, min_size=min_size, max_size=max_size,
            box_batch_size_per_image=rois_per_image, box_score_thresh=score_threshold,
            rpn_post_nms_top_n_train=proposals, rpn_post_nms_top_n_test=proposals,
        )


def step_lr(iteration: int, iters: int, warmup: int) -> float:
    """Detectron2's multiplier: linear warm-up from 0.001, x0.1 at 2/3 and 8/9 of the run."""
    warm = 1.0 if iteration >= warmup else 0.001 + (1 - 0.001) * iteration / warmup
    return warm * 0.1 ** sum(iteration >= m for m in (round(iters * 2 / 3), round(iters * 8 / 9)))


def train_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    iters: int,
    batch_size: int = 2,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    warmup_iters: int | None = None,
    workers: int = 2,
    device: torch.device | str = "cpu",
    amp: bool = False,
    seed: int = 0,
    log_every: int = 20,
    log: Callable[..., None] = print,
) -> dict[str, Any]:
    """Fine-tune all layers of a detector on ``dataset`` with Detectron2's schedule.

    SGD with momentum 0.9, linear warm-up, learning rate x0.1 at 2/3 and 8/9 of ``iters``
    (:func:`step_lr`), random horizontal flips. Under a process group (``torchrun``) BatchNorm
    becomes SyncBatchNorm, the model is wrapped in DDP and each process reads its shard. Batch
    order, flips and the detector's own sampling of anchors and proposals follow ``seed``
    alone (give every process the same): two calls with the same seed and model train the
    same detector, and the caller's global random streams are left as they were.

    Args:
        model: a torchvision detector (:func:`build_detector`), trained in place.
        dataset: box dataset items ``(PIL image, boxes, labels)``.
        iters: optimiser steps, >= 1 (the 1x schedule: 90000 at global batch 16).
        batch_size: images per process and step, >= 1.
        lr: peak learning rate; default ``0.02 x global batch / 16``.
        weight_decay: L2 penalty.
        warmup_iters: linear warm-up steps; default ``min(1000, iters / 10)``.
        workers: DataLoader workers.
        device: this process's device.
        amp: bfloat16 autocast.
        seed: seeds the batch order, the flips and the detector's sampling, >= 0.
        log_every: log the loss every N steps, >= 1.
        log: where the progress lines go (``print``-like).

    Returns:
        ``{"model", "iters", "lr", "first_loss", "final_loss", "train_seconds"}``; ``model`` is
        the detector (SyncBatchNorm when converted), unwrapped.

    Raises:
        ValueError: ``iters``, ``batch_size`` or ``log_every`` below 1, or an empty dataset.
        FloatingPointError: the loss is not finite.
    """
    for name, value in (("iters", iters), ("batch_size", batch_size), ("log_every", log_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if len(dataset) == 0:
        raise ValueError("the detection training set holds no images")
    device = torch.device(device)
    world_size = get_world_size()
    if world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trunk and FPN
    model.to(device)
    train_model = wrap_ddp(model, device)
    global_batch = batch_size * world_size
    lr = lr if lr is not None else 0.02 * global_batch / 16
    warmup = warmup_iters if warmup_iters is not None else min(1000, max(1, iters // 10))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: step_lr(it, iters, warmup))
    train_set = DetectionData(dataset, hflip=True, seed=seed)
    rank = get_rank()
    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    loader = DataLoader(
        train_set, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=detection_collate,
        drop_last=len(train_set) >= global_batch, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # the workers' base seed: not from the global stream
    )
    log(f"{world_size} process(es) x {batch_size}, lr {lr:.4g}, {iters} iterations, device {device}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    iteration, epoch, start, losses = 0, 0, time.perf_counter(), []
    train_model.train()
    with seeded_global_rngs(mix_seed(seed, _TRAINING, rank), device):  # the RPN's and box head's sampling
        while iteration < iters:
            sampler.set_epoch(epoch)
            for pixels, targets in loader:
                pixels = [p.to(device, non_blocking=True) for p in pixels]
                targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
                with autocast:
                    loss_parts = train_model(pixels, targets)
                loss = sum(loss_parts.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite detection loss at iteration {iteration}: {loss_parts}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                iteration += 1
                losses.append(float(loss.detach()))
                if iteration % log_every == 0 or iteration == iters:
                    rate = iteration * global_batch / (time.perf_counter() - start)
                    log(f"iter {iteration}/{iters} loss {losses[-1]:.4f} lr {optimizer.param_groups[0]['lr']:.4g} {rate:.1f} img/s", flush=True)
                if iteration == iters:
                    break
            epoch += 1
    return {"model": model, "iters": iteration, "lr": lr, "first_loss": losses[0], "final_loss": losses[-1],
            "train_seconds": time.perf_counter() - start}


@torch.no_grad()
def coco_box_ap(model: nn.Module, data: Dataset, device: torch.device | str, batch_size: int = 2, workers: int = 0) -> dict[str, float]:
    """COCO box AP / AP50 / AP75 (percent) of a detector on the boxes of ``data`` (one process).

    Args:
        model: a torchvision detector; put in eval mode.
        data: box dataset items ``(PIL image, boxes, labels)``; its ``num_classes`` attribute,
            when present, sets the categories.
        device: where the detector runs.
        batch_size: images per forward pass.
        workers: DataLoader workers.

    Returns:
        ``{"box_ap", "box_ap50", "box_ap75", "detections"}`` (AP in percent, 0 without
        detections or ground-truth boxes).

    Raises:
        ImportError: pycocotools is not installed (:data:`PYCOCOTOOLS_HINT`).
    """
    COCO, COCOeval = load_pycocotools()
    images, annotations, detections = [], [], []
    model.eval()
    loader = DataLoader(
        DetectionData(data, hflip=False), batch_size=batch_size, num_workers=workers, collate_fn=detection_collate,
        generator=torch.Generator(),  # starting the workers draws a base seed: not from the caller's stream
    )
    image_id = 0
    for pixels, targets in loader:
        outputs = model([p.to(device) for p in pixels])
        for p, target, output in zip(pixels, targets, outputs):
            image_id += 1
            images.append({"id": image_id, "height": p.shape[1], "width": p.shape[2]})
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                     "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
                )
            for box, label, score in zip(output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist()):
                detections.append(
                    {"image_id": image_id, "category_id": label, "score": score,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
                )
    num_classes = getattr(data, "num_classes", 1 + max((a["category_id"] for a in annotations), default=0))
    truth = COCO()
    truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": c + 1} for c in range(num_classes)]}
    truth.createIndex()
    if not detections or not annotations:
        return {"box_ap": 0.0, "box_ap50": 0.0, "box_ap75": 0.0, "detections": len(detections)}
    evaluator = COCOeval(truth, truth.loadRes(detections), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ap, ap50, ap75 = (max(0.0, 100.0 * float(v)) for v in evaluator.stats[:3])  # -1 means "no such boxes"
    return {"box_ap": ap, "box_ap50": ap50, "box_ap75": ap75, "detections": len(detections)}
