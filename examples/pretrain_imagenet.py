#!/usr/bin/env python
"""Self-supervised pretraining with SCRL (or BYOL) on ImageNet, any image folder, or synthetic scenes.

One process:      python examples/pretrain_imagenet.py --data /data/imagenet/train --preset 1000ep
One node, 8 GPUs: torchrun --nproc_per_node=8 examples/pretrain_imagenet.py --data ... --preset 1000ep
Several nodes:    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_endpoint=HOST:29500 \\
                      examples/pretrain_imagenet.py --data ... --preset 1000ep
CPU smoke run:    python examples/pretrain_imagenet.py --epochs 1

The run writes to --output-dir: checkpoint_last.pth (resume with --resume auto, the default),
metrics.jsonl (one JSON object per log line), and at the end backbone_torchvision.pth. The run
itself is scrl.train.Pretrainer; this script only turns flags into a scrl.train.PretrainConfig.
See docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from scrl.train import PRESETS, PretrainConfig, Pretrainer


def parse_args(argv: list[str] | None = None) -> PretrainConfig:
    # Unset flags stay out of the namespace, so PretrainConfig holds the one set of defaults.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    add = p.add_argument
    add("--data", help="folder tree of images (e.g. ImageNet train/); default: built-in synthetic scenes")
    add("--method", choices=["scrl", "byol"], help="default: scrl")
    add("--arch", help="resnet18|resnet34|resnet50|resnet101 (default: resnet50 on GPU, resnet18 on CPU)")
    add("--preset", choices=sorted(PRESETS), help="paper hyper-parameters (default: 1000ep on GPU, 200ep on CPU)")
    add("--epochs", type=int, help="epochs of the schedule (default: from the preset; 10 on CPU)")
    add("--max-steps", type=int, help="stop after this many optimiser steps (the schedule still spans --epochs)")
    add("--batch-size", type=int, help="images per process (default: 256 on GPU, 32 on CPU)")
    add("--image-size", type=int, help="view side in pixels (default: 224 on GPU, 64 on CPU)")
    add("--num-boxes", type=int, help="box pairs per image K (SCRL; default: 10)")
    add("--roi-pooling", choices=["exact", "aligned", "unaligned"],
        help="where SCRL pools each box: at the trunk's cell centres (exact, the default), or as RoIAlign's "
             "aligned=True (Detectron2) / aligned=False (the authors' code) assume")
    add("--min-box-size", type=float, help="smallest box side in view pixels (SCRL; default: 32, one C5 cell, on GPU; 16 on CPU)")
    add("--projector-hidden", type=int, help="hidden width of projector and predictor (default: 4096)")
    add("--projection-dim", type=int, help="output width of projector and predictor (default: 256)")
    add("--base-lr", type=float, help="learning rate per 256 images (lr = base * global batch / 256)")
    add("--weight-decay", type=float)
    add("--tau-base", type=float, help="target weight tau at step 0 of the cosine schedule")
    add("--warmup-epochs", type=float, help="linear warm-up (default: 10, at most a tenth of --epochs)")
    add("--workers", type=int, help="data workers per process (default: CPU cores per process - 1, at most 10; 2 on CPU)")
    add("--synthetic-images", type=int, help="size of the synthetic dataset without --data")
    add("--output-dir", help="default: runs/pretrain")
    add("--resume", help="auto (latest checkpoint in --output-dir, if any; the default), a checkpoint path, or none")
    add("--seed", type=int, help="default: 0")
    add("--amp", choices=["bf16", "fp16", "off"], help="mixed precision (default: bf16 on GPU, off on CPU)")
    add("--channels-last", action="store_true", help="NHWC memory format (faster convolutions on tensor cores)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--augment-on-device", action="store_true",
        help="workers only decode, crop, resize and flip; colour jitter, grayscale, blur, solarize run batched on the device")
    add("--save-every", type=int, help="also save every N optimiser steps (0, the default: only at epoch ends, on signals, at the end)")
    add("--log-every", type=int, help="log every N optimiser steps (default: 10)")
    add("--roi-probe", metavar="DATA",
        help="box dataset for the online RoI probe (COCO .json, YOLO folder, or synthetic[:N]); off by default")
    add("--roi-probe-every", type=int, metavar="N", help="run the RoI probe every N epochs (and at the end; default: 1)")
    add("--roi-probe-size", type=int, help="image side for the RoI probe (default: 2x --image-size)")
    add("--device", choices=["auto", "cuda", "cpu"], help="default: auto")
    args = p.parse_args(argv)
    try:
        return PretrainConfig(**vars(args))
    except ValueError as err:  # the config names its fields; say it in flags
        fields = sorted((f.name for f in dataclasses.fields(PretrainConfig)), key=len, reverse=True)
        p.error(re.sub(r"(?<![\w-])(" + "|".join(fields) + r")\b", lambda m: "--" + m[1].replace("_", "-"), str(err)))


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) a pretraining run; returns its summary dict (also after a stop by signal)."""
    return Pretrainer(parse_args(argv)).run()


if __name__ == "__main__":
    main()
