"""YOLO and COCO box readers: boxes in source pixels, every problem reported with file and place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from scrl.data import CocoBoxes, LabelWarning, YoloBoxes

SHARED_COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train"


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (width, height), color=90).save(path)  # grayscale on purpose: items must be RGB


def _yolo_root(tmp_path: Path, label_text: str) -> Path:
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg", 200, 100)
    _image(root / "images" / "b.png", 50, 40)  # no label file: an image without objects
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text(label_text)
    (root / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "classes.yaml").write_text("names:\n  0: cat\n  1: 'dog'\n  2: car\n")
    return root


def test_yolo_boxes_in_source_pixels_and_problems_with_lines(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "1 0.5 0.5 0.5 0.2",  # line 1: good -> (50, 40, 150, 60)
            "",  # blank lines are not problems
            "2 0.5 0.5 0.2",  # line 3: 4 fields
            "x 0.5 0.5 0.2 0.2",  # line 4: not a number
            "7 0.5 0.5 0.2 0.2",  # line 5: class id out of range
            "0 0.95 0.5 0.2 0.2",  # line 6: reaches x = 1.05 -> clipped to 200 px
            "0 1.5 0.5 0.2 0.2",  # line 7: fully outside
            "0 0.25 0.25 0.5000004 0.5",  # line 8: rounding overshoot < tolerance: no report
        ]
    )
    root = _yolo_root(tmp_path, text)
    with pytest.warns(LabelWarning, match="6 annotation problem"):
        ds = YoloBoxes(root)
    assert len(ds) == 2 and ds.num_classes == 3 and ds.class_names == ["cat", "dog", "car"]
    where = sorted((Path(p.path).name, p.where) for p in ds.problems)
    assert where == [
        ("a.txt", "line 3"),
        ("a.txt", "line 4"),
        ("a.txt", "line 5"),
        ("a.txt", "line 6"),
        ("a.txt", "line 7"),
        ("orphan.txt", ""),
    ]
    messages = {p.where: p.message for p in ds.problems}
    assert "clipped" in messages["line 6"] and "skipped" in messages["line 7"]
    assert "class id 7" in messages["line 5"]

    image, boxes, labels = ds[0]
    assert image.mode == "RGB" and image.size == (200, 100)
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    expected = torch.tensor([[50.0, 40.0, 150.0, 60.0], [170.0, 40.0, 200.0, 60.0], [0.0, 0.0, 100.0, 50.0]])
    torch.testing.assert_close(boxes, expected, atol=1e-3, rtol=0)
    assert labels.tolist() == [1, 0, 0]
    image, boxes, labels = ds[1]
    assert image.size == (50, 40) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_yolo_strict_raises_with_file_and_line(tmp_path: Path) -> None:
    root = _yolo_root(tmp_path, "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"a\.txt:line 2: expected 'class cx cy w h', got 3 fields"):
        YoloBoxes(root, strict=True)


def test_yolo_names_inferred_without_names_file_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    _image(root / "images" / "sub" / "x.JPG", 10, 10)
    (root / "labels" / "sub").mkdir(parents=True)
    (root / "labels" / "sub" / "x.txt").write_text("4 0.5 0.5 0.5 0.5\n")
    ds = YoloBoxes(root)
    assert ds.num_classes == 5 and ds.class_names[4] == "4" and ds.problems == []
    (root / "images" / "sub" / "x.JPG").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match="x.JPG"):
        ds[0]
    with pytest.raises(ValueError, match="images/"):
        YoloBoxes(tmp_path / "nowhere")


def _coco_file(tmp_path: Path) -> tuple[Path, Path]:
    image_dir = tmp_path / "coco_images"
    _image(image_dir / "1.jpg", 100, 80)
    _image(image_dir / "2.jpg", 60, 60)
    data = {
        "images": [
            {"id": 1, "file_name": "1.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "2.jpg", "width": 60, "height": 60},
            {"id": 3, "file_name": "missing.jpg", "width": 10, "height": 10},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "bbox": [10, 20, 30, 40]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [90, 0, 20, 10]},  # clipped at x = 100
            {"id": 12, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]},  # unknown category
            {"id": 13, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5]},  # unknown image
            {"id": 14, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5]},  # malformed bbox
            {"id": 15, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 4]},  # empty
            {"id": 16, "image_id": 2, "category_id": 18, "bbox": [1, 2, 3, 4], "iscrowd": 1},
            {"id": 17, "image_id": 2, "category_id": 3, "bbox": [0.0, 0.0, 60.4, 30]},  # within tolerance
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, image_dir


def test_coco_boxes_labels_and_problems(tmp_path: Path) -> None:
    path, image_dir = _coco_file(tmp_path)
    with pytest.warns(LabelWarning, match="6 annotation problem"):
        ds = CocoBoxes(path, image_dir)
    assert len(ds) == 2 and ds.image_ids == [1, 2]
    assert ds.category_ids == [3, 18] and ds.class_names == ["car", "dog"] and ds.num_classes == 2
    assert ds.num_crowd == 1
    where = sorted(p.where for p in ds.problems)
    assert where == [
        "annotations[1] (id 11)",
        "annotations[2] (id 12)",
        "annotations[3] (id 13)",
        "annotations[4] (id 14)",
        "annotations[5] (id 15)",
        "images[2] (id 3)",
    ]
    assert all(p.path == str(path) for p in ds.problems)
    image, boxes, labels = ds[0]
    assert image.mode == "RGB" and image.size == (100, 80)
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 20.0, 40.0, 60.0], [90.0, 0.0, 100.0, 10.0]]))
    assert labels.tolist() == [1, 0]
    _, boxes, labels = ds[1]
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 60.0, 30.0]]))
    assert labels.tolist() == [0]
    with pytest.warns(LabelWarning):
        with_crowd = CocoBoxes(path, image_dir, include_crowd=True)
    assert with_crowd[1][2].tolist() == [1, 0] and with_crowd.num_crowd == 0


def test_coco_strict_and_size_mismatch(tmp_path: Path) -> None:
    path, image_dir = _coco_file(tmp_path)
    with pytest.raises(ValueError, match=r"instances\.json:annotations\[2\] \(id 12\): category_id 99"):
        CocoBoxes(path, image_dir, strict=True)
    _image(image_dir / "2.jpg", 61, 60)
    with pytest.warns(LabelWarning):
        ds = CocoBoxes(path, image_dir)
    with pytest.raises(ValueError, match="61x60 px"):
        ds[1]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoBoxes(bad, image_dir)


@pytest.mark.skipif(not SHARED_COCO128.is_dir(), reason="COCO128 sample data not present")
def test_yolo_reads_coco128() -> None:
    with pytest.warns(LabelWarning):  # two label files there have no image
        ds = YoloBoxes(SHARED_COCO128)
    assert len(ds) == 128 and ds.num_classes == 80 and ds.class_names[0] == "person"
    assert all(p.message.startswith("no image") for p in ds.problems)
    image, boxes, labels = ds[0]
    assert boxes.shape[0] == labels.shape[0] > 0
    assert (boxes[:, 2] <= image.width).all() and (boxes[:, 3] <= image.height).all()


def test_box_corners_are_the_hand_formulas_exactly_and_problems_keep_file_order(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    centre = 0.3 + 0.4 * torch.rand(20, 2, dtype=torch.float64, generator=g)
    side = 0.05 + 0.5 * torch.rand(20, 2, dtype=torch.float64, generator=g)
    rows = [(float(cx), float(cy), float(w), float(h)) for (cx, cy), (w, h) in zip(centre, side)]
    lines = [f"1 {cx!r} {cy!r} {w!r} {h!r}" for cx, cy, w, h in rows]
    lines += ["0 0.95 0.5 0.2 0.2", "0 0.5 0.5"]  # a box clipped, then a malformed line
    root = _yolo_root(tmp_path, "\n".join(lines))
    with pytest.warns(LabelWarning):
        ds = YoloBoxes(root)
    assert [p.where for p in ds.problems] == ["line 21", "line 22", ""]
    scale = torch.tensor([200.0, 100.0] * 2)
    expected = torch.tensor([(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy, w, h in rows]) * scale
    assert torch.equal(ds[0][1][:20], expected)

    path, image_dir = _coco_file(tmp_path)
    data = json.loads(path.read_text())
    xywh = [[float(v) for v in b] for b in (10 + 20 * torch.rand(20, 4, dtype=torch.float64, generator=g)).tolist()]
    data["annotations"] = [{"id": i, "image_id": 1, "category_id": 3, "bbox": b} for i, b in enumerate(xywh)]
    data["annotations"] += [{"id": 90, "image_id": 1, "category_id": 3, "bbox": [90, 0, 20, 10]},  # clipped
                            {"id": 91, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5]}]  # then malformed
    path.write_text(json.dumps(data))
    with pytest.warns(LabelWarning):
        coco = CocoBoxes(path, image_dir)
    assert [p.where for p in coco.problems] == ["images[2] (id 3)", "annotations[20] (id 90)", "annotations[21] (id 91)"]
    expected = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in xywh])
    assert torch.equal(coco[0][1][:20], expected)
