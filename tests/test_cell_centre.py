"""Where feature cells look, and that pooled box features come from where their boxes are.

"Where a feature looks" is measured as in the reference: the centroid of the gradient of the
feature with respect to the input, on a copy of the trunk made linear and positive (constant
positive kernels, identity activations and norms, average pools for max-pools), whose cells
then respond to a symmetric bump centred where they look. The view sits in the middle of a
larger zero canvas, so that no cell's bump is cut off by the image border: the tests locate the
sampling point of each box, the border included, not the zero padding's pull on edge cells.
"""

import pytest
import torch
from torch import nn

from scrl import SCRL, BoxPairs, BoxPairSampler, RoIPairPool, Trunk, ViewGeometry, resnet_trunk
from scrl.cell_centre import gradient_centroid, linearised_copy, map_cell_geometry, measure_cell_offset

RESNETS = ["resnet18", "resnet34", pytest.param("resnet50", marks=pytest.mark.slow), pytest.param("resnet101", marks=pytest.mark.slow)]
VIEW = 192  # 6 x 6 C5 cells
MARGIN = 224  # 7 cells of zero canvas on every side


def pooled_feature_centres(body: nn.Module, pool: RoIPairPool, boxes: torch.Tensor, margin: int = MARGIN) -> torch.Tensor:
    """Gradient centroids ``[B, 2]`` (view px) of box ``b`` pooled on the C5 map of view ``b``."""
    cells, stride = margin // 32, 32
    canvas = torch.zeros(len(boxes), 3, VIEW + 2 * margin, VIEW + 2 * margin, requires_grad=True)
    full_map = body(canvas)
    view_map = full_map[..., cells : cells + VIEW // stride, cells : cells + VIEW // stride]
    pairs = BoxPairs(boxes[:, None], boxes[:, None], torch.ones(len(boxes), 1, dtype=torch.bool))
    pooled, _, _ = pool(view_map, view_map, pairs)
    pooled.sum().backward()
    return torch.tensor([gradient_centroid(g) for g in canvas.grad]) - margin


@pytest.mark.parametrize("arch", RESNETS)
def test_resnet_cells_are_centred_half_a_pixel_in_at_every_stage(arch):
    trunk = resnet_trunk(arch)
    assert trunk.cell_offset == 0.5
    assert measure_cell_offset(trunk.body, 32) == 0.5
    if arch == "resnet18":
        assert measure_cell_offset(trunk.body, 16, stage="layer3", size=256) == 0.5
        assert measure_cell_offset(trunk.body, 4, stage="layer1", size=128) == 0.5


@pytest.mark.parametrize(
    "body, stride, offset",
    [
        (nn.Conv2d(3, 4, 4, stride=4), 4, 2.0),  # non-overlapping patches (ConvNeXt's stem): stride / 2
        (nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1)), 4, 0.5),
        (nn.Sequential(nn.Conv2d(3, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.MaxPool2d(2)), 4, 2.0),
        (nn.Conv2d(3, 4, 3, stride=2), 2, 1.5),  # no padding: output j over inputs 2j .. 2j + 2
    ],
)
def test_the_probe_finds_the_offset_the_layers_imply(body, stride, offset):
    assert measure_cell_offset(body, stride) == offset
    assert Trunk(body, stride=stride, channels=4).cell_offset == offset  # measured when not given
    assert Trunk(body, stride=stride, channels=4, cell_offset=1.0).cell_offset == 1.0


def test_the_probe_leaves_the_module_alone_and_rejects_what_it_cannot_measure():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    before = conv.weight.clone()
    linear = linearised_copy(nn.Sequential(conv, nn.ReLU()))
    assert torch.equal(conv.weight, before) and isinstance(linear[1], nn.Identity)

    class Constant(nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 2, x.shape[2] // 8, x.shape[3] // 8)

    with pytest.raises(ValueError, match="does not depend on the input"):
        Trunk(Constant(), stride=8, channels=2)
    with pytest.raises(ValueError, match="stride"):
        measure_cell_offset(conv, 0)
    with pytest.raises(ValueError, match="stage"):
        measure_cell_offset(conv, 1, stage="layer9")
    with pytest.raises(ValueError, match="cell_offset"):
        Trunk(conv, stride=1, channels=4, cell_offset=float("inf"))
    with pytest.raises(ValueError, match="does not fit the map"):
        measure_cell_offset(nn.Conv2d(3, 4, 4, stride=4), 16)  # a wrong stride is not a huge offset
    with pytest.raises(ValueError, match="dilated max-pool"):
        measure_cell_offset(nn.Sequential(conv, nn.MaxPool2d(2, dilation=2)), 2)


def test_the_probe_works_while_evaluating_through_functional_activations_and_ignores_hooks():
    class FunctionalRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 4, 4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    module = FunctionalRelu()
    calls = []
    module.a.register_forward_hook(lambda *_: calls.append(1))
    # b's cell k spans a's cells 4k .. 4k + 3 (centre 4k + 1.5); a's cell c sits on input pixel
    # 2c: input index 8k + 3, centred at 8k + 3.5.
    with torch.inference_mode():
        assert measure_cell_offset(module, 8) == 3.5
    with torch.no_grad():
        assert measure_cell_offset(module, 8) == 3.5
    assert calls == []


def test_map_geometry_is_the_trunks_own_or_read_off_and_measured():
    trunk = resnet_trunk("resnet18")
    assert map_cell_geometry(trunk, 224, 7) == (32, 0.5)
    assert map_cell_geometry(trunk, 224, 14, stage="layer3") == (16, 0.5)
    assert map_cell_geometry(nn.Conv2d(3, 4, 8, stride=8), 64, 8) == (8, 4.0)


# A 192-px view has 6 x 6 C5 cells centred at 32i + 0.5, i.e. from 0.5 to 160.5 px. RoIAlign
# interpolates between cell centres and clamps beyond the outer ones, so a box is pooled exactly
# when its sample points (at most half a bin, 16 px, in from its far edges) stay within that
# span: x1, y1 <= 168.5. Boxes in the middle, on the top-left corner, and along the edges:
BOXES = torch.tensor(
    [[70.0, 60.0, 130.0, 140.0], [0.0, 0.0, 40.0, 48.0], [120.0, 110.0, 168.0, 168.0], [0.0, 80.0, 34.0, 168.0]]
)


def within_cell_span(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2:] <= 32 * (VIEW // 32 - 1) + 0.5 + 8).all(dim=1)


@pytest.mark.parametrize("arch", RESNETS)
def test_pooled_features_look_at_their_box_centre_on_every_resnet(arch):
    trunk = resnet_trunk(arch)
    model = SCRL(trunk, projector_hidden=8, projection_dim=4)
    body = linearised_copy(trunk.body)
    centres = (BOXES[:, :2] + BOXES[:, 2:]) / 2
    exact = pooled_feature_centres(body, model.roi_pool, BOXES)
    assert (exact - centres).abs().max() < 1.0, exact - centres
    # The two RoIAlign conventions miss by their measured offsets (interior box; at the borders
    # roi_align also clamps their sample points).
    detectron2 = pooled_feature_centres(body, RoIPairPool(32, aligned=True), BOXES[:1])
    authors = pooled_feature_centres(body, RoIPairPool(32, aligned=False), BOXES[:1])
    torch.testing.assert_close(detectron2 - centres[:1], torch.full((1, 2), -15.5), atol=0.5, rtol=0)
    torch.testing.assert_close(authors - centres[:1], torch.full((1, 2), 0.5), atol=0.5, rtol=0)


def test_a_flipped_view_pair_pools_both_boxes_at_the_same_source_point():
    # View 1 plain, view 2 mirrored, both 192-px views of different crops of a 400 x 300 image.
    geom1 = ViewGeometry.full(400, 300).crop_to([40.0, 20.0, 340.0, 290.0]).resize(VIEW, VIEW)
    geom2 = ViewGeometry.full(400, 300).crop_to([90.0, 0.0, 370.0, 260.0]).resize(VIEW, VIEW).hflip()
    batch1, batch2 = (torch.utils.data.default_collate([g]) for g in (geom1, geom2))
    pairs = BoxPairSampler(num_boxes=30, min_size=16)(batch1, batch2, generator=torch.Generator().manual_seed(0))
    boxes1, boxes2 = pairs.boxes1[pairs.valid], pairs.boxes2[pairs.valid]
    inside = within_cell_span(boxes1) & within_cell_span(boxes2)
    boxes1, boxes2 = boxes1[inside][:4], boxes2[inside][:4]
    assert len(boxes1) == 4
    body = linearised_copy(resnet_trunk("resnet18").body)  # a narrower bump: a 160-px margin is enough

    def source_points(geom: ViewGeometry, boxes: torch.Tensor, pool: RoIPairPool) -> torch.Tensor:
        centres = pooled_feature_centres(body, pool, boxes, margin=160)
        points = torch.cat([centres, centres], dim=1)  # a zero-size box at the pooled point
        return geom.view_to_source(points)[:, :2]

    exact = RoIPairPool(32)
    apart = (source_points(geom1, boxes1, exact) - source_points(geom2, boxes2, exact)).norm(dim=1)
    assert apart.max() < 1.0, apart
    # Detectron2's convention pulls the two features apart in opposite source directions.
    detectron2 = RoIPairPool(32, aligned=True)
    apart = (source_points(geom1, boxes1[:2], detectron2) - source_points(geom2, boxes2[:2], detectron2)).norm(dim=1)
    assert apart.min() > 20, apart
