import pytest
import torch

from scrl import BoxPairs, RoIPairPool, roi_pair_pool

STRIDE = 32


def coordinate_map(n: int, h: int, w: int) -> torch.Tensor:
    """[n, 3, h, w]: channel 0 = x, channel 1 = y of each cell centre in input pixels, channel 2 = image index."""
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    one = torch.stack([xs * STRIDE, ys * STRIDE, torch.zeros(h, w)])
    maps = one.expand(n, -1, -1, -1).clone()
    maps[:, 2] = torch.arange(n, dtype=torch.float32)[:, None, None]
    return maps


def centres(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def test_aligned_pooling_reads_the_box_centre_and_matches_rows_by_index():
    # Boxes keep every sample point at least half a cell inside the map, where bilinear
    # interpolation of the coordinate map is exact.
    boxes1 = torch.tensor([[[16.0, 16.0, 80.0, 48.0], [40.0, 30.0, 112.0, 100.0]], [[20.0, 60.0, 60.0, 110.0], [0.0, 0.0, 0.0, 0.0]]])
    boxes2 = boxes1.flip(0)
    valid = torch.tensor([[True, True], [True, False]])
    map1, map2 = coordinate_map(2, 4, 4), coordinate_map(2, 4, 4)
    p1, p2, v = roi_pair_pool(map1, map2, BoxPairs(boxes1, boxes2, valid))
    assert p1.shape == p2.shape == (4, 3) and v.tolist() == [True, True, True, False]
    torch.testing.assert_close(p1[v, :2], centres(boxes1).reshape(4, 2)[v])
    torch.testing.assert_close(p2[:, :2], centres(boxes2).reshape(4, 2))
    assert p1[:, 2].tolist() == [0.0, 0.0, 1.0, 0.0]  # row n*K + k comes from image n
    assert p1[3].abs().sum() == 0  # the invalid all-zero box pools to zeros


def test_unaligned_pooling_is_half_a_stride_off():
    boxes = torch.tensor([[[40.0, 30.0, 112.0, 100.0]]])
    pairs = BoxPairs(boxes, boxes, torch.ones(1, 1, dtype=torch.bool))
    maps = coordinate_map(1, 5, 5)
    p1, _, _ = roi_pair_pool(maps, maps, pairs, aligned=False)
    torch.testing.assert_close(p1[0, :2], centres(boxes)[0, 0] + STRIDE / 2)


def test_flipped_view_pools_the_same_features_only_when_aligned():
    torch.manual_seed(0)
    map1 = torch.randn(1, 8, 4, 4)
    map2 = map1.flip(-1)  # view 2 is view 1 mirrored: x -> 128 - x
    boxes1 = torch.tensor([[[8.0, 20.0, 50.0, 70.0], [33.0, 5.0, 121.0, 97.0]]])
    boxes2 = torch.stack([128 - boxes1[..., 2], boxes1[..., 1], 128 - boxes1[..., 0], boxes1[..., 3]], dim=-1)
    pairs = BoxPairs(boxes1, boxes2, torch.ones(1, 2, dtype=torch.bool))
    p1, p2, _ = RoIPairPool(STRIDE)(map1, map2, pairs)
    torch.testing.assert_close(p1, p2)
    q1, q2, _ = RoIPairPool(STRIDE, aligned=False)(map1, map2, pairs)
    assert (q1 - q2).abs().max() > 0.1


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
    for kwargs, name in [(dict(output_size=0), "output_size"), (dict(sampling_ratio=0), "sampling_ratio"), (dict(stride=0), "stride")]:
        with pytest.raises(ValueError, match=name):
            RoIPairPool(**kwargs)
    assert repr(RoIPairPool(16, aligned=False)) == "RoIPairPool(stride=16, output_size=1, sampling_ratio=-1, aligned=False)"
