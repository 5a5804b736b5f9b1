"""Two-view augmentation: `TwoViewTransform` (geometry tracked) vs plain torchvision transforms,
and the worker side of on-device augmentation.

1. Both pipelines make the paper's two views (random resized crop scale (0.2, 1), bicubic, flip,
   the same photometric steps, to-tensor, ImageNet normalisation) of every COCO128 image on one
   CPU thread. They draw the same random numbers in the same order, so with the same seed they
   make the same crops, flips and colour changes: the timing difference is the cost of
   tracking the geometry. A second pair of rows times the geometric steps alone, where the
   difference is most visible.
2. A data worker of examples/pretrain_imagenet.py: the full per-image pipeline
   (``TwoViewTransform.byol(output="uint8")``) against the worker side of ``--augment-on-device``
   (``photometric="device"``: crop, resize, flip, uint8), CPU ms per image for both views on one
   thread (decoding, the same for both, is timed separately).
   The worker side of ``--decode-on-device`` (``TwoViewCrops``: read the file, parse its JPEG
   header, draw both geometries) is timed beside them: ``worker_ms_bytes``, and
   ``worker_speedup_bytes`` = full per-image pipeline with its decoding / that.
3. The device side: ``BatchPhotometric`` on a uint8 batch (default 256 x 3 x 224 x 224, both
   views' settings alternately), images per second, on the CPU with all its threads or with
   ``--device cuda``; with ``--compile`` also under ``torch.compile`` (inductor), as
   ``pretrain_imagenet.py --augment-on-device --compile`` runs it. With ``--decode-images DIR``
   also the whole device side of ``--decode-on-device`` on ``--batch`` JPEGs of DIR:
   ``ViewDecoder`` (batched decode, crop, resize, flip of both views) then ``BatchPhotometric``.

Repeats of 1 and 2 are interleaved (the order rotates) and the median is reported.

    python benchmarks/augment.py [--size 224] [--repeats 5] [--images DIR] [--device cuda] [--compile] [--batch-only]
                                 [--decode-images DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision.transforms as T
from PIL import Image

from scrl import TwoViewTransform
from scrl.data import EncodedTwoViewItem, collate_two_views, read_encoded
from scrl.data.encoded_image import read_for_device
from scrl.transforms import BatchPhotometric, TwoViewCrops, ViewDecoder, byol_photometric, byol_view, normalize_images

COCO128 = Path(__file__).resolve().parents[1].parent / "shared/data/coco128-train" / "images"


def plain_views(size: int, photometric: bool) -> Callable[[Image.Image], tuple]:
    """The same two views from torchvision's own transforms, without geometry."""

    def pipeline(view: int) -> T.Compose:
        crop = T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC)
        steps = [crop, T.RandomHorizontalFlip()]
        if photometric:
            steps += [byol_photometric(view, size), T.ToTensor(), normalize_images]
        else:
            steps += [T.ToTensor()]
        return T.Compose(steps)

    view1, view2 = pipeline(1), pipeline(2)
    return lambda img: (view1(img), view2(img))


def tracked_views(size: int, photometric: bool) -> Callable[[Image.Image], tuple]:
    if photometric:
        return TwoViewTransform.byol(size)
    return TwoViewTransform(
        byol_view(1, size, photometric=False, output="float"), byol_view(2, size, photometric=False, output="float")
    )


def decode_ms(paths: list[Path]) -> float:
    """Median over the files of decoding one to RGB, in ms."""
    times = []
    for path in paths:
        start = time.perf_counter()
        with Image.open(path) as img:
            img.convert("RGB")
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def batch_photometric_images_per_s(batch: int, size: int, device: torch.device, repeats: int, compile: bool = False) -> float:
    """Images per second of BatchPhotometric (views 1 and 2 alternately) on a uint8 batch already on ``device``."""
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    ops = [BatchPhotometric(view=1).to(device), BatchPhotometric(view=2).to(device)]
    # A Generator argument breaks a compiled graph: compiled ops draw from the global device RNG.
    generator = None if compile else torch.Generator(device).manual_seed(0)
    if compile:
        ops = [torch.compile(op) for op in ops]

    def run(k: int) -> None:
        ops[k % 2](images, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for k in range(2):  # warm-up: allocations, kernel selection, compilation
        run(k)
    start = time.perf_counter()
    for k in range(repeats):
        run(k)
    return repeats * batch / (time.perf_counter() - start)


def decode_on_device_images_per_s(
    paths: list[Path], batch: int, size: int, device: torch.device, repeats: int, compile: bool = False
) -> float:
    """Images per second of the device side of ``--decode-on-device``: ViewDecoder then BatchPhotometric, both views."""
    crops = TwoViewCrops.byol(size)
    torch.manual_seed(0)
    items = [EncodedTwoViewItem(*crops(read_encoded(paths[i % len(paths)])), {}) for i in range(batch)]
    encoded = collate_two_views(items).to(device)
    decoder = ViewDecoder(size)
    ops = [BatchPhotometric(view=1).to(device), BatchPhotometric(view=2).to(device)]
    generator = None if compile else torch.Generator(device).manual_seed(0)
    if compile:
        ops = [torch.compile(op) for op in ops]

    def run() -> None:
        views = decoder(encoded.images, encoded.geom1, encoded.geom2, encoded.paths)
        ops[0](views.view1, generator=generator)
        ops[1](views.view2, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()  # warm-up: the decoder's handles, allocations, kernel selection, compilation
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return repeats * batch / (time.perf_counter() - start)


def worker_bytes(size: int) -> Callable[[Path], tuple]:
    """The data worker of ``--decode-on-device``: read the file and its header, draw both geometries."""
    crops = TwoViewCrops.byol(size)
    return lambda path: crops(read_for_device(path))


def ms_per_image(fn: Callable[[Any], tuple], images: list[Any], seed: int) -> float:
    torch.manual_seed(seed)  # same draws for every pipeline in this repeat
    start = time.perf_counter()
    for img in images:
        fn(img)
    return (time.perf_counter() - start) * 1e3 / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224, help="view side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved passes over the images")
    parser.add_argument("--images", type=Path, default=COCO128, help="folder of .jpg images (default: COCO128)")
    parser.add_argument("--batch", type=int, default=256, help="batch of the BatchPhotometric timing")
    parser.add_argument("--batch-repeats", type=int, default=4, help="timed BatchPhotometric calls")
    parser.add_argument("--device", default="cpu", help="device of the BatchPhotometric timing (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--compile", action="store_true", help="also time BatchPhotometric under torch.compile")
    parser.add_argument("--batch-only", action="store_true", help="time the device side only (no COCO128 needed)")
    parser.add_argument("--decode-images", type=Path, default=None,
                        help="folder of JPEGs: also time the device side of --decode-on-device on --batch of them")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    paths = [] if args.batch_only else sorted(args.images.glob("*.jpg"))
    if not paths and not args.batch_only:
        sys.exit(f"no .jpg images found in {args.images}; nothing to measure")
    for name in ("size", "repeats", "batch", "batch_repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name.replace('_', '-')} must be >= 1")
    device = torch.device(args.device)

    # The device side first, with every CPU thread (or the GPU): a batched op, not a worker.
    batch_ips = batch_photometric_images_per_s(args.batch, args.size, device, args.batch_repeats)
    compiled_ips = batch_photometric_images_per_s(args.batch, args.size, device, args.batch_repeats, compile=True) if args.compile else None
    batch_device = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    batch_results = {
        "batch_photometric_images_per_s": round(batch_ips, 1),
        "batch_photometric_compiled_images_per_s": None if compiled_ips is None else round(compiled_ips, 1),
        "batch_photometric_batch": args.batch,
        "batch_photometric_device": batch_device,
        "size": args.size,
    }
    batch_lines = [f"BatchPhotometric on {args.batch} x 3 x {args.size} x {args.size} uint8: {batch_ips:,.0f} images/s ({batch_device})"]
    if compiled_ips is not None:
        batch_lines.append(f"the same under torch.compile: {compiled_ips:,.0f} images/s")
    if args.decode_images is not None:
        jpegs = sorted(p for p in args.decode_images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        if not jpegs:
            sys.exit(f"no JPEG files found in {args.decode_images}; nothing to decode")
        decode_ips = decode_on_device_images_per_s(jpegs, args.batch, args.size, device, args.batch_repeats, args.compile)
        batch_results["decode_on_device_images_per_s"] = round(decode_ips, 1)
        batch_results["decode_on_device_compiled"] = args.compile
        batch_lines.append(
            f"ViewDecoder + BatchPhotometric{' (compiled)' if args.compile else ''} on {args.batch} JPEGs of "
            f"{args.decode_images.name}, both {args.size}-px views: {decode_ips:,.0f} images/s"
        )
    if args.batch_only:
        print("\n".join(batch_lines))
        if args.json:
            print(json.dumps(batch_results))
        return
    torch.set_num_threads(1)
    images = [Image.open(path).convert("RGB") for path in paths]  # decoded once, untimed
    pipelines = {
        "tracked": tracked_views(args.size, True),
        "plain": plain_views(args.size, True),
        "tracked_geometric": tracked_views(args.size, False),
        "plain_geometric": plain_views(args.size, False),
        "worker_full": TwoViewTransform.byol(args.size, output="uint8"),
        "worker_device_aug": TwoViewTransform.byol(args.size, photometric="device"),
    }
    names = list(pipelines)
    for name in names:  # warm-up
        ms_per_image(pipelines[name], images[:8], seed=0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(ms_per_image(pipelines[name], images, seed=r))
    bytes_worker = worker_bytes(args.size)
    ms_per_image(bytes_worker, paths[:8], seed=0)
    times["worker_bytes"] = [ms_per_image(bytes_worker, paths, seed=r) for r in range(args.repeats)]
    median = {name: statistics.median(t) for name, t in times.items()}
    decode = decode_ms(paths)

    print(
        f"two {args.size}-px views per image, {len(images)} images from {args.images.name}, 1 thread, "
        f"{args.repeats} interleaved repeats"
    )
    print(f"{'pipeline':<34}{'median ms/img':>14}{'min ms/img':>12}")
    labels = {
        "tracked": "TwoViewTransform.byol (full)",
        "plain": "torchvision, no geometry (full)",
        "tracked_geometric": "tracked crop+flip only",
        "plain_geometric": "torchvision crop+flip only",
        "worker_full": "worker, full per-image (uint8)",
        "worker_device_aug": "worker, --augment-on-device",
        "worker_bytes": "worker, --decode-on-device",
    }
    for name in [*names, "worker_bytes"]:
        print(f"{labels[name]:<34}{median[name]:>14.3f}{min(times[name]):>12.3f}")
    ratio = median["tracked"] / median["plain"]
    geometric_ratio = median["tracked_geometric"] / median["plain_geometric"]
    print(f"ratio tracked / plain: {ratio:.3f} (full), {geometric_ratio:.3f} (crop+flip only); target <= 1.05")
    worker_speedup = median["worker_full"] / median["worker_device_aug"]
    with_decode = (median["worker_full"] + decode) / (median["worker_device_aug"] + decode)
    print(f"worker speedup with on-device augmentation: {worker_speedup:.2f}x (target >= 3); "
          f"{with_decode:.2f}x counting the decoding ({decode:.3f} ms/img, median)")
    bytes_speedup = (median["worker_full"] + decode) / median["worker_bytes"]
    print(f"worker speedup with on-device decoding: {bytes_speedup:.1f}x over the full pipeline with its decoding (target >= 20)")
    print("\n".join(batch_lines))
    if args.json:
        print(
            json.dumps(
                {
                    "tracked_ms": round(median["tracked"], 4),
                    "plain_ms": round(median["plain"], 4),
                    "ratio": round(ratio, 4),
                    "tracked_geometric_ms": round(median["tracked_geometric"], 4),
                    "plain_geometric_ms": round(median["plain_geometric"], 4),
                    "geometric_ratio": round(geometric_ratio, 4),
                    "worker_ms_full": round(median["worker_full"], 4),
                    "worker_ms_device_aug": round(median["worker_device_aug"], 4),
                    "worker_speedup": round(worker_speedup, 4),
                    "decode_ms": round(decode, 4),
                    "worker_speedup_with_decode": round(with_decode, 4),
                    "worker_ms_bytes": round(median["worker_bytes"], 4),
                    "worker_speedup_bytes": round(bytes_speedup, 4),
                    **batch_results,
                    "images": len(images),
                    "repeats": args.repeats,
                }
            )
        )


if __name__ == "__main__":
    main()
