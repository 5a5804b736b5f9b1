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
  the code of examples/finetune_detection.py).

    python benchmarks/transfer.py --budget smoke --json     # a few minutes on a CPU: does the chain run
    python benchmarks/transfer.py --budget cpu --json       # about 45 minutes on 2 CPU cores
    python benchmarks/transfer.py --budget gpu --json       # one H100-class GPU, < 10 minutes
    python benchmarks/transfer.py --budget cpu --eval-data my/annotations/instances_train.json --pretrain-data my/photos

Prints one table (mean +- std over seeds, the reference rates, and whether the SCRL-BYOL
difference exceeds the seed spread) and, with --json, one JSON object on the last line. Draws the
bars into docs/figures/transfer_<budget>.png when matplotlib is installed (pip install "scrl[plot]").
Box AP needs pycocotools (pip install "scrl[detection]").
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from scrl.data import ImageFolderDataset, LabelWarning, open_box_dataset
from scrl.eval import build_detector, coco_box_ap, detection_classifier, roi_measures, split_by_image, train_detector
from scrl.eval.detection import load_pycocotools
from scrl.train import PretrainConfig, Pretrainer
from scrl.trunk import Trunk, supported_archs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_PRETRAIN = [SHARED / "imagenet-sample", SHARED / "coco128-train"]
DEFAULT_EVAL = SHARED / "coco128-train"
METHODS = ("random", "byol", "scrl")
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
    det_workers: int
    amp: str
    channels_last: bool


BUDGETS = {
    # Proves the chain runs: 160 images seen per method, detection hardly trained.
    "smoke": Budget("resnet18", 64, 16, 10, 2, 128, 16, 0, 20, 2, 2, 10, None, 2, 128, 213, 64, 100, 0, "off", False),
    # What 2 CPU cores do in about 45 minutes: ~12.8k images (~11 epochs of the 1,128 photos) per
    # method at 1.3 s a step, then 3 x 3 fine-tunings of 100 iterations at ~1.2 s each, at 4x the
    # linear-scaling learning rate because the schedule is so short.
    "cpu": Budget("resnet18", 96, 32, 400, 2, 256, 16, 0, 100, 3, 3, 100, 0.01, 2, 256, 427, 128, 300, 1, "off", False),
    # One H100-class GPU, 16 cores (untested on a GPU): ~77k images (~68 epochs) per method, then
    # 3 x 3 fine-tunings of 200 iterations of 8 images at 448 px (2x the linear-scaling rate).
    "gpu": Budget("resnet50", 160, 256, 300, 12, 512, 64, 8, 100, 5, 3, 200, 0.02, 8, 448, 747, 256, 500, 6, "bf16", True),
}


def image_folders(paths: list[Path]) -> Dataset:
    """The images under all ``paths`` (recursive), one dataset in path order."""
    folders = [ImageFolderDataset(str(path)) for path in paths]
    return folders[0] if len(folders) == 1 else ConcatDataset(folders)


def pretrain(method: str, b: Budget, images: Dataset, seed: int, out: Path, quiet: bool) -> Pretrainer:
    """Build the run of one method (its model initialised from ``seed``); the caller runs it."""
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own earlier run of this row
    steps_per_epoch = max(1, len(images) // b.batch)
    # The paper's 32-px minimum box side needs 3 x 3 C5 cells of view to fill most box slots;
    # smaller views take half-cell boxes, as the CPU defaults of scrl.train do.
    boxes = dict(min_box_size=32.0 if b.view >= 96 else 16.0) if method == "scrl" else {}
    config = PretrainConfig(
        method=method, arch=b.arch, image_size=b.view, batch_size=b.batch, epochs=math.ceil(b.steps / steps_per_epoch),
        max_steps=b.steps, preset="200ep", workers=b.workers, seed=seed, output_dir=str(out), resume="none", amp=b.amp,
        channels_last=b.channels_last, log_every=max(1, b.steps // 10), **boxes,
    )
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        return Pretrainer(config, dataset=images)


def run_pretraining(pretrainer: Pretrainer, quiet: bool) -> dict[str, Any]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        summary = pretrainer.run()
    return {"train_seconds": time.perf_counter() - start, "steps": summary["step"]}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def measure(trunk: Trunk, data: Dataset, seed: int, b: Budget, test_fraction: float, run: dict, quiet: bool) -> dict[str, Any]:
    """Every measure of one trunk on the split of ``seed``: RoI evaluation, then detection fine-tuning."""
    m = roi_measures(trunk, data, split_seed=seed, test_fraction=test_fraction, image_size=b.eval_size, view_size=b.view,
                     head_epochs=b.head_epochs, head_seeds=range(b.head_seeds), batch_size=b.eval_batch,
                     num_workers=b.eval_workers, **run)
    train_idx, test_idx = split_by_image(len(data), test_fraction, seed=seed)
    torch.manual_seed(seed)  # detector heads, batch order and flips: the same for every trunk
    classifier, _ = detection_classifier(trunk, trunk.arch)
    # AP ranks detections by score: a low threshold keeps a briefly trained detector, whose scores
    # are still near 1 / (classes + 1), from scoring 0 for want of any detection.
    detector = build_detector(classifier, data.num_classes, min_size=b.det_min_size, max_size=b.det_max_size,
                              rois_per_image=b.det_rois, proposals=b.det_proposals, score_threshold=0.001)
    log = (lambda *a, **k: None) if quiet else print
    trained = train_detector(detector, Subset(data, train_idx), iters=b.det_iters, batch_size=b.det_batch, lr=b.det_lr,
                             workers=b.det_workers, device=run["device"], amp=b.amp == "bf16", seed=seed,
                             log_every=max(1, b.det_iters // 5), log=log)
    held_out = Subset(data, test_idx)
    held_out.num_classes = data.num_classes
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        ap = coco_box_ap(trained["model"], held_out, run["device"], b.det_batch, b.det_workers)
    return {**m.as_dict(), "box_ap": ap["box_ap"], "box_ap50": ap["box_ap50"], "detections": ap["detections"],
            "det_first_loss": trained["first_loss"], "det_final_loss": trained["final_loss"],
            "det_seconds": trained["train_seconds"]}


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path)


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
    add("--arch", choices=supported_archs(), default=None, metavar="ARCH",
        help="override the trunk: a torchvision builder name of scrl.trunk.supported_archs()")
    add("--seeds", type=int, default=None, help="override the number of splits / fine-tuning seeds, >= 1")
    add("--det-iters", type=int, default=None, help="override the detection fine-tuning iterations, >= 1")
    add("--pretrain-seed", type=int, default=0, help="seed of the initial weights and of pretraining, >= 0")
    add("--output-dir", default=str(ROOT / "runs" / "transfer"))
    add("--plot-dir", default=str(ROOT / "docs" / "figures"))
    add("--verbose", action="store_true", help="show the pretraining and fine-tuning runs' own log lines")
    add("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    overrides = {"steps": ("steps", 1), "image_size": ("view", 32), "batch_size": ("batch", 1), "seeds": ("seeds", 1),
                 "det_iters": ("det_iters", 1), "pretrain_seed": (None, 0)}
    for name, (_, low) in overrides.items():
        value = getattr(args, name)
        if value is not None and value < low:
            p.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if not 0 < args.test_fraction < 1:
        p.error(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    b = dataclasses.replace(BUDGETS[args.budget], **{
        field: getattr(args, name) for name, (field, _) in overrides.items() if field and getattr(args, name) is not None
    })
    if args.arch is not None:
        b = dataclasses.replace(b, arch=args.arch)
    return args, b


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, b = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.budget == "gpu" and device.type != "cuda":
        sys.exit("error: --budget gpu needs a CUDA device")
    try:
        load_pycocotools()  # fail before pretraining, not after
    except ImportError as err:
        sys.exit(f"error: {err}")
    pretrain_paths = [Path(p) for p in args.pretrain_data] if args.pretrain_data else DEFAULT_PRETRAIN
    eval_path = Path(args.eval_data) if args.eval_data else DEFAULT_EVAL
    for flag, path in [("--pretrain-data", p) for p in pretrain_paths] + [("--eval-data", eval_path)]:
        if not path.exists():
            sys.exit(f"error: {flag} {path} does not exist (the defaults are the sample data in ../shared/data; "
                     "pass your own folders of photos and a COCO .json or YOLO folder of boxes)")
    try:
        images = image_folders(pretrain_paths)
        with warnings.catch_warnings():  # annotation problems are listed once by the reader; the run goes on
            warnings.simplefilter("ignore", LabelWarning)
            data = open_box_dataset(eval_path, image_dir=args.eval_image_dir)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if len(data) < 2:
        sys.exit(f"error: --eval-data {eval_path} holds {len(data)} image(s); the splits need at least 2")
    started = time.perf_counter()
    quiet = not args.verbose
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = dict(device=device, autocast_dtype=torch.bfloat16 if b.amp == "bf16" else None, channels_last=b.channels_last)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    print(f"budget {args.budget}: {b}\npretraining on {len(images)} photos from {', '.join(map(str, pretrain_paths))}; "
          f"evaluating on {data!r}", flush=True)

    trunks: dict[str, Trunk] = {}
    rows: dict[str, dict[str, Any]] = {"random": {"train_seconds": 0.0, "steps": 0}}
    for method in ("scrl", "byol"):
        try:
            pretrainer = pretrain(method, b, images, args.pretrain_seed, out / args.budget / method, quiet)
        except ValueError as err:  # settings the run refuses (a batch larger than the photos, ...)
            sys.exit(f"error: {err}")
        if "random" not in trunks:  # the initialisation both methods start from
            trunks["random"] = copy.deepcopy(pretrainer.model.trunk)
        elif not same_weights(trunks["random"], pretrainer.model.trunk):
            raise RuntimeError(f"{method} starts from other trunk weights than scrl: the comparison would be unfair")
        rows[method] = run_pretraining(pretrainer, quiet)
        trunks[method] = pretrainer.model.trunk
        print(f"  {method}: {rows[method]['steps']} steps of {b.batch} ({rows[method]['steps'] * b.batch / len(images):.1f} "
              f"epochs) in {rows[method]['train_seconds']:.0f} s", flush=True)

    result: dict[str, Any] = {
        "budget": args.budget, "settings": dataclasses.asdict(b), "pretrain_data": [str(p) for p in pretrain_paths],
        "pretrain_images": len(images), "eval_data": str(eval_path), "eval_images": len(data),
        "num_classes": data.num_classes, "test_fraction": args.test_fraction, "pretrain_seed": args.pretrain_seed,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "methods": {},
    }
    for method in METHODS:
        per_seed = []
        for seed in range(b.seeds):
            per_seed.append(measure(trunks[method], data, seed, b, args.test_fraction, run, quiet))
            s = per_seed[-1]
            print(f"  {method} seed {seed}: RoI linear {statistics.fmean(s['linear_runs']):.1f}, k-NN {s['knn_top1']:.1f}, "
                  f"retrieval {s['retrieval_top1']:.1f}, box AP {s['box_ap']:.2f}, AP50 {s['box_ap50']:.2f} "
                  f"({time.perf_counter() - started:.0f} s so far)", flush=True)
        result["methods"][method] = {**rows[method], "images_seen": rows[method]["steps"] * b.batch, **summarise(per_seed)}
        (out / f"transfer_{args.budget}_partial.json").write_text(json.dumps(result))
    first = result["methods"]["random"]["per_seed"]  # splits and box pairs are the same for every trunk
    result["reference"] = {
        "chance": first[0]["chance"],
        "majority": statistics.fmean(s["majority"] for s in first),
        "retrieval_chance": statistics.fmean(s["retrieval_chance"] for s in first),
        "test_boxes": statistics.fmean(s["test_boxes"] for s in first),
        "test_images": first[0]["test_images"],
    }
    result["comparison"] = compare(result["methods"]["scrl"], result["methods"]["byol"])
    result["total_seconds"] = time.perf_counter() - started
    result["command"] = "python benchmarks/transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])

    title = (f"{b.arch}, {b.steps} steps x {b.batch} photos at {b.view} px; {len(data)} box images, "
             f"{b.seeds} seeds, Faster R-CNN {b.det_iters} iterations")
    drawn = plot(result, Path(args.plot_dir) / f"transfer_{args.budget}.png", title)
    if drawn:
        result["figure"] = drawn
    print(f"figure: {drawn}" if drawn else 'figure not drawn: matplotlib is not installed (pip install "scrl[plot]")')
    print(table(result))
    ref = result["reference"]
    print(f"{data.num_classes} classes, {ref['test_images']} held-out images ({ref['test_boxes']:.0f} boxes) per seed; "
          f"± is the sample std over {b.seeds} seed(s) (RoI linear: over seeds x {b.head_seeds} heads)")
    print(f"total {result['total_seconds']:.0f} s on {result['device_name']}; command: {result['command']}")
    (out / f"transfer_{args.budget}.json").write_text(json.dumps(result))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
