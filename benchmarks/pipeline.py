#!/usr/bin/env python
"""Throughput of the pretraining input pipeline alone and of full training steps.

1. Data: worker processes decode, augment and collate uint8 two-view batches on the host
   (exactly the loader of scrl.train.Pretrainer); images per second after a warm-up.
   With --augment-on-device the workers only decode, crop, resize and flip; with
   --decode-on-device they only read the files and draw the views' geometry.
2. Training: scrl.train.Pretrainer itself, run in this process for 2 x --steps steps;
   the first --steps are warm-up (worker start, cuDNN autotuning, compilation), the second
   interval is measured: images per second and the share of wall time spent waiting for data.
   With --augment-on-device the photometric steps run batched on the training device; with
   --decode-on-device the JPEG decoding, crop, resize and flip too (use it with --data: a
   synthetic scene is an image already, which the workers pass on decoded).

Examples:
    python benchmarks/pipeline.py --workers 2                      # CPU, small defaults
    python benchmarks/pipeline.py --workers 8 --arch resnet50 --image-size 224 --batch-size 256 \\
        --amp bf16 --channels-last --data /data/imagenet/train --json
    python benchmarks/pipeline.py --workers 8 ... --augment-on-device   # photometric steps on the GPU
    python benchmarks/pipeline.py --workers 4 ... --decode-on-device    # decoding too

Prints a table, and with --json one JSON object on the last line with the keys
data_images_per_s, train_images_per_s, data_wait_share (and the settings).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from scrl.data import ResumableSampler, TwoViewDataset, two_view_loader
from scrl.train import PretrainConfig, Pretrainer, build_dataset, build_transform

def data_throughput(args: argparse.Namespace) -> float:
    """Images per second from the loader alone (uint8 views + geometries on the host)."""
    config = PretrainConfig(data=args.data, synthetic_images=args.synthetic_images, image_size=args.image_size,
                            augment_on_device=args.augment_on_device, decode_on_device=args.decode_on_device)
    dataset = TwoViewDataset(build_dataset(config), build_transform(config))
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0)
    loader = two_view_loader(dataset, sampler, args.batch_size, args.workers, pin_memory=torch.cuda.is_available())
    needed = args.warmup_batches + args.batches
    if len(sampler) // args.batch_size < needed:
        raise ValueError(f"the dataset gives {len(sampler) // args.batch_size} batches, fewer than the {needed} needed")
    batches = iter(loader)
    for _ in range(args.warmup_batches):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    return args.batches * args.batch_size / (time.perf_counter() - start)


def train_throughput(args: argparse.Namespace) -> dict:
    """Images per second, data-wait share (and peak GPU memory) of full steps of the pretraining engine."""
    with tempfile.TemporaryDirectory() as out:
        config = PretrainConfig(
            data=args.data, synthetic_images=args.synthetic_images, method=args.method, arch=args.arch,
            image_size=args.image_size, batch_size=args.batch_size, workers=args.workers, amp=args.amp,
            max_steps=2 * args.steps, log_every=args.steps, epochs=1000, output_dir=out, resume="none",
            channels_last=args.channels_last, compile=args.compile, augment_on_device=args.augment_on_device,
            decode_on_device=args.decode_on_device,
        )
        Pretrainer(config).run()
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in records if "loss" in r][-1]
    return {k: measured[k] for k in ("images_per_s", "data_wait_share", "max_memory_gib") if k in measured}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default=None, help="image folder (default: synthetic scenes)")
    p.add_argument("--synthetic-images", type=int, default=None, help="default: enough for the timed batches, at least 512")
    p.add_argument("--method", choices=["scrl", "byol"], default="scrl")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--augment-on-device", action="store_true", help="workers crop, resize, flip; photometric steps on the device")
    p.add_argument("--decode-on-device", action="store_true", help="workers read files; decoding and all augmentation on the device")
    p.add_argument("--warmup-batches", type=int, default=2, help="data batches not timed (worker start)")
    p.add_argument("--batches", type=int, default=8, help="data batches timed")
    p.add_argument("--steps", type=int, default=4, help="training steps timed (after as many warm-up steps)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args()
    if args.synthetic_images is None:
        args.synthetic_images = max(512, args.batch_size * max(args.warmup_batches + args.batches, 2 * args.steps))

    data_ips = data_throughput(args)
    train = train_throughput(args)
    train_ips, wait = train["images_per_s"], train["data_wait_share"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    result = {
        "data_images_per_s": round(data_ips, 2),
        "train_images_per_s": round(train_ips, 2),
        "data_wait_share": round(wait, 4),
        "device": device,
        "workers": args.workers,
        "method": args.method,
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "augment_on_device": args.augment_on_device,
        "decode_on_device": args.decode_on_device,
        "data": args.data or f"synthetic ({args.synthetic_images} images)",
    }
    if "max_memory_gib" in train:
        result["max_memory_gib"] = round(train["max_memory_gib"], 2)
    print(f"\n{'quantity':<28}{'value':>12}")
    print(f"{'data pipeline images/s':<28}{data_ips:>12.1f}")
    print(f"{'training images/s':<28}{train_ips:>12.1f}")
    print(f"{'data-wait share':<28}{wait:>12.1%}")
    if "max_memory_gib" in train:
        print(f"{'peak GPU memory (GiB)':<28}{train['max_memory_gib']:>12.2f}")
    if args.decode_on_device:
        augment = "decoded and augmented on the device"
    else:
        augment = "photometric steps on the device" if args.augment_on_device else "augmented in the workers"
    print(f"({device}; {args.method} {args.arch} {args.image_size}px, batch {args.batch_size}, {args.workers} workers, "
          f"amp {args.amp}, {augment})")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
