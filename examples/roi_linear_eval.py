#!/usr/bin/env python
"""RoI linear evaluation (SCRL paper, Sec. 4.2.5) of a trunk on the ground-truth boxes of a dataset.

COCO:       python examples/roi_linear_eval.py --checkpoint runs/pretrain/checkpoint_last.pth \\
                --data annotations/instances_val2017.json --image-dir val2017
YOLO:       python examples/roi_linear_eval.py --checkpoint backbone_torchvision.pth --data ../shared/data/coco128-train
Baselines:  --checkpoint random --arch resnet50                     (random initialisation)
            --checkpoint resnet50-11ad3fa6.pth                      (torchvision supervised weights, as a file)
            --checkpoint torchvision-supervised --arch resnet50     (the same from torchvision's download cache)

The trunk is frozen; images are resized to --image-size squared; BatchNorm statistics are
re-estimated on the training images; every box is pooled with RoIAlign on C5 (or --stages);
a linear layer is trained on the cached features (--seeds heads) and scored on held-out images,
beside a cosine k-NN classifier, the chance rate and the majority-class rate. Prints a table
and, with --json, one JSON object on the last line. See docs/transfer.md.
"""

from __future__ import annotations

import argparse
import json

import torch

from scrl.data import BoxDataError, open_box_dataset
from scrl.data.open_boxes import add_reading_arguments, reading_options
from scrl.eval import adapted_trunk, cross_view_retrieval, roi_linear_eval, split_by_image
from scrl.export import load_source, resnet_arch, source_arch, to_timm, to_torchvision
from scrl.trunk import TIMM_PREFIX, Trunk, check_trunk_name, create_trunk


def build_trunk(checkpoint: str, arch: str | None, weights_only: bool = True) -> tuple[Trunk, str]:
    """The trunk that ``--checkpoint`` names, and its architecture."""
    if checkpoint == "random":
        arch = arch or "resnet50"
        return create_trunk(arch), arch
    if checkpoint == "torchvision-supervised":
        arch = arch or "resnet50"
        check_trunk_name(arch)  # before the download, whose failures the message below explains
        try:
            return create_trunk(arch, weights="DEFAULT"), arch
        except Exception as err:  # no network, no cache: say what to do instead
            raise ValueError(
                f"cannot get torchvision's supervised {arch} weights ({err}); download them once and pass "
                "the .pth file as --checkpoint"
            ) from err
    source = load_source(checkpoint, weights_only=weights_only)
    recorded = source_arch(source)
    if arch is not None and recorded is not None and arch != recorded:
        raise ValueError(f"--arch {arch} given, but the checkpoint holds a {recorded}")
    found = arch or recorded
    if found is not None and found.startswith(TIMM_PREFIX):
        state = to_timm(source, arch=found)
    else:
        state = to_torchvision(source, arch=found)
        found = found or resnet_arch(state)
    trunk = create_trunk(found)
    trunk.load_backbone_state_dict(state)
    return trunk, found


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--checkpoint", required=True, help="training checkpoint, torchvision state dict, 'random' or 'torchvision-supervised'")
    add("--arch", default=None, metavar="ARCH",
        help="trunk name (scrl.trunk.list_trunks(), timm:NAME) for 'random', a torchvision one for 'torchvision-supervised' "
             "or a plain state dict (default resnet50; a training checkpoint records its own)")
    add_reading_arguments(p)
    add("--test-data", default=None, help="held-out dataset (default: split --data by image)")
    add("--test-image-dir", default=None)
    add("--test-fraction", type=float, default=0.5, help="share of images held out when splitting --data")
    add("--image-size", type=int, default=800, help="square side images are resized to (paper: 800)")
    add("--stages", default=None, help="comma-separated trunk stages to concatenate, e.g. layer3,layer4 (default: C5)")
    add("--hflip", action="store_true", help="add mirrored training images (the paper trains with flips)")
    add("--epochs", type=int, default=100, help="linear-head epochs over the cached features")
    add("--lr", type=float, default=0.1)
    add("--weight-decay", type=float, default=0.0)
    add("--seeds", type=int, default=3, help="linear heads trained with different seeds (mean and std reported)")
    add("--knn-k", type=int, default=20)
    add("--retrieval", action="store_true", help="also score cross-view RoI retrieval on the held-out images")
    add("--retrieval-view-size", type=int, default=224)
    add("--batch-size", type=int, default=16, help="images per trunk forward pass")
    add("--workers", type=int, default=2)
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    add("--amp", choices=["bf16", "off"], default="off", help="autocast the frozen trunk (GPU)")
    add("--channels-last", action="store_true")
    add("--seed", type=int, default=0, help="split seed")
    add("--unsafe-load", action="store_true", help="torch.load with weights_only=False (trusted files only)")
    add("--json", action="store_true", help="print the results as one JSON object on the last line")
    return p


def main(argv: list[str] | None = None) -> dict:
    p = parser()
    args = p.parse_args(argv)
    for name in ("num_classes", "max_consecutive_unreadable"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else torch.device(args.device)
    try:  # a checkpoint or a dataset that cannot be used: named, exit 2
        trunk, arch = build_trunk(args.checkpoint, args.arch, weights_only=not args.unsafe_load)
        reading = reading_options(args)
        data = open_box_dataset(args.data, image_dir=args.image_dir, split=args.test_data is None, **reading)
        test_data = None
        if args.test_data is not None:
            test_data = open_box_dataset(args.test_data, image_dir=args.test_image_dir, **reading)
    except ValueError as err:
        p.error(str(err))
    trunk.to(device)
    run = dict(
        device=device,
        autocast_dtype=torch.bfloat16 if args.amp == "bf16" else None,
        channels_last=args.channels_last,
    )
    try:
        result = roi_linear_eval(
            trunk,
            data,
            test_data,
            test_fraction=args.test_fraction,
            split_seed=args.seed,
            image_size=args.image_size,
            stages=args.stages.split(",") if args.stages else None,
            hflip=args.hflip,
            batch_size=args.batch_size,
            num_workers=args.workers,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seeds=tuple(range(args.seeds)),
            knn_k=args.knn_k,
            **run,
        )
    except BoxDataError as err:  # e.g. a split with no boxes on one side
        p.error(str(err))
    out = {"checkpoint": args.checkpoint, "arch": arch, "data": args.data, "image_size": args.image_size, **result.as_dict()}
    rows = [
        ("RoI linear top-1", f"{result.linear_top1:.2f} +- {result.linear_top1_std:.2f} % ({len(result.linear_runs)} heads)"),
        (f"RoI k-NN top-1 (k={args.knn_k})", f"{result.knn_top1:.2f} %"),
        ("chance / majority class", f"{result.chance:.2f} % / {result.majority:.2f} %"),
        ("boxes train / test", f"{result.train_boxes} / {result.test_boxes}"),
        ("images train / test", f"{result.train_images} / {result.test_images}"),
    ]
    if args.retrieval:
        held_out = test_data if test_data is not None else data
        if test_data is None:
            train_idx, test_idx = split_by_image(len(data), args.test_fraction, args.seed)
        else:
            train_idx, test_idx = list(range(len(data))), None
        frozen = adapted_trunk(trunk, data, train_idx, image_size=args.image_size, batch_size=max(2, args.batch_size), **run)
        retrieval = cross_view_retrieval(frozen, held_out, test_idx, view_size=args.retrieval_view_size, seed=args.seed, **run)
        out.update(retrieval_top1=retrieval.top1, retrieval_chance=retrieval.chance, retrieval_queries=retrieval.queries)
        rows.append(("cross-view retrieval top-1", f"{retrieval.top1:.2f} % (chance {retrieval.chance:.2f} %)"))
    print(f"RoI linear evaluation: {arch} from {args.checkpoint} on {args.data} at {args.image_size}px ({result.seconds:.0f} s)")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
