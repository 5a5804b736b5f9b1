"""Box-pair sampling: the vectorised `BoxPairSampler` vs the published per-image Python loop.

Speed: both sample K boxes per image inside the overlap of two views of a batch of
ImageNet-sized images (500 x 375, RandomResizedCrop scale (0.2, 1), 224 px views) on one CPU
thread. The baseline follows the published algorithm: per image and per box, up to 50 tries of
Eq. 1, each checked by IoU against the boxes kept so far (and, as published, the last try kept
anyway when all 50 fail).

Fill: mean boxes per image (images where a box fits) against the paper's procedure done
sequentially (draw again until the IoU test passes, up to 50 tries per box; a box that never
passes is left out), on 1,000 view pairs at 96-px and at 224-px views.

    python benchmarks/box_sampler.py [--batch 256] [--num-boxes 10] [--repeats 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from scrl import BoxPairSampler, ViewGeometry
from scrl.transforms.geometric import random_resized_crop_params


def view_geometries(batch: int, size: int, seed: int) -> tuple[ViewGeometry, ViewGeometry]:
    """Two batches of view geometries as the data pipeline draws them for 500 x 375 images."""

    def one() -> ViewGeometry:
        box = random_resized_crop_params(500, 375, scale=(0.2, 1.0))
        geom = ViewGeometry.full(500, 375).crop_to(box).resize(size, size)
        return geom.hflip() if torch.rand(()) < 0.5 else geom

    # Crops draw from the global RNG, as in a data worker; seeded here, restored afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only, like TwoViewDataset
        views = [(one(), one()) for _ in range(batch)]
    return (torch.utils.data.default_collate([v[0] for v in views]), torch.utils.data.default_collate([v[1] for v in views]))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def loop_sampler(
    geom1: ViewGeometry, geom2: ViewGeometry, num_boxes: int, min_size: float, rng: random.Random, keep_last_try: bool = True
):
    """The published algorithm: a Python loop per image, per box, per try. Returns boxes, valid count.

    With ``keep_last_try`` (the authors' code) a box whose 50 tries all fail the IoU test is kept
    anyway; without it (the paper's procedure) it is left out.
    """
    crops1, crops2 = geom1.crop.tolist(), geom2.crop.tolist()
    scales1, scales2 = geom1.scale.tolist(), geom2.scale.tolist()
    out, valid = [], 0
    for c1, c2, s1, s2 in zip(crops1, crops2, scales1, scales2):
        x0, y0 = max(c1[0], c2[0]), max(c1[1], c2[1])
        w_hat, h_hat = min(c1[2], c2[2]) - x0, min(c1[3], c2[3]) - y0
        w_min, h_min = min_size / min(s1[0], s2[0]), min_size / min(s1[1], s2[1])
        boxes: list[tuple[float, float, float, float]] = []
        if w_hat >= w_min and h_hat >= h_min:
            for _ in range(num_boxes):
                for _ in range(50):
                    w = rng.uniform(w_min, w_hat)
                    h = rng.uniform(h_min, h_hat)
                    x = x0 + rng.uniform(0, w_hat - w)
                    y = y0 + rng.uniform(0, h_hat - h)
                    box = (x, y, x + w, y + h)
                    if all(_iou(box, kept) <= 0.5 for kept in boxes):
                        boxes.append(box)
                        break
                else:
                    if keep_last_try:
                        boxes.append(box)
        valid += len(boxes)
        out.append(boxes)
    return out, valid


def fill_ratio(size: int, num_boxes: int, min_size: float, pairs: int = 1000) -> tuple[float, float, float]:
    """``(sampler, paper, ratio)``: mean boxes per image where a box fits, on ``pairs`` view pairs."""
    geom1, geom2 = view_geometries(pairs, size, seed=1)
    boxes, _ = loop_sampler(geom1, geom2, num_boxes, min_size, random.Random(1), keep_last_try=False)
    sampled = BoxPairSampler(num_boxes=num_boxes, min_size=min_size)(geom1, geom2, generator=torch.Generator().manual_seed(1))
    views = torch.stack([geom1.crop, geom2.crop])
    extent = views[..., 2:].amin(dim=0) - views[..., :2].amax(dim=0)
    fits = (extent >= min_size / torch.minimum(geom1.scale, geom2.scale)).all(dim=1)
    paper = sum(len(b) for b in boxes) / int(fits.sum())
    ours = sampled.valid[fits].sum(dim=1).double().mean().item()
    return ours, paper, ours / paper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--num-boxes", type=int, default=10)
    parser.add_argument("--min-size", type=float, default=32.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    geom1, geom2 = view_geometries(args.batch, args.size, seed=0)
    sampler = BoxPairSampler(num_boxes=args.num_boxes, min_size=args.min_size)
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    sampler(geom1, geom2, generator=generator)  # warm-up

    sampler_s, loop_s, valid_shares = [], [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        start = time.perf_counter()
        pairs = sampler(geom1, geom2, generator=generator)
        sampler_s.append(time.perf_counter() - start)
        valid_shares.append(pairs.valid.float().mean().item())
        start = time.perf_counter()
        loop_sampler(geom1, geom2, args.num_boxes, args.min_size, rng)
        loop_s.append(time.perf_counter() - start)

    fills = {size: fill_ratio(size, args.num_boxes, args.min_size) for size in (96, 224)}
    result = {
        "batch": args.batch,
        "num_boxes": args.num_boxes,
        "size": args.size,
        "sampler_ms": round(statistics.median(sampler_s) * 1e3, 3),
        "loop_ms": round(statistics.median(loop_s) * 1e3, 3),
        "speedup": round(statistics.median(loop_s) / statistics.median(sampler_s), 1),
        "valid_box_share": round(statistics.mean(valid_shares), 4),
        **{f"boxes_per_image_{size}": round(fill[0], 3) for size, fill in fills.items()},
        **{f"paper_boxes_per_image_{size}": round(fill[1], 3) for size, fill in fills.items()},
        **{f"fill_ratio_{size}": round(fill[2], 4) for size, fill in fills.items()},
    }
    print(f"box-pair sampling, batch {args.batch}, K = {args.num_boxes}, {args.size}-px views, {args.threads} CPU thread(s), median of {args.repeats}")
    print(f"{'method':<28}{'ms / batch':>12}")
    print(f"{'BoxPairSampler (vectorised)':<28}{result['sampler_ms']:>12.3f}")
    print(f"{'per-image Python loop':<28}{result['loop_ms']:>12.3f}")
    print(f"speedup {result['speedup']}x, valid share {result['valid_box_share']:.4f}")
    print(f"{'boxes per image (1,000 pairs)':<30}{'sampler':>9}{'paper':>9}{'ratio':>8}")
    for size, (ours, paper, ratio) in fills.items():
        print(f"{f'{size}-px views':<30}{ours:>9.3f}{paper:>9.3f}{ratio:>8.4f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
