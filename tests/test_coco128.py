"""All 128 COCO images through the two-view transform and the box-pair sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from scrl import BoxPairSampler, TwoViewTransform, ViewGeometry
from scrl.transforms import normalize_images

COCO128 = Path(__file__).resolve().parents[1].parent / "shared/data/coco128-train" / "images"

pytestmark = pytest.mark.skipif(not COCO128.is_dir(), reason=f"COCO128 not found at {COCO128}")



@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    paths = sorted(COCO128.glob("*.jpg"))
    assert len(paths) == 128
    return [Image.open(path) for path in paths]


def test_every_image_gives_two_views_and_box_pairs(images):
    transform = TwoViewTransform.byol(size=224)
    torch.manual_seed(0)
    samples = [transform(img) for img in images]
    view1, view2, geom1, geom2 = default_collate(samples)
    assert view1.shape == view2.shape == (128, 3, 224, 224) and view1.dtype == torch.float32
    assert torch.isfinite(view1).all() and torch.isfinite(view2).all()
    assert isinstance(geom1, ViewGeometry) and geom1.crop.shape == (128, 4) and geom1.flipped.shape == (128,)
    sizes = torch.tensor([img.size for img in images], dtype=torch.float64)
    for geom in (geom1, geom2):
        assert (geom.crop[:, :2] >= 0).all() and (geom.crop[:, 2:] <= sizes).all()
        crop_area = (geom.crop[:, 2:] - geom.crop[:, :2]).prod(-1)
        assert (crop_area >= 0.2 * sizes.prod(-1) - sizes.sum(-1)).all()  # scale >= 0.2, up to rounding
    assert 0.3 < geom1.flipped.float().mean() < 0.7

    pairs = BoxPairSampler()(geom1, geom2, generator=torch.Generator().manual_seed(0))
    assert pairs.boxes1.shape == pairs.boxes2.shape == (128, 10, 4) and pairs.valid.shape == (128, 10)
    for boxes in (pairs.boxes1, pairs.boxes2):
        kept = boxes[pairs.valid]
        assert (kept >= 0).all() and (kept <= 224).all()
        assert ((kept[:, 2:] - kept[:, :2]) >= 32 - 1e-3).all()
    # Two crops of >= 20 % of the image overlap enough for K boxes of >= 32 px almost always.
    assert pairs.valid.float().mean() > 0.9


def test_uint8_views_batch_and_normalise_like_float_views(images):
    float_views = TwoViewTransform.byol(size=64)
    uint8_views = TwoViewTransform.byol(size=64, output="uint8")

    def views(transform, i):
        torch.manual_seed(i)
        return transform(images[i])

    seeds = range(0, 128, 8)
    raw = default_collate([views(uint8_views, i) for i in seeds])
    ref = default_collate([views(float_views, i) for i in seeds])
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (16, 3, 64, 64)
    # Normalised on the device or in the worker: the same bits.
    assert torch.equal(normalize_images(raw[0]), ref[0]) and torch.equal(normalize_images(raw[1]), ref[1])
    assert torch.equal(raw[2].crop, ref[2].crop)
