"""benchmarks/transfer.py end to end on a few real photos, with a YOLO folder and a COCO json as --eval-data."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import socket
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
DURATION = r"(\d+ s|\d+\.\d min)"
PHASE_LINE = re.compile(rf"^\[\d+/\d+ \| {DURATION} so far \| ETA (unknown|(> )?{DURATION})\] ")


class Killed(Exception):
    """Stands for the end of a killed run."""


def check_result(out: dict, printed: list[str], seeds: int, eval_images: int, num_classes: int, output_dir: Path) -> None:
    assert json.loads(printed[-1]) == json.loads(json.dumps(out)) == json.loads((output_dir / "transfer_smoke.json").read_text())
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
    if importlib.util.find_spec("matplotlib"):
        assert (output_dir / "transfer_smoke.png").stat().st_size > 0
        assert Path(out["figure"]).resolve() == (output_dir / "transfer_smoke.png").resolve()
    else:
        assert "figure" not in out and any(line.startswith("figure not drawn") for line in printed)
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
    runs = tmp_path / "runs"
    common = TINY + ["--pretrain-data", str(photos), "--output-dir", str(runs), "--json"]
    docs_figure = transfer.ROOT / "docs" / "figures" / "transfer_smoke.png"
    docs_figure_before = docs_figure.read_bytes() if docs_figure.exists() else None

    out = transfer.main(common + ["--eval-data", str(yolo_folder(tmp_path / "yolo", 8)), "--seeds", "2"])
    printed = capsys.readouterr().out.strip().splitlines()
    check_result(out, printed, seeds=2, eval_images=8, num_classes=80, output_dir=runs)
    assert out["pretrain_images"] == 12
    assert (docs_figure.read_bytes() if docs_figure.exists() else None) == docs_figure_before
    phases = [line for line in printed if PHASE_LINE.match(line)]
    assert len(phases) == 2 + 3 * 2 * 2  # pretraining of 2 methods, then RoI measures and detection of 3 trunks x 2 seeds
    assert "ETA unknown" in phases[0] and all(re.search(rf"ETA {DURATION}\]", line) for line in phases[-6:])

    annotations, num_classes = coco_json(tmp_path / "coco", 6)
    out = transfer.main(common + ["--eval-data", str(annotations), "--eval-image-dir", str(tmp_path / "coco" / "yolo" / "images"),
                                  "--seeds", "1"])
    check_result(out, capsys.readouterr().out.strip().splitlines(), seeds=1, eval_images=6, num_classes=num_classes,
                 output_dir=runs)
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
        (["--detector", "yolo", "--arch", "resnet18"], r"--detector yolo .*--arch must be ultralytics:NAME\.yaml"),
        (["--arch", "ultralytics:yolo11n.yaml"], r"--arch ultralytics:yolo11n\.yaml goes with --detector yolo"),
        (["--detector", "yolo", "--yolo-epochs", "0"], "--yolo-epochs must be >= 1"),
    ],
)
def test_transfer_benchmark_names_the_bad_argument(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        load_benchmark().main(args)
    assert re.search(message, capsys.readouterr().err)


def test_transfer_benchmark_says_which_data_path_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pycocotools")
    with pytest.raises(SystemExit) as stopped:
        load_benchmark().main(["--pretrain-data", str(tmp_path), "--eval-data", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2 and re.search(r"^error: --eval-data .*nowhere does not exist", capsys.readouterr().err)


def test_the_yolo_detector_refuses_a_coco_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("ultralytics")
    annotations, _ = coco_json(tmp_path / "coco", 2)
    images = tmp_path / "coco" / "yolo" / "images"
    with pytest.raises(SystemExit) as stopped:
        load_benchmark().main(["--detector", "yolo", "--pretrain-data", str(images), "--eval-data", str(annotations),
                               "--eval-image-dir", str(images), "--output-dir", str(tmp_path / "runs")])
    assert stopped.value.code == 2 and "--eval-data must be a YOLO folder" in capsys.readouterr().err


@pytest.mark.slow
def test_transfer_benchmark_with_the_yolo_detector_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("ultralytics")
    attempts = []
    connect = socket.socket.connect

    def refused(*args: object, **kwargs: object) -> None:
        attempts.append(args[:1])
        raise OSError("no network in this test")

    def connect_locally(sock: socket.socket, address: object) -> None:  # the data workers talk over Unix sockets
        return connect(sock, address) if sock.family == socket.AF_UNIX else refused(address)

    monkeypatch.setattr(socket, "getaddrinfo", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket.socket, "connect", connect_locally)
    eval_data = yolo_folder(tmp_path / "yolo", 8)
    runs = tmp_path / "runs"
    out = load_benchmark().main(TINY + ["--detector", "yolo", "--yolo-epochs", "1", "--seeds", "1", "--pretrain-data",
                                        str(photo_folder(tmp_path / "photos", 6)), "--eval-data", str(eval_data),
                                        "--output-dir", str(runs), "--json"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert attempts == []
    assert json.loads(printed[-1]) == json.loads(json.dumps(out)) == json.loads((runs / "transfer_smoke_yolo.json").read_text())
    assert out["detector"] == "yolo" and out["settings"]["arch"] == "ultralytics:yolo11n.yaml"
    assert not (runs / "transfer_smoke.json").exists()  # the Faster R-CNN run's name is left alone
    for method in ("random", "byol", "scrl"):
        row = out["methods"][method]
        assert all(math.isfinite(row[key]) and 0 <= row[key] <= 100 for key in ("box_ap", "box_ap50", "roi_knn"))
        assert Path(row["per_seed"][0]["det_weights"]).is_file()
    assert not list(eval_data.rglob("*.cache"))  # Ultralytics' label caches go into the run, not beside the data


def photo_folder(root: Path, count: int) -> Path:
    root.mkdir()
    for image in coco128_images(count):
        (root / image.name).symlink_to(image)
    return root


def test_transfer_benchmark_writes_under_its_output_dir_by_default() -> None:
    transfer = load_benchmark()
    args, _ = transfer.parse_args([])
    output_dir = Path(args.output_dir).resolve()
    assert args.plot_dir is None  # the figure goes where the JSON goes
    assert not output_dir.is_relative_to(transfer.ROOT / "docs")


def test_progress_lines_give_the_time_so_far_and_an_eta_from_finished_phases(capsys: pytest.CaptureFixture) -> None:
    transfer = load_benchmark()
    now = [0.0]
    progress = transfer.Progress(["pretraining", "roi", "roi", "pretraining"], clock=lambda: now[0])
    for kind, seconds in [("pretraining", 100), ("roi", 10), ("roi", 20), ("pretraining", 80)]:
        with progress.phase(kind, f"a {kind} phase"):
            now[0] += seconds
    with pytest.raises(ValueError, match="not the one planned next"):
        with progress.phase("roi", "an unplanned phase"):
            pass
    assert capsys.readouterr().out.splitlines() == [
        "[1/4 | 0 s so far | ETA unknown] a pretraining phase",
        "[2/4 | 100 s so far | ETA > 100 s] a roi phase",  # no roi phase has finished yet
        "[3/4 | 110 s so far | ETA 110 s] a roi phase",
        "[4/4 | 2.2 min so far | ETA 100 s] a pretraining phase",
    ]
    assert progress.elapsed() == 210


def test_resume_refuses_a_partial_json_of_other_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pycocotools")
    transfer = load_benchmark()

    def killed(*args: object, **kwargs: object) -> None:
        raise Killed

    monkeypatch.setattr(transfer, "pretrained_trunks", killed)  # killed as pretraining begins
    common = TINY + ["--pretrain-data", str(photo_folder(tmp_path / "photos", 6)),
                     "--eval-data", str(yolo_folder(tmp_path / "yolo", 4)), "--output-dir", str(tmp_path / "runs")]
    with pytest.raises(Killed):
        transfer.main(common)
    assert json.loads((tmp_path / "runs" / "transfer_smoke_partial.json").read_text())["per_seed"] == {
        "random": [], "byol": [], "scrl": []}
    with pytest.raises(SystemExit) as stopped:
        transfer.main(common + ["--steps", "3", "--resume"])
    assert stopped.value.code == 2
    assert "was made with other settings (settings.steps: 2 there, 3 here)" in capsys.readouterr().err
    with pytest.raises(Killed):  # the same settings resume; without --resume other settings start afresh
        transfer.main(common + ["--resume"])
    with pytest.raises(Killed):
        transfer.main(common + ["--steps", "3"])
    assert "holds an earlier run: starting afresh" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_measures_only_the_rows_a_killed_run_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("pycocotools")
    transfer = load_benchmark()
    detection_row = transfer.detection_row
    calls = []

    def killed_at_the_second(*args: object, **kwargs: object) -> dict:
        calls.append(args)
        if len(calls) == 2:
            raise Killed
        return detection_row(*args, **kwargs)

    runs = tmp_path / "runs"
    common = TINY + ["--pretrain-data", str(photo_folder(tmp_path / "photos", 6)), "--eval-data",
                     str(yolo_folder(tmp_path / "yolo", 4)), "--seeds", "1", "--output-dir", str(runs), "--json"]
    monkeypatch.setattr(transfer, "detection_row", killed_at_the_second)
    with pytest.raises(Killed):  # in the detection phase of byol, the second trunk
        transfer.main(common)
    partial = json.loads((runs / "transfer_smoke_partial.json").read_text())
    assert set(partial["pretraining"]) == {"scrl", "byol"}
    assert [len(partial["per_seed"][m]) for m in ("random", "byol", "scrl")] == [1, 0, 0]
    capsys.readouterr()

    monkeypatch.setattr(transfer, "detection_row", detection_row)
    out = transfer.main(common + ["--resume"])
    printed = capsys.readouterr().out.splitlines()
    phases = [line for line in printed if PHASE_LINE.match(line)]
    assert [line.split("] ")[1] for line in phases] == [
        "byol seed 0: RoI measures", "byol seed 0: detection fine-tuning (2 iterations), box AP",
        "scrl seed 0: RoI measures", "scrl seed 0: detection fine-tuning (2 iterations), box AP",
    ]  # no pretraining, no random row
    assert out["methods"]["random"]["per_seed"] == partial["per_seed"]["random"]
    for method in ("scrl", "byol"):
        assert {k: out["methods"][method][k] for k in partial["pretraining"][method]} == partial["pretraining"][method]
    assert out["total_seconds"] > partial["seconds"] > 0  # the killed run's finished rows count too
    assert json.loads(printed[-1]) == json.loads((runs / "transfer_smoke.json").read_text())


def test_a_second_benchmark_on_the_same_output_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # It would delete the first one's pretraining runs and rewrite its partial JSON.
    from scrl.runtime import FolderLock

    with FolderLock(tmp_path):  # another benchmark holds the folder
        with pytest.raises(SystemExit) as stopped:
            load_benchmark().main(["--output-dir", str(tmp_path), "--eval-data", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2
    assert re.match(rf"error: --output-dir: {re.escape(str(tmp_path))} is in use by another run \(process \d+ ", capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".scrl.lock"]  # nothing else touched
