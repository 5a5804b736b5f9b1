"""End to end on tiny inputs: export, RoI linear evaluation and detection fine-tuning scripts."""

from __future__ import annotations

import importlib.util
import json
import pickle
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision

from scrl.data import SyntheticScenes
from scrl.fpn import FPNBackbone
from scrl.train import PretrainConfig, Pretrainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as a pretraining run writes it: one real step of SCRL on synthetic scenes."""
    out = tmp_path_factory.mktemp("pretrain")
    Pretrainer(PretrainConfig(
        method="scrl", arch="resnet18", epochs=1, max_steps=1, synthetic_images=8, batch_size=4, image_size=32, num_boxes=2,
        projector_hidden=32, projection_dim=16, workers=0, device="cpu", output_dir=str(out), resume="none",
    )).run()
    return out / "checkpoint_last.pth"


def _yolo_folder(root: Path, count: int = 6) -> Path:
    scenes = SyntheticScenes(count, image_size=64, seed=4)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        image, boxes, labels = scenes[i]
        image.save(root / "images" / f"{i}.png")
        lines = [
            f"{int(c)} {(b[0] + b[2]) / 128:.6f} {(b[1] + b[3]) / 128:.6f} {(b[2] - b[0]) / 64:.6f} {(b[3] - b[1]) / 64:.6f}"
            for b, c in zip(boxes.tolist(), labels.tolist())
        ]
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(scenes.class_names) + "\n")
    return root


def _coco_file(root: Path, count: int = 6) -> Path:
    scenes = SyntheticScenes(count, image_size=64, seed=5)
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        image, boxes, labels = scenes[i]
        image.save(root / "images" / f"{i}.jpg")
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": 64, "height": 64})
        for b, c in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 100 + int(c),
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0})
    categories = [{"id": 100 + c, "name": n} for c, n in enumerate(scenes.class_names)]
    path = root / "annotations" / "instances_tiny.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_export_script_both_formats(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = load_script("export_backbone")
    out = export.main(["--checkpoint", str(checkpoint), "--format", "torchvision", "--out", str(tmp_path / "r18.pth")])
    assert out["arch"] == "resnet18"
    state = torch.load(tmp_path / "r18.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    online = torch.load(checkpoint, weights_only=True)["model"]
    assert torch.equal(state["layer4.1.conv2.weight"], online["trunk.body.layer4.1.conv2.weight"])

    out = export.main(["--checkpoint", str(checkpoint), "--format", "detectron2", "--out", str(tmp_path / "r18.pkl")])
    with open(out["weights"], "rb") as f:
        weights = pickle.load(f, encoding="latin1")
    assert weights["matching_heuristics"] is True and len(weights["model"]) == len(state)
    assert "DEPTH: 18" in Path(out["config"]).read_text()
    with pytest.raises(SystemExit, match="must end in .pkl"):
        export.main(["--checkpoint", str(checkpoint), "--format", "detectron2", "--out", str(tmp_path / "x.pth")])


def test_roi_linear_eval_script_on_checkpoint_and_yolo(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evaluate = load_script("roi_linear_eval")
    yolo = _yolo_folder(tmp_path / "yolo")
    out = evaluate.main(
        ["--checkpoint", str(checkpoint), "--data", str(yolo), "--image-size", "64", "--epochs", "3", "--seeds", "2",
         "--workers", "0", "--batch-size", "4", "--retrieval", "--retrieval-view-size", "64", "--json"]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == json.loads(json.dumps(out))
    assert out["arch"] == "resnet18" and len(out["linear_runs"]) == 2 and out["test_images"] == 3
    assert 0 <= out["linear_top1"] <= 100 and out["retrieval_queries"] > 0
    assert any("RoI linear top-1" in line for line in printed)
    random = evaluate.main(["--checkpoint", "random", "--arch", "resnet18", "--data", "synthetic:8", "--image-size", "64",
                            "--epochs", "2", "--seeds", "1", "--workers", "0", "--batch-size", "4"])
    assert random["arch"] == "resnet18" and random["num_classes"] == 18


def test_finetune_detection_yolo_without_ap(checkpoint: Path, tmp_path: Path) -> None:
    export = load_script("export_backbone")
    export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "r18.pth")])
    finetune = load_script("finetune_detection")
    out = finetune.main(
        ["--weights", str(tmp_path / "r18.pth"), "--data", str(_yolo_folder(tmp_path / "yolo")), "--iters", "2",
         "--batch-size", "2", "--min-size", "64", "--max-size", "64", "--rois-per-image", "16", "--proposals", "32",
         "--workers", "0", "--device", "cpu", "--eval", "none", "--output-dir", str(tmp_path / "det")]
    )
    assert out["iters"] == 2 and out["arch"] == "resnet18" and torch.isfinite(torch.tensor(out["final_loss"]))
    detector = torch.load(tmp_path / "det" / "detector_final.pth", weights_only=True)
    exported = torch.load(tmp_path / "r18.pth", weights_only=True)
    assert detector["backbone.body.conv1.weight"].shape == exported["conv1.weight"].shape
    assert not torch.equal(detector["backbone.body.conv1.weight"], exported["conv1.weight"])  # all layers trained


def test_finetune_detection_coco_box_ap(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    finetune = load_script("finetune_detection")
    out = finetune.main(
        ["--weights", "random", "--arch", "resnet18", "--data", str(_coco_file(tmp_path / "coco")), "--iters", "2",
         "--batch-size", "2", "--min-size", "64", "--max-size", "64", "--rois-per-image", "16", "--proposals", "32",
         "--workers", "0", "--device", "cpu", "--output-dir", str(tmp_path / "det"), "--json"]
    )
    assert {"box_ap", "box_ap50", "box_ap75"} <= set(out)
    assert 0.0 <= out["box_ap"] <= out["box_ap50"] <= 100.0


def test_finetune_detection_without_pycocotools_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # makes the import fail as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    finetune = load_script("finetune_detection")
    with pytest.raises(SystemExit, match=r"scrl\[detection\]"):
        finetune.main(["--weights", "random", "--data", "synthetic:4", "--output-dir", str(tmp_path)])


@pytest.mark.slow
def test_a_convnext_trunk_pretrains_exports_and_evaluates_like_a_resnet(tmp_path: Path) -> None:
    out = tmp_path / "pretrain"
    Pretrainer(PretrainConfig(
        arch="convnext_tiny", epochs=1, max_steps=1, synthetic_images=8, batch_size=4, image_size=64, num_boxes=2,
        min_box_size=16.0, projector_hidden=32, projection_dim=16, workers=0, device="cpu", output_dir=str(out),
    )).run()
    backbone = torch.load(out / "backbone_torchvision.pth", weights_only=True)
    missing, unexpected = torchvision.models.convnext_tiny().load_state_dict(backbone, strict=False)
    assert unexpected == [] and all(k.startswith("classifier.") for k in missing)
    export = load_script("export_backbone")
    result = export.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--out", str(tmp_path / "cnx.pth")])
    assert result["arch"] == "convnext_tiny"
    with pytest.raises(SystemExit, match="Detectron2 export is for torchvision.s plain ResNets"):
        export.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--format", "detectron2", "--out", str(tmp_path / "x.pkl")])
    evaluate = load_script("roi_linear_eval")
    scores = evaluate.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--data", "synthetic:8", "--image-size", "64",
                            "--epochs", "2", "--seeds", "1", "--workers", "0", "--batch-size", "4"])
    assert scores["arch"] == "convnext_tiny" and 0 <= scores["linear_top1"] <= 100
    # Faster R-CNN with an FPN on the exported trunk (a plain state dict: the name comes with --arch).
    finetune = load_script("finetune_detection")
    det = finetune.main(
        ["--weights", str(tmp_path / "cnx.pth"), "--arch", "convnext_tiny", "--data", str(_yolo_folder(tmp_path / "yolo")),
         "--iters", "2", "--batch-size", "2", "--min-size", "64", "--max-size", "64", "--rois-per-image", "16",
         "--proposals", "32", "--workers", "0", "--device", "cpu", "--eval", "none", "--output-dir", str(tmp_path / "det")]
    )
    assert det["arch"] == "convnext_tiny" and torch.isfinite(torch.tensor(det["final_loss"]))
    detector = torch.load(tmp_path / "det" / "detector_final.pth", weights_only=True)
    assert detector["backbone.body.features.0.0.weight"].shape == backbone["features.0.0.weight"].shape
    assert [name for name, _, _ in FPNBackbone(torchvision.models.convnext_tiny()).stages] == [
        "features.1", "features.3", "features.5", "features"]


@pytest.mark.slow
def test_a_timm_trunk_pretrains_exports_and_evaluates(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    out = tmp_path / "pretrain"
    Pretrainer(PretrainConfig(
        arch="timm:regnety_002", epochs=1, max_steps=1, synthetic_images=8, batch_size=4, image_size=64, num_boxes=2,
        min_box_size=16.0, projector_hidden=32, projection_dim=16, workers=0, device="cpu", output_dir=str(out),
    )).run()
    export = load_script("export_backbone")
    result = export.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--format", "timm", "--out", str(tmp_path / "t.pth")])
    assert result["arch"] == "timm:regnety_002"
    missing, unexpected = timm.create_model("regnety_002").load_state_dict(torch.load(tmp_path / "t.pth"), strict=False)
    assert unexpected == [] and all(k.startswith("head.fc") for k in missing)
    evaluate = load_script("roi_linear_eval")
    scores = evaluate.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--data", "synthetic:8", "--image-size", "64",
                            "--epochs", "2", "--seeds", "1", "--workers", "0", "--batch-size", "4"])
    assert scores["arch"] == "timm:regnety_002"
