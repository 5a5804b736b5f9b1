"""End to end on tiny inputs: export, RoI linear evaluation and detection fine-tuning scripts, and the data they refuse."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re
import subprocess
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



def run_script(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``examples/NAME.py ARGS`` (or ``benchmarks/NAME.py``) in a fresh interpreter started in ``cwd``, as a user runs it."""
    script = EXAMPLES / f"{name}.py" if (EXAMPLES / f"{name}.py").is_file() else EXAMPLES.parent / "benchmarks" / f"{name}.py"
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


# The cheapest settings of each script: a random ResNet-18 on 64-pixel images, on the CPU.
QUICK = {
    "roi_linear_eval": ["--checkpoint", "random", "--arch", "resnet18", "--image-size", "64", "--epochs", "2", "--seeds", "1",
                        "--workers", "0", "--batch-size", "4", "--device", "cpu"],
    "finetune_detection": ["--weights", "random", "--arch", "resnet18", "--iters", "1", "--batch-size", "2", "--min-size", "64",
                           "--max-size", "64", "--rois-per-image", "16", "--proposals", "32", "--workers", "0",
                           "--device", "cpu", "--eval", "none"],
}


def _refused(done: subprocess.CompletedProcess, message: str) -> None:
    """The run stopped on bad input: exit 2, ``message`` on the last line, no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and message in done.stderr.splitlines()[-1], done.stderr


@pytest.mark.parametrize("script", sorted(QUICK))
def test_scripts_refuse_a_yolo_folder_whose_label_files_are_all_empty(script: str, tmp_path: Path) -> None:
    root = _yolo_folder(tmp_path / "yolo")
    for label in (root / "labels").iterdir():
        label.write_text("")
    done = run_script(script, tmp_path, *QUICK[script], "--data", str(root))
    _refused(done, f"{root} has 6 images but no boxes: every label file is empty")


def _unusable(kind: str, root: Path) -> tuple[list[str], str]:
    """Data the scripts must refuse: ``(the flags naming it, what the error says)``."""
    if kind == "empty folder":
        root.mkdir()
        return ["--data", str(root)], f"{root} holds no images/ folder"
    if kind == "empty COCO file":
        (root / "images").mkdir(parents=True)
        (root / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
        return ["--data", str(root / "instances.json"), "--image-dir", str(root / "images")], "has no images: its 'images' list is empty"
    yolo = _yolo_folder(root)
    if kind == "only unreadable images":
        for image in (yolo / "images").iterdir():
            image.write_bytes(b"")
        return ["--data", str(yolo)], f"{yolo} has no readable images: none of its 6 image files can be decoded"
    if kind == "a run of unreadable images":
        (yolo / "images" / "2.png").write_bytes(b"GIF89a cut short")
        return ["--data", str(yolo), "--max-consecutive-unreadable", "1"], (
            f"1 unreadable images in a row from '{yolo / 'images' / '2.png'}' on (max_consecutive_unreadable=1)")
    if kind == "one image":
        for i in range(1, 6):
            (yolo / "images" / f"{i}.png").unlink()
            (yolo / "labels" / f"{i}.txt").unlink()
        return ["--data", str(yolo)], "has 1 usable image: a split into training and held-out images needs at least 2"
    coco = _coco_file(root / "coco")
    data = json.loads(coco.read_text())
    data["images"][3]["file_name"] = "../../secret.jpg"
    coco.write_text(json.dumps(data))
    return ["--data", str(coco)], f"{coco}:images[3] (id 4): file_name '../../secret.jpg' leads outside"


@pytest.mark.parametrize("script, kind", [
    ("roi_linear_eval", "empty folder"), ("finetune_detection", "empty COCO file"),
    ("finetune_detection", "only unreadable images"), ("roi_linear_eval", "a run of unreadable images"),
    ("finetune_detection", "one image"), ("roi_linear_eval", "a COCO file name outside the image folder"),
])
def test_scripts_refuse_unusable_data_naming_the_problem(script: str, kind: str, tmp_path: Path) -> None:
    flags, message = _unusable(kind, tmp_path / "data")
    _refused(run_script(script, tmp_path, *QUICK[script], *flags), message)


def _imperfect_yolo_folder(root: Path) -> Path:
    """Eight scenes without a names file: one image unreadable, one without a label file."""
    _yolo_folder(root, count=8)
    (root / "classes.txt").unlink()
    (root / "images" / "3.png").write_bytes(b"\x89PNG cut short")
    (root / "labels" / "5.txt").unlink()
    return root


def test_roi_linear_eval_skips_unreadable_images_and_says_what_it_assumed(tmp_path: Path) -> None:
    root = _imperfect_yolo_folder(tmp_path / "yolo")
    done = run_script("roi_linear_eval", tmp_path, *QUICK["roi_linear_eval"], "--data", str(root), "--json")
    assert done.returncode == 0, done.stderr
    assert f"skipped unreadable file: {root / 'images' / '3.png'} (" in done.stderr
    assert f"1 of 8 images have no label file (e.g. {root / 'labels' / '5.txt'})" in done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    guessed = re.search(r"guessed from the labels: largest class id \+ 1 = (\d+);", done.stderr)
    assert guessed and result["num_classes"] == int(guessed[1])
    assert result["train_images"] + result["test_images"] == 7

    done = run_script("roi_linear_eval", tmp_path, *QUICK["roi_linear_eval"], "--data", str(root), "--num-classes", "30", "--json")
    assert done.returncode == 0 and "no class names found" not in done.stderr, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["num_classes"] == 30


def test_finetune_detection_skips_unreadable_images_and_takes_names_from_a_file(tmp_path: Path) -> None:
    root = _imperfect_yolo_folder(tmp_path / "yolo")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(SyntheticScenes(1).class_names) + "\n")
    done = run_script("finetune_detection", tmp_path, *QUICK["finetune_detection"], "--data", str(root), "--names", str(names))
    assert done.returncode == 0, done.stderr
    assert f"skipped unreadable file: {root / 'images' / '3.png'} (" in done.stderr and "no class names found" not in done.stderr
    assert "6 training images, 18 classes" in done.stdout  # 7 readable images, one of them held out
    assert (tmp_path / "runs" / "detection" / "detector_final.pth").is_file()


def test_transfer_benchmark_refuses_a_split_without_boxes_on_one_side_before_pretraining(tmp_path: Path) -> None:
    root = _yolo_folder(tmp_path / "yolo", count=4)
    for i in range(1, 4):
        (root / "labels" / f"{i}.txt").write_text("")  # the boxes of one image cannot be on both sides
    photos = _yolo_folder(tmp_path / "photos", count=4) / "images"
    done = run_script("transfer", tmp_path, "--eval-data", str(root), "--pretrain-data", str(photos),
                      "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert re.fullmatch(r"error: the 2 (training|held-out) images of YoloBoxes\(.*\) hold no boxes: .*", done.stderr.strip())
    assert not list((tmp_path / "out").rglob("*.pth"))  # refused before any pretraining
