"""YOLO and COCO box readers: boxes in source pixels, every problem reported with file and place."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from scrl.data import (
    BoxDataError,
    CocoBoxes,
    LabelWarning,
    UnreadableImageWarning,
    YoloBoxes,
    open_box_dataset,
    read_class_names,
    require_boxes_in,
)

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
    with pytest.warns(LabelWarning, match="6 annotation problem"), pytest.warns(LabelWarning, match="1 of 2 images have no label"):
        ds = YoloBoxes(root)
    assert len(ds) == 2 and ds.num_classes == 3 and ds.class_names == ["cat", "dog", "car"]
    assert ds.unlabelled == [root / "images" / "b.png"] and ds.names_source == str(root / "classes.yaml")
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
    with pytest.warns(LabelWarning, match="no class names found"):
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
    assert ds.skipped == {} and len(ds.unlabelled) == 2 and ds.box_counts.count(0) == 2  # every photo decodes
    assert ds.names_source == str(SHARED_COCO128 / "classes.yaml")
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


def _yolo_of(root: Path, labels: dict[str, str], *, names: str | None = None) -> Path:
    """A YOLO folder of 20 x 20 images named by ``labels``; a ``None`` label text writes no label file."""
    for stem, text in labels.items():
        _image(root / "images" / f"{stem}.png", 20, 20)
        if text is not None:
            (root / "labels").mkdir(parents=True, exist_ok=True)
            (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "data.yaml").write_text(names)
    return root


BOX = "0 0.5 0.5 0.4 0.4\n"


def test_yolo_without_boxes_or_images_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    empty_labels = _yolo_of(tmp_path / "empty", dict.fromkeys("abc", ""))
    with pytest.raises(BoxDataError, match=r"empty has 3 images but no boxes: every label file is empty$"):
        YoloBoxes(empty_labels)
    no_labels = _yolo_of(tmp_path / "unlabelled", dict.fromkeys("ab", None))
    with pytest.raises(BoxDataError, match=r"2 images but no boxes: none of its images has a label file"):
        YoloBoxes(no_labels)
    rejected = _yolo_of(tmp_path / "rejected", {"a": "9 0.5 0.5 0.1 0.1\n"}, names="names: [cat]\n")
    with pytest.warns(LabelWarning), pytest.raises(BoxDataError, match="all 1 label lines were rejected"):
        YoloBoxes(rejected)
    (tmp_path / "bare" / "images").mkdir(parents=True)
    with pytest.raises(BoxDataError, match=r"bare has no images: .*images holds no image files"):
        YoloBoxes(tmp_path / "bare")
    assert issubclass(BoxDataError, ValueError)  # callers that catch bad input as ValueError still do


def test_yolo_class_count_from_names_file_arguments_or_a_guess_with_a_warning(tmp_path: Path) -> None:
    labels = {"a": "3 0.5 0.5 0.4 0.4\n", "b": BOX}
    with pytest.warns(LabelWarning, match=r"no class names found .* largest class id \+ 1 = 4; .* --num-classes N"):
        guessed = YoloBoxes(_yolo_of(tmp_path / "guess", labels))
    assert guessed.num_classes == 4 and guessed.names_source == "labels"

    given = YoloBoxes(_yolo_of(tmp_path / "count", labels), num_classes=6)
    assert given.num_classes == 6 and given.class_names[5] == "5" and given.names_source == "num_classes"
    with pytest.warns(LabelWarning, match=r"class id 3 not in \[0, 2\)"):
        too_few = YoloBoxes(_yolo_of(tmp_path / "two", labels), num_classes=2)
    assert too_few.box_counts == [0, 1]

    yaml = _yolo_of(tmp_path / "yaml", labels, names="path: .\nnames:\n  - cat\n  - dog\n  - car\n  - bus\n")
    from_yaml = YoloBoxes(yaml)
    assert from_yaml.class_names == ["cat", "dog", "car", "bus"] and from_yaml.names_source == str(yaml / "data.yaml")
    names_file = tmp_path / "names.txt"
    names_file.write_text("w\nx\n\ny\nz\nq\n")
    assert read_class_names(names_file) == ["w", "x", "y", "z", "q"] and read_class_names(yaml / "data.yaml")[0] == "cat"
    assert YoloBoxes(yaml, class_names=read_class_names(names_file)).class_names[4] == "q"  # given names win
    with pytest.raises(ValueError, match="num_classes=3 but class_names holds 5 names"):
        YoloBoxes(yaml, class_names=read_class_names(names_file), num_classes=3)
    with pytest.raises(ValueError, match="names file .*nothing.txt does not exist"):
        read_class_names(tmp_path / "nothing.txt")


def test_yolo_images_without_a_label_file_are_counted_and_reported(tmp_path: Path) -> None:
    root = _yolo_of(tmp_path / "yolo", {"a": BOX, "b": None, "c": None, "d": ""}, names="names: [cat]\n")
    with pytest.warns(LabelWarning, match=r"2 of 4 images have no label file \(e\.g\. .*labels/b\.txt\); they are read as images without objects"):
        ds = YoloBoxes(root)
    assert [p.name for p in ds.unlabelled] == ["b.png", "c.png"] and len(ds) == 4 and ds.box_counts == [1, 0, 0, 0]
    assert "unlabelled=2" in repr(ds)


def test_unreadable_images_are_skipped_named_and_limited_like_in_pretraining(tmp_path: Path) -> None:
    root = _yolo_of(tmp_path / "yolo", dict.fromkeys("abcde", BOX), names="names: [cat]\n")
    (root / "images" / "b.png").write_bytes(b"not an image")
    (root / "images" / "c.png").write_bytes(b"")
    with pytest.warns(UnreadableImageWarning) as caught:
        ds = YoloBoxes(root)
    assert [str(w.message).split(" (")[0] for w in caught] == [
        f"skipped unreadable file: {root / 'images' / name}" for name in ("b.png", "c.png")]
    assert [p.name for p in ds.image_paths] == ["a.png", "d.png", "e.png"] and len(ds) == 3
    assert sorted(Path(p).name for p in ds.skipped) == ["b.png", "c.png"] and "UnidentifiedImageError" in ds.skipped[str(root / "images" / "b.png")]
    assert ds[1][0].size == (20, 20)  # items follow the readable images
    with pytest.warns(UnreadableImageWarning), pytest.raises(
            BoxDataError, match=r"2 unreadable images in a row from .*b\.png' on \(max_consecutive_unreadable=2\): the folder looks broken"):
        YoloBoxes(root, max_consecutive_unreadable=2)
    with pytest.raises(ValueError, match="max_consecutive_unreadable must be an integer >= 1, got 0"):
        YoloBoxes(root, max_consecutive_unreadable=0)

    for name in "ade":
        (root / "labels" / f"{name}.txt").write_text("")
    with pytest.warns(UnreadableImageWarning), pytest.raises(
            BoxDataError, match="has 3 readable images but no boxes: the boxes are all on the 2 images that cannot be decoded"):
        YoloBoxes(root)
    for name in "ade":
        (root / "images" / f"{name}.png").write_bytes(b"\xff\xd8 cut short")
    with pytest.warns(UnreadableImageWarning), pytest.raises(BoxDataError, match="none of its 5 image files can be decoded"):
        YoloBoxes(root)


def _coco_json(tmp_path: Path, images: list[dict], annotations: list[dict]) -> tuple[Path, Path]:
    image_dir = tmp_path / "images"
    _image(image_dir / "a.jpg", 20, 20)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}))
    return path, image_dir


def test_coco_file_names_outside_the_image_folder_are_refused_naming_the_entries(tmp_path: Path) -> None:
    _image(tmp_path / "other" / "secret.jpg", 20, 20)
    entries = [{"id": i, "file_name": name, "width": 20, "height": 20}
               for i, name in enumerate(["a.jpg", "../other/secret.jpg", "/etc/hostname", "sub/../a.jpg"], start=1)]
    path, image_dir = _coco_json(tmp_path, entries, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(BoxDataError, match="outside its image folder") as refused:
        CocoBoxes(path, image_dir)
    lines = str(refused.value).splitlines()[1:]
    assert lines == [f"  {path}:images[1] (id 2): file_name '../other/secret.jpg' leads outside {image_dir}",
                     f"  {path}:images[2] (id 3): file_name '/etc/hostname' leads outside {image_dir}"]
    data = json.loads(path.read_text())
    data["images"] = [entries[0], entries[3]]  # a path that leaves a sub-folder and comes back stays inside
    (image_dir / "sub").mkdir()
    path.write_text(json.dumps(data))
    assert CocoBoxes(path, image_dir).image_ids == [1, 4]


def test_coco_without_images_or_boxes_is_refused_naming_what_is_missing(tmp_path: Path) -> None:
    entry = {"id": 1, "file_name": "a.jpg", "width": 20, "height": 20}
    box = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}
    cases = [
        ([], [box], "has no images: its 'images' list is empty"),
        ([{**entry, "file_name": "b.jpg"}], [box], r"has no images: none of the 1 image files it names is in .*is that the image folder\?"),
        ([entry], [], "has 1 image but no boxes: it has no 'annotations'"),
        ([entry], [{**box, "iscrowd": 1}], "no boxes: none of its 1 annotations gives a usable box on a usable image; 1 are crowd"),
    ]
    for images, annotations, message in cases:
        path, image_dir = _coco_json(tmp_path, images, annotations)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LabelWarning)  # the missing file is also an annotation problem
            with pytest.raises(BoxDataError, match=message):
                CocoBoxes(path, image_dir)


def test_open_box_dataset_refuses_what_cannot_be_split_or_read(tmp_path: Path) -> None:
    one = _yolo_of(tmp_path / "one", {"a": BOX}, names="names: [cat]\n")
    assert len(open_box_dataset(one)) == 1
    with pytest.raises(BoxDataError, match="has 1 usable image: a split into training and held-out images needs at least 2"):
        open_box_dataset(one, split=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BoxDataError, match="empty holds no images/ folder"):
        open_box_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="nowhere does not exist"):
        open_box_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="for YOLO folders"):
        open_box_dataset("synthetic:4", num_classes=3)
    assert open_box_dataset(one, num_classes=2).num_classes == 2


def test_require_boxes_in_refuses_a_side_of_a_split_without_boxes(tmp_path: Path) -> None:
    ds = YoloBoxes(_yolo_of(tmp_path / "yolo", {"a": BOX, "b": "", "c": ""}, names="names: [cat]\n"))
    require_boxes_in(ds, [0, 2], "training")
    with pytest.raises(BoxDataError, match=r"the 2 held-out images of YoloBoxes\(.*\) hold no boxes"):
        require_boxes_in(ds, [1, 2], "held-out")
    with pytest.raises(BoxDataError, match="the held-out side .* has no images"):
        require_boxes_in(ds, [], "held-out")
    require_boxes_in(Subset(ds, [0]), [0], "training")  # without box counts the items are read
    with pytest.raises(BoxDataError):
        require_boxes_in(Subset(ds, [1, 2]), [0, 1], "training")


@pytest.mark.parametrize("text, names", [
    ("path: x\nnc: 3\n", ["0", "1", "2"]),  # the count alone
    ("nc: 4\nnames: ['person', 'bicycle',\n  'car', 'motorcycle']  # classes\n", ["person", "bicycle", "car", "motorcycle"]),
    ("names:\n  0: cat  # feline\n  1: 'dog # not a comment'\n", ["cat", "dog # not a comment"]),
    ("names:\n  - a\n  # a comment line\n  - b\n", ["a", "b"]),
    ("names: [cat, dog] # two\n", ["cat", "dog"]),
])
def test_yolo_yaml_names_in_the_forms_the_tools_write(tmp_path, text, names):
    from scrl.data import read_class_names

    (tmp_path / "data.yaml").write_text(text)
    assert read_class_names(tmp_path / "data.yaml") == names


def test_a_yolo_yaml_whose_count_contradicts_its_names_is_refused(tmp_path):
    from scrl.data import read_class_names

    (tmp_path / "data.yaml").write_text("nc: 2\nnames: [a, b, c]\n")
    with pytest.raises(ValueError, match=r"data.yaml says nc: 2 but names 3 classes"):
        read_class_names(tmp_path / "data.yaml")
