"""Small-scale quality: SCRL vs BYOL vs random initialisation, by RoI evaluation of the trunk.

Both methods are pretrained by the engine of examples/pretrain_imagenet.py, ``scrl.train.Pretrainer``
(same trunk, steps, seed and synthetic scenes), in chunks resumed exactly from its checkpoints so that the
online RoI probe (``scrl.eval.roi_probe``) can be logged between them. Each trunk is then
evaluated next to the random initialisation both methods start from, on

* held-out synthetic scenes (same generator, another seed; 18 classes), and
* the COCO128 photos (80 classes; split by image; skipped when the folder is absent),

with RoI linear top-1 (mean +- std over linear heads, and over pretraining seeds where the
budget has several), RoI k-NN top-1 (cosine, k = 20), and cross-view RoI retrieval top-1, each
beside its chance rate and the majority-class rate.

    python benchmarks/quality.py --budget smoke            # about a minute on a CPU: does it all run
    python benchmarks/quality.py --budget cpu --json       # ~80k images per method (hours on 2 cores)
    python benchmarks/quality.py --budget gpu --json       # one H100/H200, bf16, channels-last, < 10 minutes

Prints a table and, with --json, one JSON object on the last line (keys ``random``, ``byol``,
``scrl``, ``budget``, ``steps``, ``arch``, ``image_size`` and more). Draws the probe curves to
docs/figures/roi_probe_<budget>.png when matplotlib is installed (pip install "scrl[plot]").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from scrl.data import HELD_OUT_SEED, LabelWarning, SyntheticScenes, YoloBoxes
from scrl.eval import roi_measures, roi_probe
from scrl.export import trunk_weights
from scrl.train import PretrainConfig, Pretrainer, build_model
from scrl.runtime import LAST_CHECKPOINT
from scrl.trunk import Trunk, resnet_trunk
from scrl.viz import headless_pyplot, save_figure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COCO128 = ROOT.parent / "shared" / "data" / "coco128-train"


@dataclasses.dataclass(frozen=True)
class Budget:
    """Everything a budget fixes. Steps are optimiser steps of ``batch`` images per method."""

    arch: str
    view: int  # view side of pretraining (scenes are 1.5x larger, as scrl.train.build_dataset makes them)
    batch: int
    steps: int
    steps_per_epoch: int  # sets the synthetic dataset size: steps_per_epoch * batch scenes
    probe_every: int
    probe_images: int
    probe_size: int
    eval_images: int
    eval_size: int
    coco_size: int
    head_epochs: int
    head_seeds: int
    pretrain_seeds: int
    workers: int
    eval_workers: int
    eval_batch: int
    amp: str
    channels_last: bool


BUDGETS = {
    "smoke": Budget("resnet18", 64, 16, 20, 10, 10, 32, 96, 48, 128, 128, 20, 3, 1, 2, 0, 16, "off", False),
    # ~80k images seen per method (2,500 steps of 32): about where the methods start to separate.
    "cpu": Budget("resnet18", 96, 32, 2500, 125, 500, 128, 192, 384, 256, 256, 100, 3, 1, 2, 0, 16, "off", False),
    # ~205k images per method; on one H100 with 16 cores the scene workers set the pace (~960 images/s).
    "gpu": Budget("resnet18", 96, 256, 800, 100, 200, 256, 192, 1024, 256, 512, 100, 5, 1, 12, 8, 64, "bf16", True),
}


def trunk_from_checkpoint(path: Path, arch: str, device: torch.device) -> Trunk:
    trunk = resnet_trunk(arch)
    trunk.body.load_state_dict(trunk_weights(path))
    return trunk.to(device)


def pretrain_config(
    method: str, b: Budget, seed: int, out: Path, device: torch.device, roi_pooling: str = "exact"
) -> PretrainConfig:
    """The run of one method and seed; ``max_steps`` and ``resume`` are set per chunk."""
    # The paper's 32-px minimum box side on every budget and device.
    boxes = dict(roi_pooling=roi_pooling, min_box_size=32.0) if method == "scrl" else {}
    return PretrainConfig(
        method=method, arch=b.arch, image_size=b.view, batch_size=b.batch, synthetic_images=b.steps_per_epoch * b.batch,
        epochs=b.steps // b.steps_per_epoch, preset="200ep", workers=b.workers, seed=seed, output_dir=str(out),
        amp=b.amp, log_every=min(50, b.probe_every), device=device.type, channels_last=b.channels_last, **boxes,
    )


def last_logged(out: Path, key: str) -> float | None:
    value = None
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                value = record[key]
    return value


def pretrain_with_probe(
    method: str, b: Budget, seed: int, out: Path, device: torch.device, probe_data: SyntheticScenes,
    run: dict, quiet: bool, roi_pooling: str = "exact",
) -> dict[str, Any]:
    """Pretrain in chunks of ``probe_every`` steps, probing the online trunk after each.

    ``method`` names the row (``scrl_aligned`` trains ``--method scrl``).
    """
    config = pretrain_config(method.split("_")[0], b, seed, out, device, roi_pooling)
    shutil.rmtree(out, ignore_errors=True)  # the benchmark's own earlier run of this row
    curve, train_seconds = [], 0.0
    for end in range(b.probe_every, b.steps + 1, b.probe_every):
        start = time.perf_counter()
        chunk = dataclasses.replace(config, max_steps=end, resume="auto" if end > b.probe_every else "none")
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            Pretrainer(chunk).run()
        train_seconds += time.perf_counter() - start
        trunk = trunk_from_checkpoint(out / LAST_CHECKPOINT, b.arch, device)
        probe = roi_probe(trunk, probe_data, image_size=b.probe_size, **run)
        curve.append({"step": end, "images_seen": end * b.batch, **probe})
        print(f"  {method} seed {seed} step {end}/{b.steps}: probe RoI linear {probe['roi_linear_top1']:.1f} %, "
              f"k-NN {probe['roi_knn_top1']:.1f} % ({train_seconds:.0f} s training)", flush=True)
    return {
        "checkpoint": out / LAST_CHECKPOINT,
        "curve": curve,
        "train_seconds": train_seconds,
        "final_loss": last_logged(out, "loss"),
        "collapse_std": last_logged(out, "collapse_std"),
    }


def evaluate(trunk: Trunk, name: str, data: Any, size: int, b: Budget, run: dict) -> dict[str, float]:
    """RoI linear, RoI k-NN and cross-view retrieval of one trunk on one dataset (split by image)."""
    m = roi_measures(trunk, data, split_seed=0, image_size=size, view_size=b.view, head_epochs=b.head_epochs,
                     head_seeds=range(b.head_seeds), batch_size=b.eval_batch, num_workers=b.eval_workers, **run)
    return {
        f"{name}_linear_runs": m.linear_runs,
        f"{name}_knn_top1": m.knn_top1,
        f"{name}_retrieval_top1": m.retrieval_top1,
        f"{name}_retrieval_chance": m.retrieval_chance,
        f"{name}_chance": m.chance,
        f"{name}_majority": m.majority,
        f"{name}_test_boxes": m.test_boxes,
    }


def summarise(per_seed: list[dict[str, Any]], sets: list[str]) -> dict[str, Any]:
    """Mean (and std) over pretraining seeds; linear heads pooled over seeds and head seeds."""
    out: dict[str, Any] = {}
    for name in sets:
        runs = [r for s in per_seed for r in s[f"{name}_linear_runs"]]
        out[f"{name}_linear_top1"] = statistics.fmean(runs)
        out[f"{name}_linear_top1_std"] = statistics.pstdev(runs)
        for metric in ("knn_top1", "retrieval_top1"):
            values = [s[f"{name}_{metric}"] for s in per_seed]
            out[f"{name}_{metric}"] = statistics.fmean(values)
            out[f"{name}_{metric}_std"] = statistics.pstdev(values)
        for metric in ("retrieval_chance", "chance", "majority", "test_boxes"):
            out[f"{name}_{metric}"] = per_seed[0][f"{name}_{metric}"]
    for key in ("train_seconds", "final_loss", "collapse_std"):
        values = [s[key] for s in per_seed if s.get(key) is not None]
        if values:
            out[key] = statistics.fmean(values)
    return out


def plot(curves: dict[str, list[list[dict]]], path: Path, title: str) -> bool:
    plt = headless_pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours = {"scrl": "tab:blue", "byol": "tab:orange", "scrl_aligned": "tab:green"}
    for method, seeds in curves.items():
        for i, curve in enumerate(seeds):
            x = [p["images_seen"] / 1000 for p in curve]
            label = method.upper() if i == 0 else None
            ax.plot(x, [p["roi_linear_top1"] for p in curve], "-o", color=colours.get(method), label=label and f"{label} linear")
            ax.plot(x, [p["roi_knn_top1"] for p in curve], "--", color=colours.get(method), label=label and f"{label} k-NN")
    first = next(iter(curves.values()))[0][0]
    ax.axhline(first["roi_chance"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("images seen (thousands)")
    ax.set_ylabel("online RoI probe top-1 (%)")
    save_figure(fig, path, title)
    return True


def table(result: dict[str, Any], sets: list[str]) -> str:
    def cell(row: dict, key: str) -> str:
        std = row.get(f"{key}_std")
        return f"{row[key]:.1f}" + (f" ± {std:.1f}" if std else "")

    header = ["method", "budget", "steps", "images seen", "train s"]
    for name in sets:
        header += [f"{name} linear", f"{name} k-NN", f"{name} retrieval"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in [m for m in ("random", "byol", "scrl", "scrl_aligned") if m in result]:
        row = result[method]
        cells = [method, result["budget"], str(row["steps"]), str(row["images_seen"]), f"{row.get('train_seconds', 0):.0f}"]
        for name in sets:
            cells += [cell(row, f"{name}_linear_top1"), cell(row, f"{name}_knn_top1"), cell(row, f"{name}_retrieval_top1")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    for name in sets:
        r = result["random"]
        notes.append(
            f"{name}: chance {r[f'{name}_chance']:.1f} %, majority class {r[f'{name}_majority']:.1f} %, "
            f"retrieval chance {r[f'{name}_retrieval_chance']:.1f} %, {r[f'{name}_test_boxes']} test boxes"
        )
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    p.add_argument("--steps", type=int, default=None, help="override the budget's pretraining steps (multiple of its probe interval)")
    p.add_argument("--pretrain-seeds", type=int, default=None, help="override the budget's number of pretraining seeds")
    p.add_argument("--coco128", default=str(DEFAULT_COCO128), help="COCO128 YOLO folder (skipped when absent)")
    p.add_argument("--output-dir", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--plot-dir", default=str(ROOT / "docs" / "figures"))
    p.add_argument("--roi-pooling", choices=["exact", "aligned", "unaligned"], default="exact",
                   help="where SCRL pools its boxes in pretraining: the trunk's cell centres (exact), or RoIAlign's "
                        "aligned=True / aligned=False conventions")
    p.add_argument("--also-aligned", action="store_true",
                   help="add an SCRL row pretrained with aligned=True pooling (scrl_aligned), same seeds and data")
    p.add_argument("--verbose", action="store_true", help="show the pretraining run's own log lines")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = p.parse_args(argv)
    b = BUDGETS[args.budget]
    if args.steps is not None:
        if args.steps < b.probe_every or args.steps % b.probe_every or args.steps % b.steps_per_epoch:
            p.error(f"--steps must be a positive multiple of {b.probe_every} and {b.steps_per_epoch}")
        b = dataclasses.replace(b, steps=args.steps)
    if args.pretrain_seeds is not None:
        b = dataclasses.replace(b, pretrain_seeds=args.pretrain_seeds)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.budget == "gpu" and device.type != "cuda":
        p.error("--budget gpu needs a CUDA device")
    started = time.perf_counter()
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    run = dict(device=device, autocast_dtype=torch.bfloat16 if b.amp == "bf16" else None, channels_last=b.channels_last)
    torch.backends.cudnn.benchmark = device.type == "cuda"

    scene_size = round(1.5 * b.view)  # scrl.train.build_dataset's scenes for image_size
    probe_data = SyntheticScenes(b.probe_images, image_size=scene_size, seed=HELD_OUT_SEED + 1)
    eval_sets: list[tuple[str, Any, int]] = [
        ("synthetic", SyntheticScenes(b.eval_images, image_size=scene_size, seed=HELD_OUT_SEED), b.eval_size)
    ]
    coco = Path(args.coco128)
    if (coco / "images").is_dir():
        with warnings.catch_warnings():  # two label files there have no image; known and harmless
            warnings.simplefilter("ignore", LabelWarning)
            eval_sets.append(("coco128", YoloBoxes(coco), b.coco_size))
    else:
        print(f"COCO128 not found at {coco}: evaluating on synthetic scenes only")
    sets = [name for name, _, _ in eval_sets]
    print(f"budget {args.budget}: {b}", flush=True)

    result: dict[str, Any] = {"budget": args.budget, "steps": b.steps, "arch": b.arch, "image_size": b.view,
                              "batch_size": b.batch, "scene_size": scene_size, "device": str(device),
                              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "threads": torch.get_num_threads(), "pretrain_seeds": b.pretrain_seeds,
                              "head_seeds": b.head_seeds, "roi_pooling": args.roi_pooling}
    curves: dict[str, list[list[dict]]] = {}
    # Each pretrained row: (method, PretrainConfig.roi_pooling).
    rows = [("byol", "exact"), ("scrl", args.roi_pooling)] + ([("scrl_aligned", "aligned")] if args.also_aligned else [])
    per_method: dict[str, list[dict[str, Any]]] = {"random": [], **{name: [] for name, _ in rows}}
    for seed in range(b.pretrain_seeds):
        # The initialisation both methods start from, as scrl.train builds it.
        start, _ = pretrain_config("scrl", b, seed, Path(args.output_dir), device).resolve(device.type == "cuda")
        torch.manual_seed(seed)
        random_trunk = build_model(start).trunk.to(device)
        start_probe = {"step": 0, "images_seen": 0, **roi_probe(random_trunk, probe_data, image_size=b.probe_size, **run)}
        scores = {"train_seconds": 0.0}
        for name, data, size in eval_sets:
            scores.update(evaluate(random_trunk, name, data, size, b, run))
        per_method["random"].append(scores)
        for method, pooling in rows:
            out = Path(args.output_dir) / args.budget / f"{method}_seed{seed}"
            trained = pretrain_with_probe(method, b, seed, out, device, probe_data, run, not args.verbose, pooling)
            curves.setdefault(method, []).append([start_probe] + trained["curve"])
            trunk = trunk_from_checkpoint(trained["checkpoint"], b.arch, device)
            scores = {k: trained[k] for k in ("train_seconds", "final_loss", "collapse_std")}
            for name, data, size in eval_sets:
                scores.update(evaluate(trunk, name, data, size, b, run))
            per_method[method].append(scores)
            print(f"  {method} seed {seed} evaluated ({time.perf_counter() - started:.0f} s so far)", flush=True)
            partial = {**result, "partial": per_method, "probe": curves, "seconds": time.perf_counter() - started}
            (Path(args.output_dir) / f"quality_{args.budget}_partial.json").write_text(json.dumps(partial, default=str))

    for method, per_seed in per_method.items():
        steps = 0 if method == "random" else b.steps
        result[method] = {"steps": steps, "images_seen": steps * b.batch, **summarise(per_seed, sets)}
        if method in curves:
            result[method]["probe"] = curves[method]
    result["total_seconds"] = time.perf_counter() - started
    result["command"] = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])

    figure = Path(args.plot_dir) / f"roi_probe_{args.budget}.png"
    title = (f"{b.arch}, {b.view}-px views, batch {b.batch}, {b.steps} steps; probe: {b.probe_images} held-out "
             f"scenes at {b.probe_size} px")
    if plot(curves, figure, title):
        result["figure"] = str(figure.resolve().relative_to(ROOT) if figure.resolve().is_relative_to(ROOT) else figure)
        print(f"probe curves: {figure}")
    else:
        print('probe curves not drawn: matplotlib is not installed (pip install "scrl[plot]"); they are in the JSON')
    print(table(result, sets))
    print(f"total {result['total_seconds']:.0f} s on {result['device_name']}")
    (Path(args.output_dir) / f"quality_{args.budget}.json").write_text(json.dumps(result))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
