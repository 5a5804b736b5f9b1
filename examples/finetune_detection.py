#!/usr/bin/env python
"""Fine-tune torchvision's Faster R-CNN with FPN on a pretrained trunk and report COCO box AP.

One GPU:   python examples/finetune_detection.py --weights scrl_r50.pth --data annotations/instances_train2017.json \\
               --val-data annotations/instances_val2017.json --iters 90000 --batch-size 16
8 GPUs:    torchrun --nproc_per_node=8 examples/finetune_detection.py ... --batch-size 2   (per process)
YOLO data: python examples/finetune_detection.py --weights scrl_r50.pth --data ../shared/data/coco128-train
Any trunk: python examples/finetune_detection.py --weights runs/cnx/checkpoint_last.pth --data ...   (timm:convnext_nano)
           python examples/finetune_detection.py --weights random --arch ultralytics:yolo11n.yaml --data ...

The trunk is any registered one (scrl.trunk.list_trunks(), 'timm:NAME', 'ultralytics:NAME.yaml',
your own): a training checkpoint records its name, --arch gives it otherwise. The FPN is built on
the trunk's stages at strides 4 to 32 (scrl.fpn.FPNBackbone).

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
import warnings
from typing import Any

from torch.utils.data import Dataset, Subset

from scrl.data import open_box_dataset, require_boxes_in
from scrl.data.open_boxes import add_reading_arguments, reading_options
from scrl.eval import build_detector, coco_box_ap, detection_trunk, split_by_image, train_detector
from scrl.eval.detection import load_pycocotools
from scrl.runtime import cleanup, init_distributed, save_checkpoint
from scrl.trunk import check_trunk_name


def trunk_name(name: str) -> str:
    """``--arch``: a name scrl.trunk.create_trunk builds, checked without building it."""
    try:
        check_trunk_name(name)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return name


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--weights", required=True, help="training checkpoint, exported torchvision trunk, or 'random'")
    add("--arch", type=trunk_name, default=None, metavar="ARCH",
        help="registered trunk name (resnet50, convnext_tiny, timm:convnext_nano, ultralytics:yolo11n.yaml, ...), for "
             "'random' (default resnet50) and for exported weights of another family than ResNet (a training "
             "checkpoint records its own)")
    add_reading_arguments(p)
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
    for name in ("iters", "batch_size", "min_size", "max_size", "log_every", "rois_per_image", "proposals",
                 "num_classes", "max_consecutive_unreadable"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.val_fraction < 1:
        p.error("--val-fraction must be in (0, 1)")
    return p, args


def open_data(args: argparse.Namespace) -> tuple[Dataset, Dataset, Dataset]:
    """``(--data, training images, validation images)``; refuses a side without boxes that would be used."""
    reading = reading_options(args)
    data = open_box_dataset(args.data, image_dir=args.image_dir, split=args.val_data is None, **reading)
    if args.val_data is not None:
        return data, data, open_box_dataset(args.val_data, image_dir=args.val_image_dir, **reading)
    train_idx, val_idx = split_by_image(len(data), args.val_fraction, args.seed)
    require_boxes_in(data, train_idx, "training")
    if args.eval == "coco":
        require_boxes_in(data, val_idx, "validation")
    val_data = Subset(data, val_idx)
    val_data.num_classes = data.num_classes
    return data, Subset(data, train_idx), val_data


def main(argv: list[str] | None = None) -> dict:
    p, args = parse_args(argv)
    if args.eval == "coco":
        try:
            load_pycocotools()  # fail before training, not after
        except ImportError as err:
            sys.exit(f"error: {err}; or pass --eval none")
    info = init_distributed(None if args.device == "auto" else args.device)
    main_process = info.rank == 0
    log = print if main_process else (lambda *a, **k: None)
    try:  # a dataset or weights that cannot be used: named, exit 2
        with warnings.catch_warnings():
            if not main_process:
                warnings.simplefilter("ignore")  # every process reads the same data: rank 0 reports it
            data, train_data, val_data = open_data(args)
        # One seed for every rank: identical initial weights (and batch order and flips in training).
        trunk, arch = detection_trunk(args.weights, args.arch, weights_only=not args.unsafe_load, seed=args.seed)
        model = build_detector(trunk, data.num_classes, min_size=args.min_size, max_size=args.max_size,
                               rois_per_image=args.rois_per_image, proposals=args.proposals, seed=args.seed)
    except ValueError as err:
        p.error(str(err))
    log(f"Faster R-CNN FPN on {arch} from {args.weights}: {len(train_data)} training images, {data.num_classes} classes")
    trained = train_detector(
        model, train_data, iters=args.iters, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters, workers=args.workers, device=info.device, amp=args.amp == "bf16", seed=args.seed,
        log_every=args.log_every, log=log,
    )
    model = trained.pop("model")
    result: dict[str, Any] = {"weights": args.weights, "arch": arch,
                              **{k: trained[k] for k in ("iters", "final_loss", "first_loss", "train_seconds")}}
    if main_process:
        save_checkpoint(model.state_dict(), os.path.join(args.output_dir, "detector_final.pth"))
        if args.eval == "coco":
            result.update(coco_box_ap(model, val_data, info.device, args.batch_size, args.workers))
            log(f"box AP {result['box_ap']:.2f}  AP50 {result['box_ap50']:.2f}  AP75 {result['box_ap75']:.2f} "
                f"on {len(val_data)} validation images")
        log(f"saved {os.path.join(args.output_dir, 'detector_final.pth')}")
        if args.json:
            print(json.dumps(result))
    cleanup()
    return result


if __name__ == "__main__":
    main()
