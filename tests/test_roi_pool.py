import pytest
import torch

from scrl import BoxPairs, RoIPairPool, roi_pair_pool
from scrl.roi_pool import pool_boxes

STRIDE = 32


def coordinate_map(n: int, h: int, w: int, cell_offset: float = 0.5) -> torch.Tensor:
    """[n, 3, h, w]: channel 0 = x, channel 1 = y of each cell centre in input pixels, channel 2 = image index.

    Cell i is centred at ``STRIDE * i + cell_offset``, as in a trunk with that cell offset.
    """
    ys, xs = torch.meshgrid(torch.arange(h) * STRIDE + cell_offset, torch.arange(w) * STRIDE + cell_offset, indexing="ij")
    one = torch.stack([xs, ys, torch.zeros(h, w)])
    maps = one.expand(n, -1, -1, -1).clone()
    maps[:, 2] = torch.arange(n, dtype=torch.float32)[:, None, None]
    return maps


def centres(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


# Boxes keep every sample point inside the span of cell centres, where bilinear interpolation of
# the coordinate map is exact.
BOXES1 = torch.tensor([[[36.0, 36.0, 80.0, 68.0], [40.0, 40.0, 92.0, 90.0]], [[40.0, 60.0, 70.0, 96.0], [0.0, 0.0, 0.0, 0.0]]])


@pytest.mark.parametrize("cell_offset", [0.5, 16.0, 0.0, 7.25])
def test_pooling_reads_the_box_centre_at_the_cells_real_centres_and_matches_rows(cell_offset):
    boxes2 = BOXES1.flip(0)
    valid = torch.tensor([[True, True], [True, False]])
    map1, map2 = coordinate_map(2, 4, 4, cell_offset), coordinate_map(2, 4, 4, cell_offset)
    p1, p2, v = roi_pair_pool(map1, map2, BoxPairs(BOXES1, boxes2, valid), cell_offset=cell_offset)
    assert p1.shape == p2.shape == (4, 3) and v.tolist() == [True, True, True, False]
    torch.testing.assert_close(p1[v, :2], centres(BOXES1).reshape(4, 2)[v])
    torch.testing.assert_close(p2[:, :2], centres(boxes2).reshape(4, 2))
    assert p1[:, 2].tolist() == [0.0, 0.0, 1.0, 0.0]  # row n*K + k comes from image n
    assert p1[3].abs().sum() == 0  # the invalid all-zero box pools to zeros


@pytest.mark.parametrize("aligned, error", [(True, -15.5), (False, 0.5)])
def test_the_two_roi_align_conventions_miss_a_resnets_cells_by_their_measured_offsets(aligned, error):
    # On a torchvision ResNet's C5 (cells at 32i + 0.5), Detectron2's aligned=True looks 15.5 px
    # up-left of every box, the authors' aligned=False 0.5 px down-right.
    boxes = torch.tensor([[[60.0, 50.0, 112.0, 100.0]]])
    pairs = BoxPairs(boxes, boxes, torch.ones(1, 1, dtype=torch.bool))
    maps = coordinate_map(1, 5, 5, cell_offset=0.5)
    p1, _, _ = roi_pair_pool(maps, maps, pairs, aligned=aligned)
    torch.testing.assert_close(p1[0, :2], centres(boxes)[0, 0] + error)
    exact, _, _ = roi_pair_pool(maps, maps, pairs)
    torch.testing.assert_close(exact[0, :2], centres(boxes)[0, 0])


def test_small_boxes_are_not_widened():
    # A box narrower than one cell keeps its centre (roi_align's aligned=False would stretch it
    # to a whole cell from its left edge).
    boxes = torch.tensor([[[70.0, 64.0, 78.0, 70.0]]])
    maps = coordinate_map(1, 5, 5)
    rows = pool_boxes(maps, boxes, spatial_scale=1 / STRIDE)
    torch.testing.assert_close(rows[0, :2], centres(boxes)[0, 0])
    listed = pool_boxes(maps, [boxes[0]], spatial_scale=1 / STRIDE)
    torch.testing.assert_close(listed, rows)


@pytest.mark.parametrize("aligned, apart", [(None, 0.0), (True, 31.0), (False, 1.0)])
def test_a_flipped_view_pair_pools_the_same_source_point_only_at_the_real_cell_centres(aligned, apart):
    # Maps that hold each cell's source x: view 1 is the source itself, view 2 its mirror image
    # (x -> 160 - x), both on a trunk whose cells sit at 32i + 0.5 in their own view.
    view1 = coordinate_map(1, 5, 5)
    view2 = view1.clone()
    view2[:, 0] = 160 - view1[:, 0]
    boxes1 = torch.tensor([[[40.0, 40.0, 90.0, 100.0], [70.0, 36.0, 110.0, 70.0]]])
    boxes2 = torch.stack([160 - boxes1[..., 2], boxes1[..., 1], 160 - boxes1[..., 0], boxes1[..., 3]], dim=-1)
    p1, p2, _ = RoIPairPool(STRIDE, aligned=aligned)(view1, view2, BoxPairs(boxes1, boxes2, torch.ones(1, 2, dtype=torch.bool)))
    torch.testing.assert_close((p1[:, 0] - p2[:, 0]).abs(), torch.full((2,), apart))


def test_static_shapes_for_one_box_one_image_and_no_valid_box():
    maps = torch.randn(1, 16, 2, 2)
    none_valid = BoxPairs(torch.zeros(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool))
    p1, p2, valid = roi_pair_pool(maps, maps, none_valid)
    assert p1.shape == p2.shape == (1, 16) and valid.shape == (1,) and not valid.any()
    assert torch.isfinite(p1).all()


def test_output_size_flattens_bins_and_memory_formats_and_bf16_agree():
    torch.manual_seed(0)
    maps = torch.randn(2, 8, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0]], [[32.0, 16.0, 128.0, 100.0]]])
    pairs = BoxPairs(boxes, boxes, torch.ones(2, 1, dtype=torch.bool))
    p1, _, _ = roi_pair_pool(maps, maps, pairs, output_size=2)
    assert p1.shape == (2, 8 * 4)
    ref, _, _ = roi_pair_pool(maps, maps, pairs)
    cl = maps.to(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_pair_pool(cl, cl, pairs)[0], ref)
    low, _, _ = roi_pair_pool(maps.bfloat16(), maps.bfloat16(), pairs)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.02, rtol=0.02)


def test_gradients_flow_to_both_maps():
    map1, map2 = torch.randn(1, 4, 2, 2, requires_grad=True), torch.randn(1, 4, 2, 2, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0]]])
    p1, p2, _ = roi_pair_pool(map1, map2, BoxPairs(boxes, boxes, torch.ones(1, 1, dtype=torch.bool)))
    (p1.sum() + p2.sum()).backward()
    assert map1.grad.abs().sum() > 0 and map2.grad.abs().sum() > 0


def test_argument_checks_and_repr():
    maps = torch.randn(2, 4, 2, 2)
    pairs = BoxPairs(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="pairs"):
        roi_pair_pool(maps, maps, pairs)
    with pytest.raises(ValueError, match="map1 and map2"):
        roi_pair_pool(maps, torch.randn(2, 5, 2, 2), pairs)
    bad = [
        (dict(output_size=0), "output_size"),
        (dict(sampling_ratio=0), "sampling_ratio"),
        (dict(stride=0), "stride"),
        (dict(aligned="yes"), "aligned"),
        (dict(cell_offset=float("nan")), "cell_offset"),
    ]
    for kwargs, name in bad:
        with pytest.raises(ValueError, match=name):
            RoIPairPool(**kwargs)
    assert repr(RoIPairPool(16, aligned=False)) == "RoIPairPool(stride=16, output_size=1, sampling_ratio=-1, aligned=False)"
    assert repr(RoIPairPool(16, cell_offset=8)) == "RoIPairPool(stride=16, output_size=1, sampling_ratio=-1, cell_offset=8.0)"


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_integer_feature_maps_are_refused_naming_the_argument(dtype):
    maps = torch.ones(1, 3, 4, 4).to(dtype)
    floats = torch.ones(1, 3, 4, 4)
    pairs = BoxPairs(BOXES1[:1], BOXES1[:1], torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=f"feature_map must have a floating dtype .*got {dtype}"):
        pool_boxes(maps, BOXES1[:1])
    with pytest.raises(ValueError, match=f"map1 must have a floating dtype .*got {dtype}"):
        roi_pair_pool(maps, floats, pairs)
    with pytest.raises(ValueError, match=f"map2 must have a floating dtype .*got {dtype}"):
        RoIPairPool(STRIDE)(floats, maps, pairs)


@pytest.mark.parametrize("junk", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_boxes_are_refused_naming_them(junk):
    maps = coordinate_map(2, 4, 4)
    bad = BOXES1.clone()
    bad[1, 0, 2] = junk
    with pytest.raises(ValueError, match=r"boxes must hold finite .* at flattened box 2"):
        pool_boxes(maps, bad, spatial_scale=1 / STRIDE)
    with pytest.raises(ValueError, match=r"boxes\[1\] must hold finite .* at flattened box 0"):
        pool_boxes(maps, list(bad), spatial_scale=1 / STRIDE)
    valid = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"pairs.boxes2 must hold finite"):
        roi_pair_pool(maps, maps, BoxPairs(BOXES1, bad, valid))
    with pytest.raises(ValueError, match=r"pairs.boxes1 must hold finite"):
        RoIPairPool(STRIDE)(maps, maps, BoxPairs(bad, BOXES1, valid))


def test_boxes_off_the_cpu_are_not_read():
    # Meta tensors have no values, so any read would raise: boxes on an accelerator cost no sync.
    maps = torch.empty(2, 4, 3, 3, device="meta")
    boxes = torch.empty(2, 3, 4, device="meta")
    p1, p2, valid = RoIPairPool(STRIDE)(maps, maps, BoxPairs(boxes, boxes, torch.empty(2, 3, dtype=torch.bool, device="meta")))
    assert p1.shape == p2.shape == (6, 4) and valid.shape == (6,) and p1.is_meta
    assert pool_boxes(maps, boxes).shape == (6, 4)
