import math

import pytest
import torch

from scrl import BoxPairs, BoxPairSampler, ViewGeometry, sample_box_pairs
from torchvision.ops import box_iou


def random_view_pairs(n: int, seed: int, width: float = 500.0, height: float = 375.0, size: int = 224):
    """Geometries of ``n`` view pairs drawn like RandomResizedCrop(scale=(0.2, 1)) + flip."""
    g = torch.Generator().manual_seed(seed)

    def draw() -> ViewGeometry:
        area = width * height * (0.2 + 0.8 * torch.rand(n, generator=g, dtype=torch.float64))
        log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(n, generator=g, dtype=torch.float64)
        w = torch.sqrt(area * log_ratio.exp()).clamp(max=width)
        h = torch.sqrt(area / log_ratio.exp()).clamp(max=height)
        x = torch.rand(n, generator=g, dtype=torch.float64) * (width - w)
        y = torch.rand(n, generator=g, dtype=torch.float64) * (height - h)
        crop = torch.stack([x, y, x + w, y + h], dim=1)
        flipped = torch.rand(n, generator=g) < 0.5
        return ViewGeometry(crop, flipped, torch.full((n, 2), float(size), dtype=torch.float64))

    return draw(), draw()


def box_iou_pairwise(boxes: torch.Tensor) -> torch.Tensor:
    """IoU between the boxes of each image: ``[N, K, 4]`` -> ``[N, K, K]`` (``[K, 4]`` -> ``[K, K]``)."""
    if boxes.dim() == 2:
        return box_iou(boxes, boxes)
    return torch.stack([box_iou(b, b) for b in boxes])


def overlap(geom1: ViewGeometry, geom2: ViewGeometry) -> torch.Tensor:
    lo = torch.maximum(geom1.crop[:, :2], geom2.crop[:, :2])
    hi = torch.minimum(geom1.crop[:, 2:], geom2.crop[:, 2:])
    return torch.cat([lo, hi], dim=1)


def sequential_greedy(candidates: torch.Tensor, threshold: float) -> list[int]:
    """The published rule: keep a candidate unless it overlaps a kept one by more than ``threshold``."""
    kept: list[int] = []
    for m in range(len(candidates)):
        if not kept or box_iou_pairwise(candidates[kept + [m]])[-1, :-1].max() <= threshold:
            kept.append(m)
    return kept


@pytest.mark.parametrize("mode", ["uniform", "grid"])
def test_invariants_on_thousands_of_view_pairs(mode):
    geom1, geom2 = random_view_pairs(4000, seed=1)
    sampler = BoxPairSampler(num_boxes=10, min_size=32, iou_threshold=0.5, mode=mode)
    pairs = sampler(geom1, geom2, generator=torch.Generator().manual_seed(0))
    assert pairs.boxes1.shape == (4000, 10, 4) and pairs.valid.shape == (4000, 10)
    assert pairs.boxes1.dtype == torch.float32

    valid = pairs.valid
    src1 = geom1.view_to_source(pairs.boxes1.double())
    src2 = geom2.view_to_source(pairs.boxes2.double())
    # Both views cover the same source region.
    assert (src1 - src2)[valid].abs().max() < 1e-3
    # Inside the overlap of the two crops.
    ov = overlap(geom1, geom2)[:, None]
    assert (src1[..., :2] >= ov[..., :2] - 1e-3)[valid].all()
    assert (src1[..., 2:] <= ov[..., 2:] + 1e-3)[valid].all()
    # At least min_size wide and high in both views.
    for boxes in (pairs.boxes1, pairs.boxes2):
        wh = boxes[..., 2:] - boxes[..., :2]
        assert (wh[valid] >= 32 - 1e-3).all()
        assert ((boxes >= 0) & (boxes <= 224)).all()
    # Pairwise IoU within an image never exceeds the threshold.
    iou = box_iou_pairwise(pairs.boxes1)
    both = valid[:, :, None] & valid[:, None, :] & ~torch.eye(10, dtype=torch.bool)
    assert iou[both].max() <= 0.5 + 1e-5
    # Invalid slots hold zeros.
    assert (pairs.boxes1[~valid] == 0).all() and (pairs.boxes2[~valid] == 0).all()
    # Where the overlap is large, all K boxes are found.
    ov_wh = ov[:, 0, 2:] - ov[:, 0, :2]
    large = (ov_wh / (geom1.crop[:, 2:] - geom1.crop[:, :2])).min(dim=1).values > 0.5
    assert large.sum() > 1000
    assert valid[large].float().mean() > 0.99
    assert valid.float().mean() > 0.95


def test_all_invalid_without_overlap_or_when_overlap_is_too_small():
    size = torch.full((3, 2), 224.0, dtype=torch.float64)
    crop1 = torch.tensor([[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100]], dtype=torch.float64)
    # Disjoint; touching at an edge; overlapping by 10 source px (= 22 view px < 32).
    crop2 = torch.tensor([[200, 200, 300, 300], [100, 0, 200, 100], [90, 0, 190, 100]], dtype=torch.float64)
    flipped = torch.zeros(3, dtype=torch.bool)
    pairs = sample_box_pairs(ViewGeometry(crop1, flipped, size), ViewGeometry(crop2, flipped, size))
    assert not pairs.valid.any()
    assert (pairs.boxes1 == 0).all() and (pairs.boxes2 == 0).all()


def test_min_size_is_measured_in_the_view_where_the_overlap_looks_smallest():
    # View 1 magnifies 4x, view 2 shows the same region at 0.5x: boxes need >= 64 source px.
    geom1 = ViewGeometry.full(1000, 1000).crop_to([0.0, 0.0, 56.0, 56.0]).resize(224, 224)
    geom2 = ViewGeometry.full(1000, 1000).crop_to([0.0, 0.0, 448.0, 448.0]).resize(224, 224)
    pairs = sample_box_pairs(geom1, geom2, min_size=32)
    assert not pairs.valid.any()  # the overlap is 56 source px, 28 px in view 2
    geom1 = ViewGeometry.full(1000, 1000).crop_to([0.0, 0.0, 200.0, 200.0]).resize(224, 224)
    pairs = sample_box_pairs(geom1, geom2, min_size=32, generator=torch.Generator().manual_seed(0))
    assert pairs.valid.any()
    wh2 = (pairs.boxes2[..., 2:] - pairs.boxes2[..., :2])[pairs.valid]
    assert wh2.min() >= 32 - 1e-4


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0])
def test_keeps_exactly_what_the_sequential_rule_keeps_from_the_same_candidates(threshold):
    """Per image, the first K candidates that the paper's sequential rule keeps, in draw order."""
    from scrl.box_sampler import _draw_candidates, _first_fit

    geom1, geom2 = random_view_pairs(200, seed=5, size=96)
    lo = torch.maximum(geom1.crop[:, :2], geom2.crop[:, :2]).float().T
    extent = torch.minimum(geom1.crop[:, 2:], geom2.crop[:, 2:]).float().T - lo
    min_extent = 32 / torch.minimum(geom1.scale, geom2.scale).float().T
    candidates = _draw_candidates(lo, extent, min_extent, 60, "uniform", torch.Generator().manual_seed(0))
    ok = (extent >= min_extent).all(dim=0)[:, None].expand(-1, 60)
    index, valid = _first_fit(candidates, ok, 10, threshold)
    short = 0
    for n in range(200):
        reference = sequential_greedy(candidates[:, n].T, threshold)[:10] if ok[n, 0] else []
        assert index[n, : len(reference)].tolist() == reference
        assert valid[n].tolist() == [True] * len(reference) + [False] * (10 - len(reference))
        short += len(reference) < 10
    if threshold == 0.5:
        assert 20 < short < 180  # 96-px views: both full and crowded images are exercised


@pytest.mark.parametrize("size, pairs, target", [(96, 300, 0.97), (224, 100, 0.995)])
def test_fills_as_many_boxes_as_the_papers_fifty_tries_per_box(size, pairs, target):
    """Mean kept boxes per feasible image vs the paper's procedure (draw again, up to 50 times a box)."""
    geom1, geom2 = random_view_pairs(pairs, seed=11, size=size)
    pairs = sample_box_pairs(geom1, geom2, generator=torch.Generator().manual_seed(0))
    rng = torch.Generator().manual_seed(1)
    feasible_counts, ours = [], []
    for n, (lo_hi, scale1, scale2) in enumerate(zip(overlap(geom1, geom2).tolist(), geom1.scale, geom2.scale)):
        w_min, h_min = (32 / torch.minimum(scale1, scale2)).tolist()
        (x0, y0, x1, y1) = lo_hi
        if x1 - x0 < w_min or y1 - y0 < h_min:
            assert not pairs.valid[n].any()
            continue
        kept: list[list[float]] = []
        for _ in range(10):
            for _ in range(50):
                u = torch.rand(4, generator=rng, dtype=torch.float64).tolist()
                w, h = w_min + u[0] * (x1 - x0 - w_min), h_min + u[1] * (y1 - y0 - h_min)
                box = [x0 + u[2] * (x1 - x0 - w), y0 + u[3] * (y1 - y0 - h)]
                box += [box[0] + w, box[1] + h]
                if not kept or box_iou(torch.tensor([box]), torch.tensor(kept)).max() <= 0.5:
                    kept.append(box)
                    break
        feasible_counts.append(len(kept))
        ours.append(int(pairs.valid[n].sum()))
    ratio = sum(ours) / sum(feasible_counts)
    if size == 96:
        assert sum(feasible_counts) / len(feasible_counts) < 9  # a crowded regime, where fill is hard
    assert ratio >= target, ratio


def fixed_pair(n: int) -> tuple[ViewGeometry, ViewGeometry, float, float]:
    """``n`` copies of one view pair: overlap [100, 300] x [50, 200] source px; returns the minimum box size too."""
    geom1 = ViewGeometry.full(400, 300).crop_to([100.0, 50.0, 400.0, 300.0]).resize(224, 224)
    geom2 = ViewGeometry.full(400, 300).crop_to([0.0, 0.0, 300.0, 200.0]).resize(224, 224).hflip()
    batch = [torch.utils.data.default_collate([g] * n) for g in (geom1, geom2)]
    # 32 view px: 32 * 300 / 224 = 42.9 source px wide in both views, 32 * 250 / 224 = 35.7 high in view 1.
    return batch[0], batch[1], 32 * 300 / 224, 32 * 250 / 224


def test_uniform_boxes_follow_eq_1():
    """Without rejection each box is one draw of Eq. 1: w ~ U(W_min, W^), x ~ U(0, W^ - w), likewise h, y."""
    geom1, geom2, w_min, h_min = fixed_pair(20000)
    pairs = sample_box_pairs(geom1, geom2, num_boxes=1, iou_threshold=None, candidates_per_box=1, generator=torch.Generator().manual_seed(0))
    assert pairs.valid.all()
    box = geom1.view_to_source(pairs.boxes1.double())[:, 0]
    torch.testing.assert_close(geom2.view_to_source(pairs.boxes2.double())[:, 0], box, rtol=0, atol=1e-3)
    x0, y0, x1, y1 = box.unbind(1)
    w, h = x1 - x0, y1 - y0
    standard_error = (1 / 12 / len(box)) ** 0.5  # of the mean of U(0, 1)
    for name, u in (
        ("width", (w - w_min) / (200 - w_min)),
        ("height", (h - h_min) / (150 - h_min)),
        ("left", (x0 - 100) / (200 - w)),
        ("top", (y0 - 50) / (150 - h)),
    ):
        assert u.min() >= -1e-6 and u.max() <= 1 + 1e-6, name
        assert abs(u.mean().item() - 0.5) < 4 * standard_error, name
        assert abs(u.std().item() - 12**-0.5) < 0.01, name
        quartiles = torch.quantile(u.float(), torch.tensor([0.25, 0.5, 0.75]))
        torch.testing.assert_close(quartiles, torch.tensor([0.25, 0.5, 0.75]), rtol=0, atol=0.02, msg=name)


def test_grid_boxes_fall_in_one_cell_of_a_random_grid():
    """mode="grid": the overlap is split into c ~ U{1..floor(W^ / W_min)} cells per axis and the box is drawn in one."""
    geom1, geom2, w_min, h_min = fixed_pair(20000)
    pairs = sample_box_pairs(geom1, geom2, num_boxes=1, iou_threshold=None, candidates_per_box=1, mode="grid", generator=torch.Generator().manual_seed(0))
    assert pairs.valid.all()
    x0, _, x1, _ = geom1.view_to_source(pairs.boxes1.double())[:, 0].unbind(1)
    w = x1 - x0
    assert w.min() >= w_min - 1e-3 and x0.min() >= 100 - 1e-3 and x1.max() <= 300 + 1e-3
    # Mean width over c = 1..4 cells (200 / 42.9 = 4.7): E[w] = mean_c (W_min + 200 / c) / 2.
    cells = range(1, math.floor(200 / w_min) + 1)
    expected = sum((w_min + 200 / c) / 2 for c in cells) / len(cells)
    assert abs(w.mean().item() - expected) < 1.0  # about 8 standard errors; uniform mode gives 121


def test_iou_threshold_none_keeps_the_first_candidates():
    geom1, geom2 = random_view_pairs(64, seed=2)
    pairs = sample_box_pairs(geom1, geom2, iou_threshold=None, generator=torch.Generator().manual_seed(0))
    feasible = pairs.valid.any(dim=1)
    assert pairs.valid[feasible].all()  # nothing rejected
    iou = box_iou_pairwise(pairs.boxes1[feasible])
    assert (iou > 0.5).any()  # and overlapping boxes do occur without rejection


def test_same_seed_same_boxes_and_different_seed_different_boxes():
    geom1, geom2 = random_view_pairs(32, seed=3)
    sampler = BoxPairSampler()
    a = sampler(geom1, geom2, generator=torch.Generator().manual_seed(7))
    b = sampler(geom1, geom2, generator=torch.Generator().manual_seed(7))
    c = sampler(geom1, geom2, generator=torch.Generator().manual_seed(8))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.boxes1, c.boxes1)


def test_jitter_moves_view2_boxes_by_at_most_the_ratio():
    geom1, geom2 = random_view_pairs(500, seed=4)
    plain = sample_box_pairs(geom1, geom2, generator=torch.Generator().manual_seed(0))
    jittered = sample_box_pairs(geom1, geom2, jitter=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.boxes1, jittered.boxes1) and torch.equal(plain.valid, jittered.valid)
    v = plain.valid
    wh = (plain.boxes2[..., 2:] - plain.boxes2[..., :2])[v]
    shift = (jittered.boxes2 - plain.boxes2)[v].abs()
    # centre moves <= 0.1 w, half-size changes <= 0.05 w: each edge moves <= 0.15 w.
    assert (shift <= 0.15 * wh.repeat(1, 2) + 1e-3).all()
    assert shift.max() > 0
    assert ((jittered.boxes2 >= 0) & (jittered.boxes2 <= 224)).all()


def test_single_view_geometry_is_a_batch_of_one():
    geom1 = ViewGeometry.full(300, 200).crop_to([0.0, 0.0, 200.0, 200.0]).resize(96, 96)
    geom2 = ViewGeometry.full(300, 200).crop_to([50.0, 0.0, 250.0, 200.0]).resize(96, 96).hflip()
    pairs = sample_box_pairs(geom1, geom2, num_boxes=4, min_size=16, generator=torch.Generator().manual_seed(0))
    assert isinstance(pairs, BoxPairs) and pairs.boxes1.shape == (1, 4, 4)
    assert pairs.valid.all()
    moved = pairs.to("cuda" if torch.cuda.is_available() else "cpu", non_blocking=True)
    assert isinstance(moved, BoxPairs) and all(torch.equal(a.cpu(), b) for a, b in zip(moved, pairs))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_boxes": 0}, "num_boxes"),
        ({"num_boxes": 2.5}, "num_boxes"),
        ({"min_size": 0}, "min_size"),
        ({"min_size": -3}, "min_size"),
        ({"iou_threshold": -0.1}, "iou_threshold"),
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"jitter": -0.1}, "jitter"),
        ({"mode": "random"}, "mode"),
        ({"candidates_per_box": 0}, "candidates_per_box"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BoxPairSampler(**kwargs)
    geom1, geom2 = random_view_pairs(2, seed=0)
    with pytest.raises(ValueError, match=name):
        sample_box_pairs(geom1, geom2, **kwargs)


def test_mismatched_batches_raise():
    geom1, _ = random_view_pairs(3, seed=0)
    _, geom2 = random_view_pairs(4, seed=0)
    with pytest.raises(ValueError, match="same batch shape"):
        sample_box_pairs(geom1, geom2)


def test_repr_lists_settings():
    assert "num_boxes=10" in repr(BoxPairSampler()) and "iou_threshold=0.5" in repr(BoxPairSampler())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_invariants_and_does_not_sync():
    geom1, geom2 = random_view_pairs(256, seed=6)
    geom1, geom2 = geom1.to("cuda"), geom2.to("cuda")
    sampler = BoxPairSampler()
    sampler(geom1, geom2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pairs = sampler(geom1, geom2, generator=torch.Generator("cuda").manual_seed(0))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert pairs.boxes1.is_cuda and pairs.valid.float().mean().item() > 0.95
