"""Render the figures of docs/geometry.md from a COCO128 image.

    python docs/make_figures.py

Writes docs/figures/box_pairs.png: the source image with both crops and the sampled boxes,
then view 1 and view 2 with each matched pair in one colour. Skips (exit status 0) when
../shared/data/coco128-train is not there.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from scrl import BoxPairSampler, TwoViewTransform
from scrl.transforms import byol_view, to_rgb
from scrl.viz import PALETTE, draw_box_pairs

ROOT = Path(__file__).resolve().parents[1]
COCO128 = ROOT.parent / "shared/data/coco128-train"
IMAGE = "000000000025.jpg"  # a giraffe among trees: structure that makes matches easy to check
VIEW_SIZE = 224
GAP = 12
NUM_BOXES = 5  # fewer than the default 10, so that each box stays visible


def pick_views(img: Image.Image) -> tuple:
    """The first seed whose views differ in flip and hold all pairs, so the figure shows both cases."""
    transform = TwoViewTransform(
        byol_view(1, VIEW_SIZE, photometric=False, normalize=False),
        byol_view(2, VIEW_SIZE, photometric=False, normalize=False),
    )
    sampler = BoxPairSampler(num_boxes=NUM_BOXES, min_size=32)
    for seed in range(1000):
        generator = torch.Generator().manual_seed(seed)
        view1, view2, geom1, geom2 = transform(img, generator=generator)
        pairs = sampler(geom1, geom2, generator=generator)
        if bool(geom1.flipped) != bool(geom2.flipped) and bool(pairs.valid.all()):
            return view1, view2, geom1, geom2, pairs
    raise RuntimeError(f"no seed gave one flipped and one unflipped view with {NUM_BOXES} pairs")


def source_panel(img: Image.Image, geom1, geom2, pairs) -> torch.Tensor:
    """The source image at view height, crop 1 in white, crop 2 in black, the boxes in colour."""
    scale = VIEW_SIZE / img.height
    panel = F.pil_to_tensor(F.resize(img, [VIEW_SIZE, round(img.width * scale)]))
    crops = torch.stack([geom1.crop, geom2.crop]).float() * scale
    panel = draw_bounding_boxes(panel, crops, colors=["white", "black"], width=4)
    valid = pairs.valid[0]
    slots = valid.nonzero().flatten().tolist()
    boxes = geom1.view_to_source(pairs.boxes1[0][valid].double()).float() * scale
    return draw_bounding_boxes(panel, boxes, colors=[PALETTE[k % len(PALETTE)] for k in slots], width=3)


def main() -> None:
    if not (COCO128 / "images" / IMAGE).is_file():
        print(f"COCO128 image {IMAGE} not found under {COCO128}; figures not rendered")
        return
    img = to_rgb(Image.open(COCO128 / "images" / IMAGE))
    view1, view2, geom1, geom2, pairs = pick_views(img)
    left = source_panel(img, geom1, geom2, pairs)
    right = draw_box_pairs(view1, view2, pairs, 0, gap=GAP, width=3, labels=False)
    gap = torch.full((3, VIEW_SIZE, GAP), 255, dtype=torch.uint8)
    figure = torch.cat([left, gap, right], dim=2)
    out = ROOT / "docs" / "figures" / "box_pairs.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(figure, str(out))
    print(
        f"wrote {out.relative_to(ROOT)} ({figure.shape[2]}x{figure.shape[1]}); view 1 flipped: "
        f"{bool(geom1.flipped)}, view 2 flipped: {bool(geom2.flipped)}, valid pairs: {int(pairs.valid.sum())}"
    )


if __name__ == "__main__":
    main()
