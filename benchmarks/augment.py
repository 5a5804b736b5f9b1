"""Two-view augmentation: `TwoViewTransform` (geometry tracked) vs plain torchvision transforms.

Both pipelines make the paper's two views (random resized crop scale (0.2, 1), bicubic, flip,
the same photometric steps, to-tensor, ImageNet normalisation) of every COCO128 image on one
CPU thread. They draw the same random numbers in the same order, so with the same seed they
make the same crops, flips and colour changes: the timing difference is the cost of
tracking the geometry. Repeats are interleaved (the order rotates) and the median is reported;
a second pair of rows times the geometric steps alone, where the difference is most visible.

    python benchmarks/augment.py [--size 224] [--repeats 5] [--images DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision.transforms as T
from PIL import Image

from scrl import TwoViewTransform
from scrl.transforms import IMAGENET_MEAN, IMAGENET_STD, byol_photometric, byol_view

COCO128 = Path(__file__).resolve().parents[1].parent / "shared/data/coco128-train" / "images"


def plain_views(size: int, photometric: bool) -> Callable[[Image.Image], tuple]:
    """The same two views from torchvision's own transforms, without geometry."""

    def pipeline(view: int) -> T.Compose:
        crop = T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC)
        steps = [crop, T.RandomHorizontalFlip()]
        if photometric:
            steps += [byol_photometric(view, size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        else:
            steps += [T.ToTensor()]
        return T.Compose(steps)

    view1, view2 = pipeline(1), pipeline(2)
    return lambda img: (view1(img), view2(img))


def tracked_views(size: int, photometric: bool) -> Callable[[Image.Image], tuple]:
    if photometric:
        return TwoViewTransform.byol(size)
    return TwoViewTransform(
        byol_view(1, size, photometric=False, normalize=False), byol_view(2, size, photometric=False, normalize=False)
    )


def ms_per_image(fn: Callable[[Image.Image], tuple], images: list[Image.Image], seed: int) -> float:
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
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    paths = sorted(args.images.glob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg images found in {args.images}; nothing to measure")

    torch.set_num_threads(1)
    images = [Image.open(path).convert("RGB") for path in paths]  # decoded once, untimed
    pipelines = {
        "tracked": tracked_views(args.size, True),
        "plain": plain_views(args.size, True),
        "tracked_geometric": tracked_views(args.size, False),
        "plain_geometric": plain_views(args.size, False),
    }
    names = list(pipelines)
    for name in names:  # warm-up
        ms_per_image(pipelines[name], images[:8], seed=0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(ms_per_image(pipelines[name], images, seed=r))
    median = {name: statistics.median(t) for name, t in times.items()}

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
    }
    for name in names:
        print(f"{labels[name]:<34}{median[name]:>14.3f}{min(times[name]):>12.3f}")
    ratio = median["tracked"] / median["plain"]
    geometric_ratio = median["tracked_geometric"] / median["plain_geometric"]
    print(f"ratio tracked / plain: {ratio:.3f} (full), {geometric_ratio:.3f} (crop+flip only); target <= 1.05")
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
                    "size": args.size,
                    "images": len(images),
                    "repeats": args.repeats,
                }
            )
        )


if __name__ == "__main__":
    main()
