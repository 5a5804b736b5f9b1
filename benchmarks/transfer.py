"""Transfer on real photos: SCRL vs BYOL vs random initialisation, by RoI evaluation and detection fine-tuning.

SCRL and BYOL are pretrained by ``scrl.train.Pretrainer`` on folders of real photos (default: the
1,000 ImageNet photos of ../shared/data/imagenet-sample plus the 128 COCO photos of
../shared/data/coco128-train), with the same trunk, initial weights, seed, images, steps and
augmentation. Each trunk, and the random initialisation both start from, is then measured on a
box dataset (COCO .json or YOLO folder; default COCO128), once per seed of ``--seeds``: each seed
splits the images in two (by image), and on that split gives

* RoI linear top-1 (one linear head per head seed), RoI k-NN top-1 and cross-view RoI retrieval
  top-1 (``scrl.eval.roi_measures``), and
* box AP and AP50 on the held-out images of torchvision's Faster R-CNN FPN fine-tuned from the
  trunk on the training images for ``--det-iters`` iterations (``scrl.eval.train_detector``,
  the code of examples/finetune_detection.py), or with ``--detector yolo`` of the Ultralytics
  YOLO detector whose backbone the trunk is, exported by ``scrl.export.to_ultralytics`` and
  fine-tuned and validated by Ultralytics itself (``scrl.eval.finetune_yolo``; the trunk is then
  ``--arch ultralytics:NAME.yaml``, default ultralytics:yolo11n.yaml, and --eval-data a YOLO folder).

    python benchmarks/transfer.py --budget smoke --json     # does the chain run
    python benchmarks/transfer.py --budget cpu --json
    python benchmarks/transfer.py --budget gpu --json
    python benchmarks/transfer.py --budget smoke --detector yolo --json
    python benchmarks/transfer.py --budget cpu --eval-data my/annotations/instances_train.json --pretrain-data my/photos

Measured (docs/benchmarks.md): smoke, 109 s on a 2-core Intel Xeon VM, otherwise idle, and 362 s
while other work used 0.8 of its 2 cores; cpu, 45 minutes on 2 CPU cores shared part of the time
with other work; gpu is sized for one H100 in under 10 minutes, not yet measured.

Prints a line as each phase starts (pretraining of a method, RoI measures or detection
fine-tuning of a trunk on one seed's split) with the time so far and an ETA, then one table
(mean +- std over seeds, the reference rates, and whether the SCRL-BYOL difference exceeds the
seed spread) and, with --json, one JSON object on the last line. Everything goes into
--output-dir: the pretraining runs, transfer_<budget>_partial.json (rewritten after every
finished row, which --resume continues from), transfer_<budget>.json and, when matplotlib is
installed (pip install "scrl[plot]"), the bars as transfer_<budget>.png (or into --plot-dir);
with --detector yolo <budget> reads <budget>_yolo in every name (transfer_smoke_yolo.json, ...),
so that the two detectors' runs stay apart. Box AP needs pycocotools (pip install
"scrl[detection]"), --detector yolo needs ultralytics (pip install "scrl[ultralytics]").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from scrl.data import ImageFolderDataset, LabelWarning, YoloBoxes, open_box_dataset, require_boxes_in
from scrl.eval import (build_detector, coco_box_ap, detection_classifier, finetune_yolo, roi_measures, split_by_image,
                       train_detector)
from scrl.data.image_folder import DEFAULT_MAX_CONSECUTIVE_UNREADABLE
from scrl.eval.detection import load_pycocotools
from scrl.export import to_ultralytics
from scrl.runtime import FolderLock, FolderLockedError
from scrl.train import PretrainConfig, Pretrainer, build_model
from scrl.trunk import Trunk, supported_archs
from scrl.viz import headless_pyplot, save_figure
from scrl.yolo_trunk import ULTRALYTICS_PREFIX, import_ultralytics

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_PRETRAIN = [SHARED / "imagenet-sample", SHARED / "coco128-train"]
DEFAULT_EVAL = SHARED / "coco128-train"
METHODS = ("random", "byol", "scrl")
DETECTORS = ("frcnn", "yolo")
YOLO_ARCH = ULTRALYTICS_PREFIX + "yolo11n.yaml"  # the trunk of --detector yolo unless --arch names another
# (key, table label, reference rate keys shown beside it)
MEASURES = (
    ("roi_linear", "RoI linear top-1 (%)", ("chance", "majority")),
    ("roi_knn", "RoI k-NN top-1 (%)", ("chance", "majority")),
    ("retrieval", "cross-view retrieval top-1 (%)", ("retrieval_chance",)),
    ("box_ap", "box AP (%)", ()),
    ("box_ap50", "box AP50 (%)", ()),
)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Everything a budget fixes. Steps are optimiser steps of ``batch`` images per method."""

    arch: str
    view: int  # pretraining view side (and retrieval views), pixels
    batch: int
    steps: int
    workers: int
    eval_size: int  # square side of the RoI evaluation images
    eval_batch: int
    eval_workers: int
    head_epochs: int
    head_seeds: int
    seeds: int  # splits x detection fine-tuning runs
    det_iters: int
    det_lr: float | None  # None: Detectron2's linear scaling, 0.02 x batch / 16
    det_batch: int
    det_min_size: int
    det_max_size: int
    det_rois: int
    det_proposals: int
    det_workers: int  # also the data-loading processes of YOLO fine-tuning
    amp: str
    channels_last: bool
    yolo_epochs: int  # --detector yolo: Ultralytics fine-tuning epochs, image side and batch
    yolo_size: int
    yolo_batch: int


BUDGETS = {
    # Proves the chain runs: 160 images seen per method, detection hardly trained (YOLO: 2 epochs of
    # the 64 training images at 128 px, about 6 s each).
    "smoke": Budget("resnet18", 64, 16, 10, 2, 128, 16, 0, 20, 2, 2, 10, None, 2, 128, 213, 64, 100, 0, "off", False,
                    2, 128, 16),
    # What 2 CPU cores do in about 45 minutes: ~12.8k images (~11 epochs of the 1,128 photos) per
    # method at 1.3 s a step, then 3 x 3 fine-tunings of 100 iterations at ~1.2 s each, at 4x the
    # linear-scaling learning rate because the schedule is so short. YOLO: 20 epochs at 256 px,
    # about 100 s each, still inside Ultralytics' warm-up (at least 100 iterations).
    "cpu": Budget("resnet18", 96, 32, 400, 2, 256, 16, 0, 100, 3, 3, 100, 0.01, 2, 256, 427, 128, 300, 1, "off", False,
                  20, 256, 16),
    # One H100-class GPU, 16 cores (untested on a GPU): ~77k images (~68 epochs) per method, then
    # 3 x 3 fine-tunings of 200 iterations of 8 images at 448 px (2x the linear-scaling rate);
    # YOLO: 30 epochs at 640 px.
    "gpu": Budget("resnet50", 160, 256, 300, 12, 512, 64, 8, 100, 5, 3, 200, 0.02, 8, 448, 747, 256, 500, 6, "bf16", True,
                  30, 640, 16),
}


def image_folders(paths: list[Path]) -> Dataset:
    """The images under all ``paths`` (recursive), one dataset in path order."""
    folders = [ImageFolderDataset(str(path)) for path in paths]
    return folders[0] if len(folders) == 1 else ConcatDataset(folders)


def pretrain(method: str, b: Budget, images: Dataset, seed: int, out: Path, quiet: bool, restore: bool) -> Pretrainer:
    """Build the run of one method (its model initialised from ``seed``); the caller runs it.

    With ``restore`` the run resumes the finished run in ``out`` (no training steps left), which
    gives back the trained trunk; otherwise ``out`` is cleared and the run trains afresh.
    """
    if not restore:
        shutil.rmtree(out, ignore_errors=True)  # the benchmark's own earlier run of this row
    steps_per_epoch = max(1, len(images) // b.batch)
    # The paper's 32-px minimum box side needs 3 x 3 C5 cells of view to fill most box slots;
    # smaller views take half-cell boxes, as the CPU defaults of scrl.train do.
    boxes = dict(min_box_size=32.0 if b.view >= 96 else 16.0) if method == "scrl" else {}
    config = PretrainConfig(
        method=method, arch=b.arch, image_size=b.view, batch_size=b.batch, epochs=math.ceil(b.steps / steps_per_epoch),
        max_steps=b.steps, preset="200ep", workers=b.workers, seed=seed, output_dir=str(out),
        resume="auto" if restore else "none", amp=b.amp,
        channels_last=b.channels_last, log_every=max(1, b.steps // 10), **boxes,
    )
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return Pretrainer(config, dataset=images)


def run_pretraining(pretrainer: Pretrainer, quiet: bool) -> dict[str, Any]:
    """The pretraining row of a method: its time, steps and the digest of the weights it ends with."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        summary = pretrainer.run()
    return {"train_seconds": time.perf_counter() - start, "steps": summary["step"], "weights_sha256": summary["weights_sha256"]}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def roi_row(trunk: Trunk, data: Dataset, seed: int, b: Budget, test_fraction: float, run: dict) -> dict[str, Any]:
    """The RoI measures of one trunk on the split of ``seed``."""
    return roi_measures(trunk, data, split_seed=seed, test_fraction=test_fraction, image_size=b.eval_size, view_size=b.view,
                        head_epochs=b.head_epochs, head_seeds=range(b.head_seeds), batch_size=b.eval_batch,
                        num_workers=b.eval_workers, **run).as_dict()


def detection_row(trunk: Trunk, data: Dataset, seed: int, b: Budget, test_fraction: float, run: dict,
                  quiet: bool) -> dict[str, Any]:
    """Box AP of a detector fine-tuned from one trunk on the training images of the split of ``seed``."""
    train_idx, test_idx = split_by_image(len(data), test_fraction, seed=seed)
    # One seed for the detector heads, batch order and flips: the same for every trunk.
    classifier, _ = detection_classifier(trunk, trunk.arch, seed=seed)
    # AP ranks detections by score: a low threshold keeps a briefly trained detector, whose scores
    # are still near 1 / (classes + 1), from scoring 0 for want of any detection.
    detector = build_detector(classifier, data.num_classes, min_size=b.det_min_size, max_size=b.det_max_size,
                              rois_per_image=b.det_rois, proposals=b.det_proposals, score_threshold=0.001, seed=seed)
    log = (lambda *a, **k: None) if quiet else print
    trained = train_detector(detector, Subset(data, train_idx), iters=b.det_iters, batch_size=b.det_batch, lr=b.det_lr,
                             workers=b.det_workers, device=run["device"], amp=b.amp == "bf16", seed=seed,
                             log_every=max(1, b.det_iters // 5), log=log)
    held_out = Subset(data, test_idx)
    held_out.num_classes = data.num_classes
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        ap = coco_box_ap(trained["model"], held_out, run["device"], b.det_batch, b.det_workers)
    return {"box_ap": ap["box_ap"], "box_ap50": ap["box_ap50"], "detections": ap["detections"],
            "det_first_loss": trained["first_loss"], "det_final_loss": trained["final_loss"],
            "det_seconds": trained["train_seconds"]}


def yolo_row(trunk: Trunk, data: YoloBoxes, seed: int, b: Budget, test_fraction: float, run: dict, quiet: bool,
             folder: Path) -> dict[str, Any]:
    """Box AP of the YOLO detector of one trunk, fine-tuned by Ultralytics on the training images of the split of ``seed``.

    The export and Ultralytics' run go into ``folder``.
    """
    train_idx, test_idx = split_by_image(len(data), test_fraction, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    # The head starts from ``seed`` for every trunk, as the Faster R-CNN heads do.
    weights = to_ultralytics(trunk, b.arch, folder / "initial.pt", seed=seed)
    result = finetune_yolo(weights, data.class_names, [data.image_paths[i] for i in train_idx],
                           [data.image_paths[i] for i in test_idx], epochs=b.yolo_epochs, image_size=b.yolo_size,
                           batch_size=b.yolo_batch, output_dir=folder, seed=seed, device=run["device"],
                           workers=b.det_workers, verbose=not quiet, log=(lambda *a, **k: None) if quiet else print)
    return {"box_ap": result["box_ap"], "box_ap50": result["box_ap50"], "det_seconds": result["train_seconds"],
            "det_weights": result["weights"]}


def pretrained_trunks(b: Budget, images: Dataset, seed: int, runs: Path, record: dict[str, Any], wanted: set[str],
                      progress: Progress, save: Callable[[], None], quiet: bool) -> dict[str, Trunk]:
    """The initialisation ("random") and the SCRL and BYOL trunks pretrained from it, into ``record["pretraining"]``.

    A method ``record`` already holds is not trained again: its finished run in ``runs`` gives its
    trunk back, and only when it is ``wanted`` for rows still to measure. ``save`` runs after every
    pretraining.
    """
    trunks: dict[str, Trunk] = {}
    for method in ("scrl", "byol"):
        restore = method in record["pretraining"]
        try:
            pretrainer = pretrain(method, b, images, seed, runs / method, quiet, restore)
        except ValueError as err:  # settings the run refuses (a batch larger than the photos, ...)
            refuse(str(err))
        initial = build_model(pretrainer.config.resolve(on_gpu=torch.cuda.is_available())[0]).trunk
        if "random" not in trunks:  # the initialisation both methods start from
            trunks["random"] = initial
        elif not same_weights(trunks["random"], initial):
            raise RuntimeError(f"{method} starts from other trunk weights than scrl: the comparison would be unfair")
        if restore and method not in wanted:
            continue  # every row of this method is measured: its trunk is not needed
        if restore:
            if run_pretraining(pretrainer, quiet)["weights_sha256"] != record["pretraining"][method]["weights_sha256"]:
                refuse(f"--resume: the {method} run in {runs / method} holds other weights than the ones its "
                         "rows were measured with; run without --resume to start afresh")
            print(f"  {method}: pretrained trunk taken from the finished run in {runs / method}", flush=True)
        else:
            with progress.phase("pretraining", f"pretraining {method}: {b.steps} steps of {b.batch} photos"):
                row = record["pretraining"][method] = run_pretraining(pretrainer, quiet)
            save()
            print(f"  {method}: {row['steps']} steps of {b.batch} ({row['steps'] * b.batch / len(images):.1f} epochs) in "
                  f"{row['train_seconds']:.0f} s", flush=True)
        trunks[method] = pretrainer.model.trunk
    return trunks


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and spreads over seeds; RoI linear pooled over seeds and linear heads."""
    columns = {
        "roi_linear": [r for s in per_seed for r in s["linear_runs"]],
        "roi_knn": [s["knn_top1"] for s in per_seed],
        "retrieval": [s["retrieval_top1"] for s in per_seed],
        "box_ap": [s["box_ap"] for s in per_seed],
        "box_ap50": [s["box_ap50"] for s in per_seed],
    }
    out: dict[str, Any] = {}
    for key, values in columns.items():
        out[key], out[f"{key}_std"] = mean_std(values)
    out["per_seed"] = per_seed
    return out


def compare(scrl: dict[str, Any], byol: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per measure: SCRL - BYOL, the combined seed spread sqrt(std_scrl^2 + std_byol^2), and the verdict."""
    out = {}
    for key, _, _ in MEASURES:
        difference = scrl[key] - byol[key]
        spread = math.hypot(scrl[f"{key}_std"], byol[f"{key}_std"])
        if spread == 0:
            verdict = "no spread to judge by"
        elif abs(difference) > spread:
            verdict = "yes: SCRL ahead" if difference > 0 else "yes: BYOL ahead"
        else:
            verdict = "no"
        out[key] = {"difference": difference, "spread": spread, "exceeds_spread": spread > 0 and abs(difference) > spread,
                    "verdict": verdict}
    return out


def table(result: dict[str, Any]) -> str:
    methods, ref = result["methods"], result["reference"]
    names = {"chance": "chance", "majority": "majority", "retrieval_chance": "chance"}
    lines = ["| measure | random | BYOL | SCRL | reference | SCRL − BYOL (seed spread) | beyond the spread? |",
             "|---|---|---|---|---|---|---|"]
    for key, label, refs in MEASURES:
        digits = 1 if refs else 2  # short fine-tunings give APs well below 1 %
        cells = [f"{methods[m][key]:.{digits}f} ± {methods[m][f'{key}_std']:.{digits}f}" for m in METHODS]
        reference = ", ".join(f"{names[r]} {ref[r]:.1f}" for r in refs) or "random row"
        c = result["comparison"][key]
        lines.append(f"| {label} | {' | '.join(cells)} | {reference} | {c['difference']:+.{digits}f} ({c['spread']:.{digits}f}) "
                     f"| {c['verdict']} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, title: str) -> str | None:
    """Bars with error bars per measure into ``path``.

    Returns:
        The figure's path (relative to the repository when inside it), or None without matplotlib.
    """
    plt = headless_pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    colours = {"random": "tab:grey", "byol": "tab:orange", "scrl": "tab:blue"}
    width = 0.26
    for i, method in enumerate(METHODS):
        row = result["methods"][method]
        x = [j + (i - 1) * width for j in range(len(MEASURES))]
        ax.bar(x, [row[k] for k, _, _ in MEASURES], width, yerr=[row[f"{k}_std"] for k, _, _ in MEASURES],
               capsize=3, color=colours[method], label=method.upper() if method != "random" else "random init")
    for j, (_, _, refs) in enumerate(MEASURES):
        for r in refs[-1:]:  # the highest reference rate of the measure
            ax.hlines(result["reference"][r], j - 1.5 * width, j + 1.5 * width, colors="black", linestyles=":", lw=1)
    ax.set_xticks(range(len(MEASURES)), [label.replace(" (%)", "") for _, label, _ in MEASURES], fontsize=8)
    ax.set_ylabel("% (mean ± std over seeds; dotted: majority / chance)", fontsize=8)
    save_figure(fig, path, title, title_size=8)
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path)


def seconds(value: float) -> str:
    """A duration as read at a glance: seconds up to two minutes, minutes above."""
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


class Progress:
    """One line as each planned phase starts: its number, the time so far and an ETA.

    The ETA sums, over the phases still to run (this one included), the mean duration of the
    finished phases of their kind. Kinds not finished yet count as nothing, so the ETA is then a
    lower bound ("> ..."), and "unknown" before any phase has finished.
    """

    def __init__(self, kinds: list[str], clock: Callable[[], float] = time.perf_counter) -> None:
        self.todo = list(kinds)  # the kind of every phase still to run, in order
        self.total = len(kinds)
        self.clock = clock
        self.started = clock()
        self.durations: dict[str, list[float]] = {}

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> str:
        known = [statistics.fmean(self.durations[k]) for k in self.todo if k in self.durations]
        if not known:
            return "ETA unknown"
        return f"ETA {'> ' if len(known) < len(self.todo) else ''}{seconds(sum(known))}"

    @contextlib.contextmanager
    def phase(self, kind: str, label: str) -> Iterator[None]:
        if not self.todo or self.todo[0] != kind:
            raise ValueError(f"phase {kind!r} is not the one planned next ({self.todo[:1]})")
        number = self.total - len(self.todo) + 1
        print(f"[{number}/{self.total} | {seconds(self.elapsed())} so far | {self.eta()}] {label}", flush=True)
        start = self.clock()
        yield
        self.durations.setdefault(kind, []).append(self.clock() - start)
        self.todo.pop(0)


def write_json(path: Path, obj: Any) -> None:
    """Write through a temporary file and a rename, so a killed run leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings in which two runs differ, nested ones named ``outer.inner``."""
    out = []
    for key in sorted(stored.keys() | wanted.keys()):
        old, new = stored.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} there, {new!r} here")
    return out


def start_record(path: Path, settings: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The finished rows this run starts from: those of the partial JSON at ``path`` with ``resume``, else none.

    Raises:
        SystemExit: ``resume`` and ``path`` is not a record of a run with these ``settings``.
    """
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they are read back
    fresh = {"run": settings, "seconds": 0.0, "pretraining": {}, "per_seed": {method: [] for method in METHODS}}
    if not path.exists():
        if resume:
            print(f"--resume: no {path} yet, starting afresh", flush=True)
        return fresh
    if not resume:
        print(f"{path} holds an earlier run: starting afresh (--resume would continue it)", flush=True)
        return fresh
    try:
        record = json.loads(path.read_text())
        changed = differences(record["run"], settings)
    except (ValueError, KeyError, TypeError) as err:
        refuse(f"--resume: {path} is not a partial JSON of this benchmark ({err!r}); run without --resume")
    if changed:
        refuse(f"--resume: {path} was made with other settings ({'; '.join(changed)}); continue it with its "
                 "settings, start afresh without --resume, or choose another --output-dir")
    return record


def refuse(message: str) -> NoReturn:
    """Stop on input the benchmark cannot use, as argparse does: the message on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Budget]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--budget", choices=sorted(BUDGETS), default="smoke")
    add("--pretrain-data", nargs="+", default=None, metavar="FOLDER",
        help="folders of photos to pretrain on, read recursively (default: ../shared/data/imagenet-sample and "
             "../shared/data/coco128-train)")
    add("--eval-data", default=None, help="box dataset: COCO .json or YOLO folder (default: ../shared/data/coco128-train)")
    add("--eval-image-dir", default=None, help="image folder of a COCO .json (default: guessed from its layout)")
    add("--test-fraction", type=float, default=0.5, help="share of the box dataset's images held out per seed, in (0, 1)")
    add("--steps", type=int, default=None, help="override the budget's pretraining steps, >= 1")
    add("--image-size", type=int, default=None, help="override the pretraining view side, >= 32 pixels")
    add("--batch-size", type=int, default=None, help="override the pretraining batch, >= 1")
    add("--detector", choices=DETECTORS, default="frcnn",
        help="the detector fine-tuned for box AP: torchvision's Faster R-CNN FPN (frcnn), or Ultralytics YOLO, "
             "fine-tuned and validated by Ultralytics (yolo; needs an Ultralytics --arch and a YOLO folder as --eval-data)")
    add("--arch", default=None, metavar="ARCH",
        help="override the trunk: a torchvision builder name of scrl.trunk.supported_archs() (--detector frcnn), or "
             f"ultralytics:NAME.yaml, the backbone of an Ultralytics model YAML (--detector yolo; default {YOLO_ARCH})")
    add("--seeds", type=int, default=None, help="override the number of splits / fine-tuning seeds, >= 1")
    add("--det-iters", type=int, default=None, help="override the Faster R-CNN fine-tuning iterations, >= 1")
    add("--yolo-epochs", type=int, default=None, help="override the YOLO fine-tuning epochs, >= 1")
    add("--pretrain-seed", type=int, default=0, help="seed of the initial weights and of pretraining, >= 0")
    add("--output-dir", default=str(ROOT / "runs" / "transfer"),
        help="folder of everything the run writes: the pretraining runs, transfer_<budget>_partial.json, "
             "transfer_<budget>.json and the figure, <budget> being <budget>_yolo with --detector yolo (default: "
             "runs/transfer in the checkout)")
    add("--plot-dir", default=None, help="folder of the figure transfer_<budget>.png instead of --output-dir "
                                         "(docs/figures holds the documentation's)")
    add("--resume", action="store_true",
        help="continue from --output-dir's transfer_<budget>_partial.json: rows it holds are not measured again "
             "(refused when it was made with other settings); total_seconds adds up the time of every run up to its last "
             "finished row")
    add("--max-consecutive-unreadable", type=int, default=DEFAULT_MAX_CONSECUTIVE_UNREADABLE, metavar="N",
        help="unreadable --eval-data images are skipped and named; N in a row stop the benchmark "
             f"(default: {DEFAULT_MAX_CONSECUTIVE_UNREADABLE})")
    add("--verbose", action="store_true", help="show the pretraining and fine-tuning runs' own log lines")
    add("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    overrides = {"steps": ("steps", 1), "image_size": ("view", 32), "batch_size": ("batch", 1), "seeds": ("seeds", 1),
                 "det_iters": ("det_iters", 1), "yolo_epochs": ("yolo_epochs", 1), "pretrain_seed": (None, 0),
                 "max_consecutive_unreadable": (None, 1)}
    for name, (_, low) in overrides.items():
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if not 0 < args.test_fraction < 1:
        p.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    yolo = args.detector == "yolo"
    if args.arch is not None:
        if args.arch not in supported_archs() and not args.arch.startswith(ULTRALYTICS_PREFIX):
            p.error(f"--arch: invalid choice: {args.arch!r} (a torchvision name of scrl.trunk.supported_archs(), "
                    "or ultralytics:NAME.yaml)")
        if yolo and not args.arch.startswith(ULTRALYTICS_PREFIX):
            p.error(f"--detector yolo fine-tunes the Ultralytics detector of the trunk: --arch must be "
                    f"ultralytics:NAME.yaml (default {YOLO_ARCH}), got {args.arch!r}")
        if not yolo and args.arch.startswith(ULTRALYTICS_PREFIX):
            p.error(f"--detector frcnn builds torchvision's Faster R-CNN on a torchvision trunk: --arch {args.arch} "
                    "goes with --detector yolo")
    b = dataclasses.replace(BUDGETS[args.budget], **{
        field: getattr(args, name) for name, (field, _) in overrides.items() if field and getattr(args, name) is not None
    })
    if args.arch is not None or yolo:
        b = dataclasses.replace(b, arch=args.arch or YOLO_ARCH)
    return args, b


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, b = parse_args(argv)
    out = Path(args.output_dir)
    lock = FolderLock(out)  # a second benchmark on this folder would delete and rewrite this one's runs
    try:
        lock.acquire()
    except FolderLockedError as err:
        refuse(f"--output-dir: {err}")
    try:
        return measure(args, b, argv)
    finally:
        lock.release()


def measure(args: argparse.Namespace, b: Budget, argv: list[str] | None) -> dict[str, Any]:
    """Everything :func:`main` does once the output folder is held: pretrain, evaluate, report."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.budget == "gpu" and device.type != "cuda":
        refuse("--budget gpu needs a CUDA device")
    yolo = args.detector == "yolo"
    try:  # fail before pretraining, not after
        if yolo:
            import_ultralytics()
        else:
            load_pycocotools()
    except (ImportError, ValueError) as err:
        refuse(str(err))
    pretrain_paths = [Path(p) for p in args.pretrain_data] if args.pretrain_data else DEFAULT_PRETRAIN
    eval_path = Path(args.eval_data) if args.eval_data else DEFAULT_EVAL
    for flag, path in [("--pretrain-data", p) for p in pretrain_paths] + [("--eval-data", eval_path)]:
        if not path.exists():
            refuse(f"{flag} {path} does not exist (the defaults are the sample data in ../shared/data; "
                     "pass your own folders of photos and a COCO .json or YOLO folder of boxes)")
    try:
        images = image_folders(pretrain_paths)
        with warnings.catch_warnings():  # annotation problems are listed once by the reader; the run goes on
            warnings.filterwarnings("ignore", r"\d+ annotation problem", LabelWarning)
            data = open_box_dataset(eval_path, image_dir=args.eval_image_dir, split=True,
                                    max_consecutive_unreadable=args.max_consecutive_unreadable)
        for seed in range(b.seeds):  # each split needs boxes on both sides: found out before pretraining, not after
            for side, indices in zip(("training", "held-out"), split_by_image(len(data), args.test_fraction, seed=seed)):
                require_boxes_in(data, indices, side)
    except (ValueError, FileNotFoundError) as err:
        refuse(str(err))
    if yolo and not isinstance(data, YoloBoxes):
        refuse(f"--detector yolo: Ultralytics reads the labels beside the images, so --eval-data must be a YOLO folder "
               f"(images/ and labels/), got {eval_path}")
    quiet = not args.verbose
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = dict(device=device, autocast_dtype=torch.bfloat16 if b.amp == "bf16" else None, channels_last=b.channels_last)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    print(f"budget {args.budget}: {b}\npretraining on {len(images)} photos from {', '.join(map(str, pretrain_paths))}; "
          f"evaluating on {data!r}", flush=True)

    settings: dict[str, Any] = {
        "budget": args.budget, "settings": dataclasses.asdict(b), "pretrain_data": [str(p) for p in pretrain_paths],
        "pretrain_images": len(images), "eval_data": str(eval_path), "eval_image_dir": args.eval_image_dir,
        "eval_images": len(data), "num_classes": data.num_classes, "test_fraction": args.test_fraction,
        "pretrain_seed": args.pretrain_seed, "detector": args.detector, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    name = f"{args.budget}_yolo" if yolo else args.budget  # of the runs folder and the files: one per detector
    partial = out / f"transfer_{name}_partial.json"
    record = start_record(partial, settings, args.resume)
    write_json(partial, record)  # from now on a killed run can be resumed, or refused, by its settings
    rows_left = [(m, seed) for m in METHODS for seed in range(len(record["per_seed"][m]), b.seeds)]
    pretraining_left = [m for m in ("scrl", "byol") if m not in record["pretraining"]]
    progress = Progress(["pretraining"] * len(pretraining_left) + ["RoI measures", "detection"] * len(rows_left))
    earlier = record["seconds"]  # of the runs this one continues, up to their last finished row

    def save() -> None:
        record["seconds"] = earlier + progress.elapsed()
        write_json(partial, record)

    trunks = pretrained_trunks(b, images, args.pretrain_seed, out / name, record, {m for m, _ in rows_left},
                               progress, save, quiet)
    fine_tuning = (f"YOLO fine-tuning ({b.yolo_epochs} epochs at {b.yolo_size} px)" if yolo
                   else f"detection fine-tuning ({b.det_iters} iterations)")
    for method, seed in rows_left:
        with progress.phase("RoI measures", f"{method} seed {seed}: RoI measures"):
            row = roi_row(trunks[method], data, seed, b, args.test_fraction, run)
        with progress.phase("detection", f"{method} seed {seed}: {fine_tuning}, box AP"):
            if yolo:
                row |= yolo_row(trunks[method], data, seed, b, args.test_fraction, run, quiet,
                                out / name / "finetune" / f"{method}_seed{seed}")
            else:
                row |= detection_row(trunks[method], data, seed, b, args.test_fraction, run, quiet)
        record["per_seed"][method].append(row)
        save()
        print(f"  {method} seed {seed}: RoI linear {statistics.fmean(row['linear_runs']):.1f}, k-NN {row['knn_top1']:.1f}, "
              f"retrieval {row['retrieval_top1']:.1f}, box AP {row['box_ap']:.2f}, AP50 {row['box_ap50']:.2f}", flush=True)

    pretraining = {"random": {"train_seconds": 0.0, "steps": 0}, **record["pretraining"]}
    result: dict[str, Any] = {**settings, "threads": torch.get_num_threads(), "methods": {
        m: {**pretraining[m], "images_seen": pretraining[m]["steps"] * b.batch, **summarise(record["per_seed"][m])}
        for m in METHODS
    }}
    first = result["methods"]["random"]["per_seed"]  # splits and box pairs are the same for every trunk
    result["reference"] = {
        "chance": first[0]["chance"],
        "majority": statistics.fmean(s["majority"] for s in first),
        "retrieval_chance": statistics.fmean(s["retrieval_chance"] for s in first),
        "test_boxes": statistics.fmean(s["test_boxes"] for s in first),
        "test_images": first[0]["test_images"],
    }
    result["comparison"] = compare(result["methods"]["scrl"], result["methods"]["byol"])
    result["total_seconds"] = earlier + progress.elapsed()
    result["command"] = "python benchmarks/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])

    detector = f"YOLO {b.yolo_epochs} epochs at {b.yolo_size} px" if yolo else f"Faster R-CNN {b.det_iters} iterations"
    title = (f"{b.arch}, {b.steps} steps x {b.batch} photos at {b.view} px; {len(data)} box images, "
             f"{b.seeds} seeds, {detector}")
    drawn = plot(result, Path(args.plot_dir or out) / f"transfer_{name}.png", title)
    if drawn:
        result["figure"] = drawn
    print(f"figure: {drawn}" if drawn else 'figure not drawn: matplotlib is not installed (pip install "scrl[plot]")')
    print(table(result))
    ref = result["reference"]
    print(f"{data.num_classes} classes, {ref['test_images']} held-out images ({ref['test_boxes']:.0f} boxes) per seed; "
          f"± is the sample std over {b.seeds} seed(s) (RoI linear: over seeds x {b.head_seeds} heads)")
    print(f"total {result['total_seconds']:.0f} s on {result['device_name']}; command: {result['command']}")
    write_json(out / f"transfer_{name}.json", result)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
