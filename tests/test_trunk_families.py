"""Every family of torchvision CNN trunks: stride, channels, where their cells look, pooling, grouping, export.

Cell centres are measured as in tests/test_cell_centre.py, on a copy of each trunk made linear
and positive (constant positive kernels, identity activations and norms, average pools for
max-pools, squeeze-and-excitation gates left out, since they scale channels by global means and
move no cell). How each family gets there: ResNet/ResNeXt/Wide ResNet, RegNetX, EfficientNet
and MobileNetV3 are convolutions, norms and activations throughout; RegNetY, EfficientNet and
MobileNetV3 add squeeze-and-excitation gates; ConvNeXt adds LayerNorms (identities in the
copy), layer scales (kept: they scale a residual branch and move nothing) and stochastic depth
(identity in eval mode).
"""

import pytest
import torch
import torchvision

from scrl import BYOL, SCRL, BoxPairs, RoIPairPool, lars_param_groups
from scrl.cell_centre import gradient_centroid, linearised_copy, measure_cell_offset
from scrl.export import to_torchvision
from scrl.trunk import FAMILIES, supported_archs, torchvision_trunk
from scrl.lars import NORM_LAYERS

from test_cell_centre import BOXES, VIEW, pooled_feature_centres

# One representative per family (and per prefix of the resnet and efficientnet families).
REPRESENTATIVES = [
    "resnet18", pytest.param("resnext50_32x4d", marks=pytest.mark.slow), pytest.param("wide_resnet50_2", marks=pytest.mark.slow),
    "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny", "efficientnet_b0", pytest.param("efficientnet_v2_s", marks=pytest.mark.slow),
    "mobilenet_v3_small",
]
SMALL = dict(projector_hidden=16, projection_dim=8)


def test_every_family_and_its_names_are_supported():
    names = supported_archs()
    for family in FAMILIES.values():
        assert any(name.startswith(family.prefixes) for name in names)
    assert {"resnet50", "resnext101_32x8d", "wide_resnet50_2", "regnet_y_800mf", "convnext_tiny", "efficientnet_v2_s",
            "mobilenet_v3_large"} <= set(names)
    with pytest.raises(ValueError, match=r"arch 'vgg16' is not a supported trunk.*convnext.*supported_archs\(\)"):
        torchvision_trunk("vgg16")
    with pytest.raises(ValueError, match="not a supported trunk"):
        SCRL("densenet121")


@pytest.mark.parametrize("arch", REPRESENTATIVES)
def test_each_family_declares_the_stride_channels_and_cell_centres_its_layers_have(arch):
    trunk = torchvision_trunk(arch)
    assert trunk.arch == arch and trunk.stride == 32
    trunk.eval()
    with torch.no_grad():
        fmap = trunk(torch.zeros(1, 3, 224, 224))
    assert fmap.shape[1:] == (trunk.channels, 7, 7)
    assert measure_cell_offset(trunk.body, 32) == trunk.cell_offset  # declared, and what the probe finds
    assert SCRL(trunk, **SMALL).projector.fc1.in_features == trunk.channels


@pytest.mark.parametrize("arch", ["regnet_y_400mf", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small"])
def test_pooled_features_look_at_their_box_centre_on_every_family(arch):
    trunk = torchvision_trunk(arch)
    model = SCRL(trunk, **SMALL)
    # Sample points (at least 8 px inside a box's edges) within the span of the cells' centres:
    # before ConvNeXt's first cell centre, 16 px in, there is no cell to interpolate from, and
    # RoIAlign clamps to it (docs/trunks.md).
    first, last = trunk.cell_offset, 32 * (VIEW // 32 - 1) + trunk.cell_offset
    boxes = BOXES[((BOXES[:, :2] >= first - 8) & (BOXES[:, 2:] <= last + 8)).all(dim=1)]
    assert len(boxes) >= 2
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    exact = pooled_feature_centres(linearised_copy(trunk.body), model.roi_pool, boxes)
    assert (exact - centres).abs().max() < 1.0, exact - centres


@pytest.mark.parametrize("arch", REPRESENTATIVES)
def test_lars_groups_norms_biases_and_layer_scales_apart_on_every_family(arch):
    trunk = torchvision_trunk(arch)
    adapted, excluded = lars_param_groups(trunk, weight_decay=1e-6)
    norm = {id(p) for m in trunk.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    for p in adapted["params"]:
        assert id(p) not in norm and p.ndim >= 2 and sum(s > 1 for s in p.shape) >= 2
    assert {id(p) for p in excluded["params"]} >= norm
    assert len(adapted["params"]) + len(excluded["params"]) == len(list(trunk.parameters()))
    if arch.startswith("convnext"):  # the layer scales [C, 1, 1] are excluded as per-channel scales
        scales = [m.layer_scale for m in trunk.modules() if hasattr(m, "layer_scale")]
        assert scales and all(any(p is s for p in excluded["params"]) for s in scales)


@pytest.mark.parametrize("arch", REPRESENTATIVES)
def test_the_torchvision_export_of_every_family_loads_into_its_classifier_minus_the_head(arch):
    model = BYOL(arch, **SMALL)
    state = to_torchvision(model)
    classifier = torchvision.models.get_model(arch, weights=None)
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    head = FAMILIES[next(n for n, f in FAMILIES.items() if arch.startswith(f.prefixes))].classifier
    assert unexpected == [] and missing and all(k.split(".")[0] == head for k in missing)
    key = next(iter(state))
    assert torch.equal(classifier.state_dict()[key], model.backbone_state_dict()[key])
    # A torchvision classifier instance becomes a trunk with the same weights and name.
    again = torchvision_trunk(classifier)
    assert again.arch == (None if arch.startswith("regnet") else arch)
    assert torch.equal(again.body.state_dict()[key], state[key])


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_a_non_resnet_trunk_trains_under_bf16_and_channels_last(cls):
    model = cls("mobilenet_v3_small", **SMALL).to(memory_format=torch.channels_last)
    from test_models import view_batch

    v1, v2, g1, g2 = view_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = model(v1.contiguous(memory_format=torch.channels_last), v2, g1, g2)
    loss.backward()
    assert loss.dtype == torch.float32 and model.trunk.body.features[0][0].weight.grad is not None


# ---------------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("name, offset", [("resnet18", 0.5), ("convnext_nano", 16.0), ("regnety_002", 0.5), ("mobilenetv3_small_100", 0.5)])
def test_timm_trunks_measure_their_cells_and_export_timm_state_dicts(name, offset):
    timm = pytest.importorskip("timm")
    from scrl.export import to_timm
    from scrl.trunk import timm_trunk

    trunk = timm_trunk(f"timm:{name}")
    assert (trunk.arch, trunk.stride, trunk.cell_offset) == (f"timm:{name}", 32, offset)
    model = BYOL(trunk, **SMALL)
    state = to_timm(model)
    reference = timm.create_model(name, pretrained=False)
    missing, unexpected = reference.load_state_dict(state, strict=False)
    classifier = reference.default_cfg["classifier"]
    assert unexpected == [] and missing and all(k.startswith(classifier) for k in missing)


def test_a_timm_convnext_pools_features_at_its_box_centres():
    pytest.importorskip("timm")
    trunk = SCRL("timm:convnext_nano", **SMALL).trunk
    boxes = BOXES[((BOXES[:, :2] >= trunk.cell_offset - 8) & (BOXES[:, 2:] <= 32 * (VIEW // 32 - 1) + trunk.cell_offset + 8)).all(dim=1)]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    exact = pooled_feature_centres(linearised_copy(trunk.body), SCRL(trunk, **SMALL).roi_pool, boxes)
    assert (exact - centres).abs().max() < 1.0, exact - centres


def test_import_scrl_never_needs_timm(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['timm'] = None\n"
        "import scrl, scrl.train, scrl.eval, scrl.export\n"
        "from scrl.trunk import timm_trunk\n"
        "try:\n    timm_trunk('timm:resnet18')\nexcept ValueError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'needs timm: pip install "scrl[timm]"' in result.stdout


def _source_point_gap(trunk, pool: RoIPairPool) -> torch.Tensor:
    """Distance (view px) between where a box's pooled feature looks in a view and in its mirror image.

    Real random-init weights in eval mode; where a feature looks is the centroid of the absolute
    gradient of its squared norm, with the view in the middle of a zero canvas (no cell cut off).
    """
    torch.manual_seed(0)
    image, margin = torch.rand(1, 3, VIEW, VIEW), 160
    boxes1 = torch.tensor([[40.0, 50.0, 120.0, 130.0], [90.0, 30.0, 150.0, 100.0]])
    boxes2 = torch.stack([VIEW - boxes1[:, 2], boxes1[:, 1], VIEW - boxes1[:, 0], boxes1[:, 3]], dim=1)

    def looks_at(view, boxes):
        canvas = torch.zeros(len(boxes), 3, VIEW + 2 * margin, VIEW + 2 * margin)
        canvas[:, :, margin:-margin, margin:-margin] = view
        canvas.requires_grad_(True)
        cells = margin // 32
        fmap = trunk(canvas)[..., cells : cells + VIEW // 32, cells : cells + VIEW // 32]
        pooled, _, _ = pool(fmap, fmap, BoxPairs(boxes[:, None], boxes[:, None], torch.ones(len(boxes), 1, dtype=torch.bool)))
        pooled.square().sum().backward()
        return torch.tensor([gradient_centroid(g) for g in canvas.grad]) - margin

    plain, mirrored = looks_at(image, boxes1), looks_at(image.flip(-1), boxes2)
    return (plain - torch.stack([VIEW - mirrored[:, 0], mirrored[:, 1]], dim=1)).norm(dim=1)


@pytest.mark.parametrize("arch", ["resnet18", "regnet_y_400mf", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small"])
def test_a_box_and_its_mirrored_partner_pool_the_same_source_point_on_real_weights(arch):
    trunk = torchvision_trunk(arch).eval()
    exact = _source_point_gap(trunk, RoIPairPool(32, cell_offset=trunk.cell_offset))
    assert exact.max() < 5.0, exact
    detectron2 = _source_point_gap(trunk, RoIPairPool(32, aligned=True))
    if trunk.cell_offset == 16.0:  # RoIAlign's aligned=True assumes (i + 0.5) * 32: right for ConvNeXt
        assert detectron2.max() < 5.0, detectron2
    else:  # 15.5 px off in each view, in opposite source directions
        assert detectron2.min() > 15.0, detectron2


def test_timm_layers_outside_the_features_are_frozen_so_every_trained_parameter_gets_a_gradient():
    pytest.importorskip("timm")
    from scrl.trunk import timm_trunk

    trunk = timm_trunk("timm:mobilenetv3_small_100")
    frozen = [n for n, p in trunk.named_parameters() if not p.requires_grad]
    assert frozen and all(".conv_head." in n for n in frozen)
    trunk(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in trunk.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no CNN feature map"):
        timm_trunk("timm:vit_tiny_patch16_224")


def test_a_plain_non_resnet_state_dict_asks_for_its_name():
    with pytest.raises(ValueError, match=r"pass its name as arch= \(--arch convnext_tiny\)"):
        to_torchvision(torchvision.models.mobilenet_v3_small().state_dict())
    assert to_torchvision(torchvision.models.mobilenet_v3_small().state_dict(), arch="mobilenet_v3_small")
