#!/usr/bin/env python
"""Fine-tune torchvision's Faster R-CNN with FPN on a pretrained trunk and report COCO box AP.

One GPU:   python examples/finetune_detection.py --weights scrl_r50.pth --data annotations/instances_train2017.json \\
               --val-data annotations/instances_val2017.json --iters 90000 --batch-size 16
8 GPUs:    torchrun --nproc_per_node=8 examples/finetune_detection.py ... --batch-size 2   (per process)
YOLO data: python examples/finetune_detection.py --weights scrl_r50.pth --data ../shared/data/coco128-train

As in the paper (Sec. 4.2), all layers are trained and BatchNorm is trained too: SyncBatchNorm
across processes in the trunk and the FPN (plain BatchNorm in one process). The schedule is
Detectron2's: SGD, momentum 0.9, weight decay 1e-4, linear warm-up, learning rate x0.1 at 2/3
and 8/9 of --iters (the 1x schedule is 90k iterations at batch 16, lr 0.02). Box AP, AP50 and
AP75 come from pycocotools (pip install "scrl[detection]"); --eval none skips them.
Prints a summary and, with --json, one JSON object on the last line. See docs/transfer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import torchvision
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.models.detection import FasterRCNN

from scrl.data import hflip_with_boxes, open_box_dataset
from scrl.train.distributed import cleanup, init_distributed, wrap_ddp
from scrl.eval import split_by_image
from scrl.export import load_source, resnet_arch, source_arch, to_torchvision
from scrl.fpn import FPNBackbone
from scrl.trunk import supported_archs


def load_pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)``, or exit with the install hint."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        sys.exit('error: COCO box AP needs pycocotools: pip install "scrl[detection]" (or pycocotools); or pass --eval none')
    return COCO, COCOeval


class DetectionData(Dataset):
    """Box dataset items as torchvision detection inputs: ``(image [3, H, W] in [0, 1], target)``.

    With ``hflip`` an image and its boxes are mirrored with probability 0.5 (torch's global RNG,
    seeded per DataLoader worker). Labels shift by one: torchvision's detectors reserve class 0
    for the background.
    """

    def __init__(self, dataset: Dataset, hflip: bool) -> None:
        self.dataset = dataset
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        image, boxes, labels = self.dataset[index]
        pixels = TF.to_tensor(image)
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.hflip and torch.rand(()) < 0.5:
            pixels, boxes = hflip_with_boxes(pixels, boxes)
        return pixels, {"boxes": boxes, "labels": torch.as_tensor(labels, dtype=torch.int64) + 1}


def collate(items: list) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return [item[0] for item in items], [item[1] for item in items]


def build_detector(args: argparse.Namespace, num_classes: int) -> tuple[FasterRCNN, str]:
    """Faster R-CNN + FPN on a torchvision trunk of any supported family, from ``args.weights`` (or 'random')."""
    weights, arch = args.weights, args.arch
    state = None
    if weights == "random":
        arch = arch or "resnet50"
    else:
        source = load_source(weights, weights_only=not args.unsafe_load)
        recorded = source_arch(source)
        if arch is not None and recorded is not None and arch != recorded:
            raise ValueError(f"--arch {arch} given, but {weights} holds a {recorded}")
        state = to_torchvision(source, arch=arch or recorded)
        arch = arch or recorded or resnet_arch(state)
    # Trainable BatchNorm (torchvision's detection models default to FrozenBatchNorm2d).
    model = torchvision.models.get_model(arch, weights=None)
    if state is not None:
        model.load_state_dict(state, strict=False)  # to_torchvision checked that only the classifier is missing
    backbone = FPNBackbone(model)
    detector = FasterRCNN(
        backbone,
        num_classes=num_classes + 1,
        min_size=args.min_size,
        max_size=args.max_size,
        box_batch_size_per_image=args.rois_per_image,
        rpn_post_nms_top_n_train=args.proposals,
        rpn_post_nms_top_n_test=args.proposals,
    )
    return detector, arch


def step_lr(iteration: int, iters: int, warmup: int) -> float:
    """Detectron2's multiplier: linear warm-up from 0.001, x0.1 at 2/3 and 8/9 of the run."""
    warm = 1.0 if iteration >= warmup else 0.001 + (1 - 0.001) * iteration / warmup
    return warm * 0.1 ** sum(iteration >= m for m in (round(iters * 2 / 3), round(iters * 8 / 9)))


@torch.no_grad()
def coco_box_ap(model: nn.Module, data: Dataset, device: torch.device, batch_size: int, workers: int) -> dict[str, float]:
    """COCO box AP / AP50 / AP75 (percent) of ``model`` on ``data`` (rank 0 only)."""
    COCO, COCOeval = load_pycocotools()
    images, annotations, detections = [], [], []
    model.eval()
    loader = DataLoader(DetectionData(data, hflip=False), batch_size=batch_size, num_workers=workers, collate_fn=collate)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--weights", required=True, help="exported torchvision trunk, training checkpoint, or 'random'")
    add("--arch", choices=supported_archs(), default=None, metavar="ARCH",
        help="torchvision builder name of the trunk, for 'random' (default resnet50) and for exported weights of "
             "another family than ResNet (a training checkpoint records its own)")
    add("--data", required=True, help="training boxes: COCO .json, YOLO folder or synthetic[:N]")
    add("--format", choices=["coco", "yolo", "synthetic"], default=None)
    add("--image-dir", default=None, help="COCO image folder of --data")
    add("--val-data", default=None, help="validation boxes (default: hold out --val-fraction of --data's images)")
    add("--val-image-dir", default=None)
    add("--val-fraction", type=float, default=0.2)
    add("--iters", type=int, default=90000, help="optimiser steps (1x schedule: 90000 at batch 16)")
    add("--batch-size", type=int, default=2, help="images per process")
    add("--lr", type=float, default=None, help="peak learning rate (default 0.02 x global batch / 16)")
    add("--weight-decay", type=float, default=1e-4)
    add("--warmup-iters", type=int, default=None, help="default: min(1000, iters / 10)")
    add("--min-size", type=int, default=800, help="shorter image side after resizing (paper: 800)")
    add("--max-size", type=int, default=1333)
    add("--rois-per-image", type=int, default=512, help="sampled RoIs per image for the box head (Detectron2: 512)")
    add("--proposals", type=int, default=1000, help="RPN proposals kept per image after NMS (Detectron2: 1000)")
    add("--workers", type=int, default=2)
    add("--eval", choices=["coco", "none"], default="coco", help="COCO box AP with pycocotools, or none")
    add("--output-dir", default="runs/detection")
    add("--device", choices=["auto", "cuda", "cpu"], default="auto")
    add("--amp", choices=["bf16", "off"], default="off")
    add("--seed", type=int, default=0)
    add("--log-every", type=int, default=20)
    add("--unsafe-load", action="store_true", help="torch.load with weights_only=False (trusted files only)")
    add("--json", action="store_true", help="print the results as one JSON object on the last line")
    args = p.parse_args(argv)
    for name in ("iters", "batch_size", "min_size", "max_size", "log_every", "rois_per_image", "proposals"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.eval == "coco":
        load_pycocotools()  # fail before training, not after
    info = init_distributed(None if args.device == "auto" else args.device)
    main_process = info.rank == 0
    log = print if main_process else (lambda *a, **k: None)
    torch.manual_seed(args.seed + info.rank)
    try:
        data = open_box_dataset(args.data, format=args.format, image_dir=args.image_dir)
        if args.val_data is not None:
            train_data, val_data = data, open_box_dataset(args.val_data, format=args.format, image_dir=args.val_image_dir)
        else:
            train_idx, val_idx = split_by_image(len(data), args.val_fraction, args.seed)
            train_data, val_data = Subset(data, train_idx), Subset(data, val_idx)
            val_data.num_classes = data.num_classes
        torch.manual_seed(args.seed)  # identical initial weights on every rank
        model, arch = build_detector(args, data.num_classes)
    except ValueError as err:
        sys.exit(f"error: {err}")
    device = info.device
    distributed = info.world_size > 1
    if distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trunk and FPN
    model.to(device)
    train_model = wrap_ddp(model, device)

    global_batch = args.batch_size * info.world_size
    lr = args.lr if args.lr is not None else 0.02 * global_batch / 16
    warmup = args.warmup_iters if args.warmup_iters is not None else min(1000, max(1, args.iters // 10))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: step_lr(it, args.iters, warmup))
    train_set = DetectionData(train_data, hflip=True)
    sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed) if distributed else None
    loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, num_workers=args.workers,
        collate_fn=collate, drop_last=len(train_set) >= global_batch, pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    log(f"Faster R-CNN FPN on {arch} from {args.weights}: {len(train_set)} training images, {data.num_classes} classes, "
        f"{info.world_size} process(es) x {args.batch_size}, lr {lr:.4g}, {args.iters} iterations, device {device}")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    iteration, epoch, start, losses = 0, 0, time.perf_counter(), []
    train_model.train()
    while iteration < args.iters:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for pixels, targets in loader:
            pixels = [p.to(device, non_blocking=True) for p in pixels]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with amp:
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
            if iteration % args.log_every == 0 or iteration == args.iters:
                rate = iteration * global_batch / (time.perf_counter() - start)
                log(f"iter {iteration}/{args.iters} loss {losses[-1]:.4f} lr {optimizer.param_groups[0]['lr']:.4g} {rate:.1f} img/s", flush=True)
            if iteration == args.iters:
                break
        epoch += 1

    result: dict[str, Any] = {"weights": args.weights, "arch": arch, "iters": iteration, "final_loss": losses[-1],
                              "first_loss": losses[0], "train_seconds": time.perf_counter() - start}
    if main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.output_dir, "detector_final.pth"))
        if args.eval == "coco":
            result.update(coco_box_ap(model, val_data, device, args.batch_size, args.workers))
            log(f"box AP {result['box_ap']:.2f}  AP50 {result['box_ap50']:.2f}  AP75 {result['box_ap75']:.2f} "
                f"on {len(val_data)} validation images")
        log(f"saved {os.path.join(args.output_dir, 'detector_final.pth')}")
        if args.json:
            print(json.dumps(result))
    cleanup()
    return result


if __name__ == "__main__":
    main()
