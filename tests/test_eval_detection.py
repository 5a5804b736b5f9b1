"""Detection transfer pieces (scrl.eval.detection) and the per-split box measures (scrl.eval.measures)."""

from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch

from scrl.data import SyntheticScenes
from scrl.eval import build_detector, detection_classifier, roi_measures, split_by_image, train_detector
from scrl.eval.detection import DetectionData, load_pycocotools, step_lr
from scrl.trunk import torchvision_trunk


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
