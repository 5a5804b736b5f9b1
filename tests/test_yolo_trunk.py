"""Ultralytics YOLO backbones as trunks: the detector's own layers and keys, where their cells look, training, compile.

Where the cells look is worked out by hand for the layers and compared with the probe: every
stride-2 layer of YOLOv8/11/12 is a 3x3 convolution with padding 1, which puts output j over
input 2j, so stride-32 cell i is centred on pixel 32i (offset 0.5); the 6x6 stride-2 stem of
YOLOv5u (padding 2) centres output j on input 2j + 0.5, so every later cell sits half a pixel on
(offset 1.0). SPPF's stride-1 max-pools are symmetric, and the attention blocks (C2PSA, A2C2f)
keep each cell where it is: the probe leaves them out and must find the same offset as on the
layers before them.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

if importlib.util.find_spec("ultralytics") is None:  # not imported here: its import patches PIL for the whole session
    pytest.skip("ultralytics is not installed", allow_module_level=True)

from scrl import BYOL, SCRL, lars_param_groups  # noqa: E402
from scrl.cell_centre import linearised_copy, measure_cell_offset  # noqa: E402
from scrl.lars import NORM_LAYERS  # noqa: E402
from scrl.transforms import normalize_images  # noqa: E402
from scrl.trunk import create_trunk  # noqa: E402
from scrl.yolo_trunk import detection_model  # noqa: E402

from test_cell_centre import BOXES, VIEW, pooled_feature_centres  # noqa: E402

SMALL = dict(projector_hidden=16, projection_dim=8)
COCO128_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train" / "images"
# name: (backbone layers to stride 32, channels, cell offset worked out from the layers, blocks the probe leaves out)
YOLOS = {
    "yolo11n.yaml": (11, 256, 0.5, ("C2PSA",)),
    "yolov8n.yaml": (10, 256, 0.5, ()),
    "yolo12n.yaml": (9, 256, 0.5, ("A2C2f",)),
    "yolov5nu.yaml": (10, 256, 1.0, ()),
    "yolov8n-p6.yaml": (9, 192, 0.5, ()),  # its backbone goes on to stride 64: the stride-32 part is the trunk
}


@pytest.mark.parametrize("name", list(YOLOS))
def test_a_yolo_trunk_is_the_detectors_own_backbone_with_its_keys_and_output(name):
    layers, channels, _, _ = YOLOS[name]
    trunk = create_trunk("ultralytics:" + name)
    assert (trunk.arch, trunk.stride, trunk.channels) == ("ultralytics:" + name, 32, channels)
    detector = detection_model(name)
    backbone = {k: v for k, v in detector.state_dict().items() if int(k.split(".")[1]) < layers}
    assert trunk.backbone_state_dict().keys() == backbone.keys()
    trunk.load_backbone_state_dict(backbone)
    pixels = torch.rand(2, 3, 128, 96)  # what Ultralytics feeds its detectors: RGB in [0, 1]
    trunk.eval(), detector.eval()
    with torch.no_grad():
        # The trunk takes views normalised as every scrl trunk does, and gives its layers the pixels.
        features = trunk(normalize_images(pixels))
        torch.testing.assert_close(features, detector.model[:layers](pixels), rtol=1e-4, atol=1e-4)
    assert features.shape == (2, channels, 4, 3)


@pytest.mark.parametrize("name", list(YOLOS))
def test_a_yolo_trunk_declares_the_cell_offset_its_layers_give(name):
    _, _, offset, left_out = YOLOS[name]
    trunk = create_trunk("ultralytics:" + name)
    assert trunk.cell_offset == offset
    layers = list(trunk.body.model)
    first_left_out = next((i for i, layer in enumerate(layers) if type(layer).__name__ in left_out and i >= 7), len(layers))
    # The layers before an attention block at stride 32 are convolutions and pools only.
    assert measure_cell_offset(nn.Sequential(*layers[:first_left_out]), 32) == offset


def test_yolo11_features_pool_at_their_box_centres():
    trunk = create_trunk("ultralytics:yolo11n.yaml")
    model = SCRL(trunk, **SMALL)
    first, last = trunk.cell_offset, 32 * (VIEW // 32 - 1) + trunk.cell_offset
    boxes = BOXES[((BOXES[:, :2] >= first - 8) & (BOXES[:, 2:] <= last + 8)).all(dim=1)]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    exact = pooled_feature_centres(linearised_copy(trunk.body), model.roi_pool, boxes)
    assert (exact - centres).abs().max() < 1.0, exact - centres


def test_lars_groups_keep_the_yolo_norms_and_biases_apart():
    trunk = create_trunk("ultralytics:yolo11n.yaml")
    adapted, excluded = lars_param_groups(trunk, weight_decay=1e-6)
    norm = {id(p) for m in trunk.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    assert norm and {id(p) for p in excluded["params"]} >= norm
    assert all(p.ndim == 4 for p in adapted["params"])  # only the convolutions' kernels are adapted
    assert len(adapted["params"]) + len(excluded["params"]) == len(list(trunk.parameters()))


@pytest.mark.parametrize("cls", [SCRL, BYOL])
def test_a_yolo_trunk_trains_under_bf16_and_channels_last(cls):
    from test_models import view_batch

    model = cls("ultralytics:yolo11n.yaml", **SMALL).to(memory_format=torch.channels_last)
    v1, v2, g1, g2 = view_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(v1.contiguous(memory_format=torch.channels_last), v2, g1, g2)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.trunk.parameters())  # every backbone layer is on the path


@pytest.mark.slow
def test_a_yolo_scrl_step_compiles_without_graph_breaks():
    from test_compile import views_and_geometries

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = SCRL("ultralytics:yolo11n.yaml", **SMALL)
    inputs = views_and_geometries()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    loss_c, _ = compiled(*inputs, generator=None)
    torch.manual_seed(1)
    loss_e, _ = model(*inputs, generator=None)
    torch._dynamo.reset()
    torch.testing.assert_close(loss_c, loss_e)


@pytest.mark.parametrize("name, message", [
    ("yolo11n.pt", "model YAML"), ("yolo99z.yaml", "no model YAML"), ("yolo11n-cls.yaml", "classifier"),
])
def test_names_that_build_no_yolo_backbone_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        create_trunk("ultralytics:" + name)


def test_import_scrl_never_imports_ultralytics_and_a_missing_one_says_how_to_install():
    code = (
        "import sys\n"
        "import scrl, scrl.train, scrl.eval, scrl.export, scrl.trunk\n"
        "assert 'ultralytics' not in sys.modules, 'imported'\n"
        "sys.modules['ultralytics'] = None\n"
        "try:\n    scrl.trunk.create_trunk('ultralytics:yolo11n.yaml')\nexcept ValueError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "scrl[ultralytics]"' in result.stdout and "AGPL-3.0" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not COCO128_IMAGES.is_dir(), reason="../shared/data/coco128-train is not available")
def test_a_yolo_trunk_pretrains_on_a_folder_of_photos_and_names_its_backbone_file(tmp_path):
    from scrl.train import PretrainConfig, Pretrainer

    config = PretrainConfig(
        device="cpu", arch="ultralytics:yolo11n.yaml", data=str(COCO128_IMAGES), image_size=96, batch_size=4, epochs=1,
        max_steps=3, workers=0, output_dir=str(tmp_path / "run"), **SMALL,
    )
    summary = Pretrainer(config).run()
    assert summary["step"] == 3 and summary["skipped_files"] == []
    backbone = torch.load(tmp_path / "run" / "backbone_ultralytics.pth", weights_only=True)
    assert not (tmp_path / "run" / "backbone_torchvision.pth").exists()
    trunk = create_trunk("ultralytics:yolo11n.yaml")
    assert backbone.keys() == trunk.backbone_state_dict().keys()
    assert not torch.equal(backbone["model.0.conv.weight"], trunk.backbone_state_dict()["model.0.conv.weight"])


def test_building_a_yolo_trunk_leaves_pils_image_open_as_it_was(tmp_path):
    import PIL.Image

    before = PIL.Image.open
    create_trunk("ultralytics:yolo11n.yaml")
    assert PIL.Image.open is before
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PIL.UnidentifiedImageError):
        PIL.Image.open(tmp_path / "broken.jpg")
