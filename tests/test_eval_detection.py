"""Detection transfer pieces (scrl.eval.detection) and the per-split box measures (scrl.eval.measures)."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from torch import nn

from scrl.data import SyntheticScenes
from scrl.eval import build_detector, detection_classifier, detection_trunk, roi_measures, split_by_image, train_detector
from scrl.eval.detection import DetectionData, load_pycocotools, step_lr
from scrl.fpn import FPNBackbone, pyramid_stages
from scrl.trunk import Trunk, create_trunk, register_trunk, torchvision_trunk


def test_step_lr_warms_up_then_drops_tenfold_at_two_thirds_and_eight_ninths() -> None:
    assert step_lr(0, 90, 10) == pytest.approx(0.001)
    assert step_lr(5, 90, 10) == pytest.approx(0.001 + 0.999 * 0.5)
    assert [step_lr(i, 90, 10) for i in (10, 59)] == [1.0, 1.0]
    assert step_lr(60, 90, 10) == pytest.approx(0.1) and step_lr(80, 90, 10) == pytest.approx(0.01)


def test_detection_classifier_carries_the_trunks_weights_and_checks_its_name() -> None:
    torch.manual_seed(0)
    trunk = torchvision_trunk("resnet18")
    model, arch = detection_classifier(trunk)
    assert arch == "resnet18"
    assert torch.equal(model.layer4[1].conv2.weight, trunk.body.layer4[1].conv2.weight)
    assert model.layer4[1].conv2.weight.data_ptr() != trunk.body.layer4[1].conv2.weight.data_ptr()  # a copy
    with pytest.raises(ValueError, match="resnet34 given, but the source holds a resnet18"):
        detection_classifier(trunk, "resnet34")


def test_build_detector_predicts_boxes_and_names_bad_settings() -> None:
    model, _ = detection_classifier("random", "resnet18")
    detector = build_detector(model, 3, min_size=64, max_size=64, rois_per_image=8, proposals=16, score_threshold=0.0)
    image, target = DetectionData(SyntheticScenes(1, image_size=64, seed=0), hflip=False)[0]
    detector.eval()
    with torch.no_grad():
        (out,) = detector([image])
    assert out["boxes"].shape[1] == 4 and out["labels"].numel() > 0  # threshold 0 keeps every box
    assert int(out["labels"].min()) >= 1 and int(out["labels"].max()) <= 3  # 0 is the background
    assert int(target["labels"].min()) >= 1
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        build_detector(model, 0)
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\)"):
        build_detector(model, 3, score_threshold=1.0)


def test_load_pycocotools_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r"scrl\[detection\]"):
        load_pycocotools()


def test_roi_measures_use_one_split_for_every_measure() -> None:
    scenes = SyntheticScenes(12, image_size=64, seed=3)
    torch.manual_seed(0)
    m = roi_measures(torchvision_trunk("resnet18"), scenes, split_seed=4, image_size=64, view_size=64, head_epochs=2,
                     head_seeds=(0, 1, 2), batch_size=6)
    train, test = split_by_image(12, 0.5, seed=4)
    assert (m.train_images, m.test_images) == (len(train), len(test))
    assert m.test_boxes == sum(len(scenes[i][2]) for i in test)
    assert len(m.linear_runs) == 3 and m.chance == pytest.approx(100 / scenes.num_classes)
    assert 0 < m.retrieval_chance <= 100 and 0 <= m.knn_top1 <= 100


def _rng_states() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()


def _same(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_flips_are_drawn_per_seed_epoch_and_image_not_from_the_global_rng() -> None:
    scenes = SyntheticScenes(8, image_size=32, seed=0)
    before = _rng_states()
    flips = {(seed, epoch): [DetectionData(scenes, hflip=True, seed=seed)[(epoch, i)][0] for i in range(8)]
             for seed in (0, 1) for epoch in (0, 1)}
    assert _same(before, _rng_states())
    again = [DetectionData(scenes, hflip=True, seed=0)[(0, i)][0] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(again, flips[0, 0]))
    assert all(torch.equal(a, b) for a, b in zip(flips[0, 0], [DetectionData(scenes, hflip=True)[i][0] for i in range(8)]))
    plain = [DetectionData(scenes, hflip=False)[i][0] for i in range(8)]
    mirrored = {key: [not torch.equal(a, b) for a, b in zip(images, plain)] for key, images in flips.items()}
    assert len({tuple(m) for m in mirrored.values()}) > 1 and any(mirrored[0, 0]) and not all(mirrored[0, 0])


def test_detection_fine_tuning_follows_its_seed_alone_and_leaves_the_global_rng_alone() -> None:
    data = SyntheticScenes(4, image_size=64, seed=2)

    def fine_tune(seed: int) -> tuple[dict, dict]:
        classifier, _ = detection_classifier("random", "resnet18", seed=seed)
        detector = build_detector(classifier, data.num_classes, min_size=64, max_size=64, rois_per_image=8, proposals=16,
                                  seed=seed)
        trained = train_detector(detector, data, iters=2, batch_size=2, workers=0, seed=seed, log=lambda *a, **k: None)
        return trained, trained["model"].state_dict()

    torch.manual_seed(123)
    before = _rng_states()
    first, weights = fine_tune(0)
    assert _same(before, _rng_states())  # nothing drawn from the caller's streams
    torch.manual_seed(456)  # another global state changes nothing
    second, again = fine_tune(0)
    assert (first["first_loss"], first["final_loss"]) == (second["first_loss"], second["final_loss"])
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    other, _ = fine_tune(1)
    assert other["first_loss"] != first["first_loss"]


@register_trunk("test-detection-stride16", replace=True)
def _stride16_trunk() -> Trunk:
    """A registered trunk of one's own that reaches stride 16 only, its stride-4 stage a BatchNorm."""
    body = nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 2, stride=2), nn.ReLU(inplace=True),
        nn.Sequential(nn.Conv2d(16, 24, 2, stride=2), nn.ReLU()),
    )
    return Trunk(body, stride=16, channels=24)


@pytest.mark.parametrize("arch, stages", [
    ("resnet18", [("layer1", 64, 4), ("layer2", 128, 8), ("layer3", 256, 16), ("layer4", 512, 32)]),
    ("timm:resnet18", [("model.layer1", 64, 4), ("model.layer2", 128, 8), ("model.layer3", 256, 16),
                       ("model.layer4", 512, 32)]),
    ("timm:convnext_nano", [("model.stages.0", 80, 4), ("model.stages.1", 160, 8), ("model.stages.2", 320, 16),
                            ("model.stages", 640, 32)]),
    ("test-detection-stride16", [("1", 8, 4), ("2", 16, 8), ("4", 24, 16)]),  # the in-place ReLU ends no stage
])
def test_the_pyramid_takes_the_stages_at_strides_4_to_32_of_any_trunk(arch: str, stages: list) -> None:
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    torch.manual_seed(0)
    trunk = create_trunk(arch)
    backbone = FPNBackbone(trunk)
    assert backbone.stages == stages and backbone.body is trunk.body
    features = backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape[-3:]) for f in features.values()] == [(256, 64 // s, 64 // s) for *_, s in stages] + [
        (256, 64 // stages[-1][2] // 2, 64 // stages[-1][2] // 2)]
    hooked = {name for name, m in trunk.body.named_modules() if m._forward_hooks}
    assert hooked == {name for name, _, _ in stages}
    assert all(len(trunk.body.get_submodule(name)._forward_hooks) == 1 for name in hooked)
    trunk(torch.randn(1, 3, 64, 64))  # the trunk on its own: the hooks keep nothing
    assert backbone._captures == []


def test_a_replaced_stage_module_is_hooked_again_and_the_pyramid_compiles_as_one_graph() -> None:
    backbone = FPNBackbone("test-detection-stride16").eval()
    x = torch.randn(2, 3, 64, 64)
    expected = backbone(x)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)  # replaces the stride-4 stage, a BatchNorm
    assert all(torch.equal(a, b) for a, b in zip(expected.values(), synced(x).values()))
    assert len(synced.body[1]._forward_hooks) == 1 and isinstance(synced.body[1], nn.SyncBatchNorm)
    compiled = torch.compile(backbone, backend="aot_eager", fullgraph=True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(expected.values(), compiled(x).values()))
    with pytest.raises(ValueError, match="reaches none of the strides"):
        FPNBackbone(Trunk(nn.Conv2d(3, 8, 64, stride=64), stride=64, channels=8))


def test_detection_trunk_of_a_torchvision_name_gives_the_detector_detection_classifier_gives() -> None:
    classifier, _ = detection_classifier("random", "resnet18", seed=3)
    trunk, arch = detection_trunk("random", "resnet18", seed=3)
    assert arch == "resnet18" and isinstance(trunk, Trunk)
    options = dict(min_size=64, max_size=64, rois_per_image=8, proposals=16, seed=3)
    a, b = build_detector(classifier, 3, **options).state_dict(), build_detector(trunk, 3, **options).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="'timm:resnet18' is no torchvision classifier"):
        detection_classifier("random", "timm:resnet18")
    with pytest.raises(ValueError, match="'nope' is not a supported trunk"):
        detection_trunk("random", "nope")


def _fine_tunes_with(trunk: Trunk, pretrained: Trunk) -> None:
    """The detector on ``trunk`` holds ``pretrained``'s weights (copied), trains with a finite loss and detects."""
    expected = pretrained.body.state_dict()
    assert trunk.body.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in trunk.body.state_dict().items())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(trunk.parameters(), pretrained.parameters()))
    data = SyntheticScenes(2, image_size=64, seed=1)
    detector = build_detector(trunk, data.num_classes, min_size=64, max_size=64, rois_per_image=8, proposals=16,
                              score_threshold=0.0)
    held = detector.backbone.body.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in held.items())
    trained = train_detector(detector, data, iters=2, batch_size=2, workers=0, log=lambda *a, **k: None)
    assert np.isfinite(trained["first_loss"]) and np.isfinite(trained["final_loss"])
    detector.eval()
    with torch.no_grad():
        (out,) = detector([DetectionData(data, hflip=False)[0][0]])
    assert out["boxes"].shape[1] == 4 and out["labels"].numel() > 0


def test_a_timm_trunk_fine_tunes_from_a_trunk_and_from_a_checkpoint() -> None:
    pytest.importorskip("timm")
    torch.manual_seed(5)
    pretrained = create_trunk("timm:resnet18")
    trunk, arch = detection_trunk(pretrained)
    assert arch == "timm:resnet18"
    _fine_tunes_with(trunk, pretrained)
    checkpoint = {"model": {f"trunk.body.{k}": v for k, v in pretrained.body.state_dict().items()},
                  "run": {"identity": {"arch": "timm:resnet18"}}}
    trunk, arch = detection_trunk(checkpoint)
    assert arch == "timm:resnet18"
    assert all(torch.equal(v, pretrained.body.state_dict()[k]) for k, v in trunk.body.state_dict().items())
    with pytest.raises(ValueError, match="resnet18 given, but the source holds a timm:resnet18"):
        detection_trunk(checkpoint, "resnet18")
    checkpoint["run"]["identity"]["arch"] = "resnet18"  # timm's keys in a torchvision trunk's checkpoint
    with pytest.raises(ValueError, match="the trunk weights do not fit resnet18"):
        detection_trunk(checkpoint)


def test_a_yolo_trunk_fine_tunes_from_a_trunk_and_from_a_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    pytest.importorskip("ultralytics")
    torch.manual_seed(6)
    pretrained = create_trunk("ultralytics:yolo11n.yaml")
    assert [stride for *_, stride in pyramid_stages(pretrained.body)] == [4, 8, 16, 32]
    trunk, arch = detection_trunk(pretrained)
    assert arch == "ultralytics:yolo11n.yaml"
    _fine_tunes_with(trunk, pretrained)
    checkpoint = {"model": {f"trunk.body.{k}": v for k, v in pretrained.body.state_dict().items()},
                  "run": {"identity": {"arch": arch}}}
    trunk, _ = detection_trunk(checkpoint)
    assert all(torch.equal(v, pretrained.body.state_dict()[k]) for k, v in trunk.body.state_dict().items())
