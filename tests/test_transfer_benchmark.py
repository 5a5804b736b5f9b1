"""benchmarks/transfer.py end to end on a few real photos, with a YOLO folder and a COCO json as --eval-data."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest

from scrl.data import LabelWarning, YoloBoxes

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COCO128 = SHARED / "coco128-train"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_transfer", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def coco128_images(count: int) -> list[Path]:
    if not (COCO128 / "images").is_dir():
        pytest.skip(f"sample data not found at {COCO128}")
    return sorted((COCO128 / "images").glob("*.jpg"))[:count]


def yolo_folder(root: Path, count: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.yaml").symlink_to(COCO128 / "classes.yaml")
    for image in coco128_images(count):
        (root / "images" / image.name).symlink_to(image)
        (root / "labels" / f"{image.stem}.txt").symlink_to(COCO128 / "labels" / f"{image.stem}.txt")
    return root


def coco_json(root: Path, count: int) -> tuple[Path, int]:
    """A COCO annotation file (category ids 1, 3, 5, ... as COCO's have gaps) over ``count`` coco128 photos."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelWarning)
        boxes_of = YoloBoxes(yolo_folder(root / "yolo", count))
    images, annotations, used = [], [], set()
    for i in range(len(boxes_of)):
        image, boxes, labels = boxes_of[i]
        images.append({"id": 10 + i, "file_name": boxes_of.image_paths[i].name, "width": image.width, "height": image.height})
        for b, c in zip(boxes.tolist(), labels.tolist()):
            used.add(int(c))
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": 2 * int(c) + 1,
                                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                                "iscrowd": 0})
    categories = [{"id": 2 * c + 1, "name": f"class{c}"} for c in sorted(used)]
    path = root / "annotations" / "instances_tiny.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path, len(categories)


TINY = ["--budget", "smoke", "--steps", "2", "--batch-size", "4", "--image-size", "64", "--det-iters", "2"]


def check_result(out: dict, printed: list[str], seeds: int, eval_images: int, num_classes: int, plot_dir: Path) -> None:
    assert json.loads(printed[-1]) == json.loads(json.dumps(out))
    assert out["eval_images"] == eval_images and out["num_classes"] == num_classes
    assert out["reference"]["chance"] == pytest.approx(100 / num_classes)
    assert out["reference"]["test_images"] == eval_images // 2
    assert set(out["methods"]) == {"scrl", "byol", "random"}
    for method, row in out["methods"].items():
        assert row["steps"] == (0 if method == "random" else 2) and row["images_seen"] == row["steps"] * 4
        assert len(row["per_seed"]) == seeds
        for key in ("roi_linear", "roi_knn", "retrieval", "box_ap", "box_ap50"):
            assert 0 <= row[key] <= 100 and row[f"{key}_std"] >= 0
        assert row["box_ap"] <= row["box_ap50"]
        runs = [r for s in row["per_seed"] for r in s["linear_runs"]]
        assert len(runs) == seeds * 2 and row["roi_linear"] == pytest.approx(sum(runs) / len(runs))  # 2 heads (smoke)
    for key, c in out["comparison"].items():
        scrl, byol = out["methods"]["scrl"], out["methods"]["byol"]
        assert c["difference"] == pytest.approx(scrl[key] - byol[key])
        assert c["spread"] == pytest.approx(math.hypot(scrl[f"{key}_std"], byol[f"{key}_std"]))
        assert c["exceeds_spread"] == (c["spread"] > 0 and abs(c["difference"]) > c["spread"])
    assert (plot_dir / "transfer_smoke.png").stat().st_size > 0
    assert any(line.startswith("| RoI linear top-1 (%)") for line in printed)
    assert out["command"].startswith("python benchmarks/transfer.py --budget smoke")


@pytest.mark.slow
def test_transfer_benchmark_on_a_yolo_folder_and_a_coco_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pycocotools")
    transfer = load_benchmark()
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in coco128_images(12):
        (photos / image.name).symlink_to(image)
    common = TINY + ["--pretrain-data", str(photos), "--output-dir", str(tmp_path / "runs"), "--plot-dir", str(tmp_path), "--json"]

    out = transfer.main(common + ["--eval-data", str(yolo_folder(tmp_path / "yolo", 8)), "--seeds", "2"])
    check_result(out, capsys.readouterr().out.strip().splitlines(), seeds=2, eval_images=8, num_classes=80, plot_dir=tmp_path)
    assert out["pretrain_images"] == 12

    annotations, num_classes = coco_json(tmp_path / "coco", 6)
    out = transfer.main(common + ["--eval-data", str(annotations), "--eval-image-dir", str(tmp_path / "coco" / "yolo" / "images"),
                                  "--seeds", "1"])
    check_result(out, capsys.readouterr().out.strip().splitlines(), seeds=1, eval_images=6, num_classes=num_classes,
                 plot_dir=tmp_path)
    assert out["comparison"]["roi_knn"]["verdict"] == "no spread to judge by"  # one seed: one k-NN value each


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--image-size", "16"], "--image-size must be >= 32"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--det-iters", "-1"], "--det-iters must be >= 1"),
        (["--test-fraction", "1.5"], r"--test-fraction must be in \(0, 1\)"),
        (["--arch", "timm:resnet18"], "--arch: invalid choice"),
    ],
)
def test_transfer_benchmark_names_the_bad_argument(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        load_benchmark().main(args)
    assert re.search(message, capsys.readouterr().err)


def test_transfer_benchmark_says_which_data_path_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("pycocotools")
    with pytest.raises(SystemExit, match=r"--eval-data .*nowhere does not exist"):
        load_benchmark().main(["--pretrain-data", str(tmp_path), "--eval-data", str(tmp_path / "nowhere")])
