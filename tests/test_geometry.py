import pickle

import pytest
import torch
from torch.utils.data import default_collate

from scrl import ViewGeometry
from scrl.geometry import check_view_size


def random_geometry(generator: torch.Generator, width: float = 500.0, height: float = 375.0) -> ViewGeometry:
    x0, y0 = torch.rand(2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) * 0.5
    w, h = (torch.rand(2, generator=generator, dtype=torch.float64) * 0.5 + 0.1) * torch.tensor([width, height])
    out_h, out_w = torch.randint(16, 300, (2,), generator=generator).tolist()
    geom = ViewGeometry.full(width, height).crop_to(torch.stack([x0, y0, x0 + w, y0 + h])).resize(out_h, out_w)
    return geom.hflip() if torch.rand(1, generator=generator).item() < 0.5 else geom


def random_boxes(generator: torch.Generator, n: int, width: float, height: float) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * torch.tensor([width, height]) * 0.3
    return torch.cat([xy, xy + wh], dim=-1)


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_source_view_source(seed):
    g = torch.Generator().manual_seed(seed)
    geom = random_geometry(g)
    boxes = random_boxes(g, 16, 500.0, 375.0)
    view = geom.source_to_view(boxes)
    assert (view[:, 0] <= view[:, 2]).all() and (view[:, 1] <= view[:, 3]).all()
    torch.testing.assert_close(geom.view_to_source(view), boxes, rtol=0, atol=1e-9)


def test_crop_maps_to_full_view_and_flip_mirrors():
    geom = ViewGeometry.full(640, 480).crop_to([100.0, 50.0, 420.0, 290.0]).resize(224, 112)
    crop = torch.tensor([100.0, 50.0, 420.0, 290.0], dtype=torch.float64)
    torch.testing.assert_close(geom.source_to_view(crop), torch.tensor([0.0, 0.0, 112.0, 224.0], dtype=torch.float64))
    # A box in the left quarter of the crop lands in the right quarter once flipped.
    left = torch.tensor([100.0, 50.0, 180.0, 290.0], dtype=torch.float64)
    torch.testing.assert_close(geom.hflip().source_to_view(left), torch.tensor([84.0, 0.0, 112.0, 224.0], dtype=torch.float64))
    assert geom.hflip().hflip().flipped.item() is False


def test_nested_crop_of_flipped_view_is_exact():
    # Crop the right half of a flipped view: that is the LEFT half of the original crop.
    geom = ViewGeometry.full(400, 300).crop_to([40.0, 30.0, 240.0, 130.0]).resize(100, 200).hflip()
    half = geom.crop_to([100.0, 0.0, 200.0, 100.0])
    torch.testing.assert_close(half.crop, torch.tensor([40.0, 30.0, 140.0, 130.0], dtype=torch.float64))
    assert half.flipped.item() and half.size.tolist() == [100.0, 100.0]


def test_scale_is_view_pixels_per_source_pixel():
    geom = ViewGeometry.full(640, 480).crop_to([0.0, 0.0, 320.0, 120.0]).resize(60, 640)
    torch.testing.assert_close(geom.scale, torch.tensor([2.0, 0.5], dtype=torch.float64))


def test_batches_with_default_collate_and_maps_per_image():
    g = torch.Generator().manual_seed(0)
    geoms = [random_geometry(g) for _ in range(5)]
    batch = default_collate(geoms)
    assert isinstance(batch, ViewGeometry)
    assert batch.crop.shape == (5, 4) and batch.flipped.shape == (5,) and batch.size.shape == (5, 2)
    boxes = torch.stack([random_boxes(g, 3, 500.0, 375.0) for _ in range(5)])
    mapped = batch.source_to_view(boxes)
    for i, geom in enumerate(geoms):
        torch.testing.assert_close(mapped[i], geom.source_to_view(boxes[i]))
    # One box per image ([N, 4]) broadcasts too.
    torch.testing.assert_close(batch.source_to_view(boxes[:, 0]), mapped[:, 0])


def test_box_shape_mismatch_is_a_value_error():
    batch = default_collate([ViewGeometry.full(10, 10)] * 3)
    with pytest.raises(ValueError, match="boxes must have shape"):
        batch.source_to_view(torch.zeros(4, 2, 4))
    with pytest.raises(ValueError, match="boxes must have shape"):
        batch.source_to_view(torch.zeros(3, 2, 5))


def test_full_rejects_empty_image():
    with pytest.raises(ValueError, match="width=0"):
        ViewGeometry.full(0, 10)



def test_to_casts_crop_and_size_keeps_the_flip_and_moves_asynchronously():
    batch = default_collate([random_geometry(torch.Generator().manual_seed(i)) for i in range(3)])
    single = batch.to(dtype=torch.float32)
    assert single.crop.dtype == single.size.dtype == torch.float32 and single.flipped.dtype == torch.bool
    assert torch.equal(single.flipped, batch.flipped) and torch.equal(single.crop, batch.crop.float())
    same = batch.to("cpu", non_blocking=True)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(same, batch))
    with pytest.raises(ValueError, match="dtype"):
        batch.to(dtype=torch.int64)
    if torch.cuda.is_available():
        pinned = ViewGeometry(*(t.pin_memory() for t in batch))
        moved = pinned.to("cuda", non_blocking=True)
        assert all(t.is_cuda for t in moved) and all(torch.equal(a.cpu(), b) for a, b in zip(moved, batch))


@pytest.mark.parametrize(
    "fields, message",
    [
        ((torch.zeros(3), torch.tensor(False), torch.zeros(2)), r"crop must be a float \[\.\.\., 4\]"),
        ((torch.zeros(4, dtype=torch.int64), torch.tensor(False), torch.zeros(2)), r"crop must be a float .*torch.int64"),
        ((torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool), torch.zeros(2)), r"size must be a float \[\.\.\., 2\] .*batch shape \[2\]"),
        ((torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 2)), r"flipped must be a bool tensor .*torch.float32"),
        ((torch.zeros(2, 4), torch.zeros(3, dtype=torch.bool), torch.zeros(2, 2)), r"flipped must be .* \[2\], got torch.bool \[3\]"),
        (([0.0, 0.0, 1.0, 1.0], torch.tensor(False), torch.zeros(2)), "crop must be a tensor, got list"),
    ],
)
def test_fields_of_the_wrong_shape_or_dtype_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ViewGeometry(*fields)


def test_batching_and_replacing_keep_a_valid_geometry():
    g = ViewGeometry.full(64, 48).resize(32, 32)
    batch = torch.utils.data.default_collate([g, g.hflip()])
    assert isinstance(batch, ViewGeometry) and batch.flipped.tolist() == [False, True]
    assert batch._replace(size=batch.size * 2).size.shape == (2, 2)
    with pytest.raises(ValueError, match="crop must be a float"):
        batch._replace(crop=batch.crop[:, :3])


def test_check_view_size_compares_cpu_geometry_and_only_shapes_elsewhere():
    geom = torch.utils.data.default_collate([ViewGeometry.full(64, 48).resize(32, 40)] * 2)
    check_view_size(torch.zeros(2, 3, 32, 40), geom)
    with pytest.raises(ValueError, match=r"view is 40 x 32 px but its geometry says 32 x 40"):
        check_view_size(torch.zeros(2, 3, 40, 32), geom)
    with pytest.raises(ValueError, match=r"batch shape \[2\] differs from the views' \[3\]"):
        check_view_size(torch.zeros(3, 3, 32, 40), geom)
    # On an accelerator the recorded sizes are not read (that would wait for the device); shapes still are.
    on_meta = geom.to("meta")
    check_view_size(torch.zeros(2, 3, 40, 32, device="meta"), on_meta)
    with pytest.raises(ValueError, match="batch shape"):
        check_view_size(torch.zeros(3, 3, 32, 40, device="meta"), on_meta)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "crop, size, message",
    [
        ([0.0, 0.0, 64.0, 64.0], [-64.0, 64.0], r"size must be positive .* got \[-64.0, 64.0\]"),
        ([0.0, 0.0, 64.0, 64.0], [64.0, 0.0], r"size must be positive .* got \[64.0, 0.0\]"),
        ([0.0, 0.0, 64.0, 64.0], [NAN, 64.0], r"size must be finite, got \[nan, 64.0\]"),
        ([0.0, 0.0, 64.0, 64.0], [64.0, INF], r"size must be finite, got \[64.0, inf\]"),
        ([0.0, NAN, 64.0, 64.0], [64.0, 64.0], r"crop must be finite, got \[0.0, nan, 64.0, 64.0\]"),
        ([-INF, 0.0, 64.0, 64.0], [64.0, 64.0], r"crop must be finite, got \[-inf, 0.0, 64.0, 64.0\]"),
        ([0.0, 0.0, 64.0, INF], [64.0, 64.0], r"crop must be finite"),
        ([64.0, 0.0, 0.0, 64.0], [64.0, 64.0], r"crop must have x0 < x1 and y0 < y1 .* got \[64.0, 0.0, 0.0, 64.0\]"),
        ([0.0, 64.0, 64.0, 0.0], [64.0, 64.0], r"crop must have x0 < x1 and y0 < y1"),
        ([10.0, 0.0, 10.0, 64.0], [64.0, 64.0], r"crop must have x0 < x1 and y0 < y1"),  # empty
    ],
)
def test_values_that_describe_no_view_are_refused_naming_the_field(crop, size, message):
    crop, size = torch.tensor(crop, dtype=torch.float64), torch.tensor(size, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        ViewGeometry(crop, torch.tensor(False), size)
    # In a batch, behind a valid view, the error shows the offending one.
    good = ViewGeometry.full(64, 64)
    with pytest.raises(ValueError, match=message):
        ViewGeometry(torch.stack([good.crop, crop]), torch.zeros(2, dtype=torch.bool), torch.stack([good.size, size]))


def test_composition_collate_and_replace_refuse_what_describes_no_view():
    geom = ViewGeometry.full(100, 80)
    with pytest.raises(ValueError, match="size must be positive"):
        geom.resize(-64, 64)
    for empty_or_inverted in ([20.0, 10.0, 20.0, 50.0], [50.0, 10.0, 20.0, 50.0]):  # the box sets the size
        with pytest.raises(ValueError, match=r"size must be positive .* got \[40.0, (0.0|-30.0)\]"):
            geom.crop_to(empty_or_inverted)
    batch = default_collate([geom.resize(32, 32), geom.hflip().resize(32, 32)])
    with pytest.raises(ValueError, match="size must be positive"):
        batch._replace(size=-batch.size)
    unchecked = ViewGeometry._rewrap(torch.full((4,), NAN, dtype=torch.float64), geom.flipped, geom.size)
    with pytest.raises(ValueError, match="crop must be finite"):
        default_collate([geom, unchecked])


def test_casting_checks_the_values_again():
    wide = ViewGeometry.full(1e5, 10)
    assert wide.to(dtype=torch.float32).crop[2].item() == 1e5
    with pytest.raises(ValueError, match=r"crop must be finite, got \[0.0, 0.0, inf, 10.0\]"):
        wide.to(dtype=torch.float16)  # 1e5 overflows float16


def test_values_are_read_only_on_the_cpu_and_moves_and_pickles_keep_them():
    # Meta tensors have no values: any read would raise. A geometry off the CPU is not read, so
    # an accelerator never waits for the check.
    meta = dict(device="meta")
    on_meta = ViewGeometry(torch.zeros(3, 4, **meta), torch.zeros(3, dtype=torch.bool, **meta), torch.zeros(3, 2, **meta))
    assert on_meta.crop.is_meta and on_meta.to(dtype=torch.float64).crop.dtype == torch.float64
    assert ViewGeometry.full(64, 48).to("meta").hflip().flipped.is_meta
    geom = default_collate([random_geometry(torch.Generator().manual_seed(i)) for i in range(3)])
    restored = pickle.loads(pickle.dumps(geom))
    assert isinstance(restored, ViewGeometry) and all(torch.equal(a, b) for a, b in zip(restored, geom))
