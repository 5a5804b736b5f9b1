#!/usr/bin/env python
"""Self-supervised pretraining with SCRL (or BYOL) on ImageNet, any image folder, or synthetic scenes.

One process:      python examples/pretrain_imagenet.py --data /data/imagenet/train --preset 1000ep
One node, 8 GPUs: torchrun --nproc_per_node=8 examples/pretrain_imagenet.py --data ... --preset 1000ep
Several nodes:    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_endpoint=HOST:29500 \\
                      examples/pretrain_imagenet.py --data ... --preset 1000ep
CPU smoke run:    python examples/pretrain_imagenet.py --epochs 1

The run writes to --output-dir: checkpoint_last.pth (resume with --resume auto, the default),
metrics.jsonl (one JSON object per log line), and at the end backbone_torchvision.pth. See
docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import random
import time

import numpy as np
import torch
from torch import nn

import scrl
from scrl.train.checkpoint import latest_checkpoint, restore_checkpoint, rng_state, save_checkpoint, set_rng_state
from scrl.data import (
    ImageFolderDataset, ResumableSampler, SyntheticScenes, TwoViewBatch, TwoViewDataset, mix_seed, open_box_dataset,
    two_view_loader,
)
from scrl.train.distributed import DistInfo, all_gather_object, cleanup, init_distributed, wrap_ddp
from scrl.eval import roi_probe
from scrl.train.telemetry import DeviceMeans, MetricsLogger, NonFiniteWatch
from scrl.train.schedule import cosine_tau
from scrl.train.stop_signal import StopSignal
from scrl.transforms import BatchPhotometric, normalize_uint8

# Hyper-parameters of the paper (SCRL, CVPR 2021: Sec. 4.1 and Table A5) and of the authors'
# released 1000-epoch config; the learning rate is per 256 images.
PRESETS = {
    "200ep": dict(epochs=200, base_lr=0.45, weight_decay=1.0e-6, tau_base=0.97),
    "1000ep": dict(epochs=1000, base_lr=0.45, weight_decay=1.5e-6, tau_base=0.97),
    "1000ep-released": dict(epochs=1000, base_lr=0.2, weight_decay=1.5e-6, tau_base=0.996),
}
# Defaults for values not given on the command line: the paper's setting with a GPU, and a
# run that finishes in about a minute per epoch on a laptop CPU otherwise.
# On the CPU, 64-px views have 2 x 2 C5 cells, and the overlap of two crops rarely spans a whole
# 32-px cell in both views (a fifth of the box slots would be filled); half-cell boxes fill most.
GPU_DEFAULTS = dict(arch="resnet50", image_size=224, batch_size=256, amp="bf16", synthetic_images=16384, min_box_size=32.0)
CPU_DEFAULTS = dict(
    arch="resnet18", image_size=64, batch_size=32, amp="off", synthetic_images=512, workers=2, epochs=10, min_box_size=16.0
)
CHECKPOINT = "checkpoint_last.pth"
RANK_STREAMS = 0x52414E4B  # "RANK": the key that marks per-rank random streams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--data", default=None, help="folder tree of images (e.g. ImageNet train/); default: built-in synthetic scenes")
    add("--method", choices=["scrl", "byol"], default="scrl")
    add("--arch", default=None, help="resnet18|resnet34|resnet50|resnet101 (default: resnet50 on GPU, resnet18 on CPU)")
    add("--preset", choices=sorted(PRESETS), default=None, help="paper hyper-parameters (default: 1000ep on GPU, 200ep on CPU)")
    add("--epochs", type=int, default=None, help="epochs of the schedule (default: from the preset; 10 on CPU)")
    add("--max-steps", type=int, default=None, help="stop after this many optimiser steps (the schedule still spans --epochs)")
    add("--batch-size", type=int, default=None, help="images per process (default: 256 on GPU, 32 on CPU)")
    add("--image-size", type=int, default=None, help="view side in pixels (default: 224 on GPU, 64 on CPU)")
    add("--num-boxes", type=int, default=10, help="box pairs per image K (SCRL)")
    add("--roi-pooling", choices=["exact", "aligned", "unaligned"], default="exact",
        help="where SCRL pools each box: at the trunk's cell centres (exact), or as RoIAlign's aligned=True "
             "(Detectron2) / aligned=False (the authors' code) assume")
    add("--min-box-size", type=float, default=None,
        help="smallest box side in view pixels (SCRL; default: 32, one C5 cell, on GPU; 16 on CPU)")
    add("--projector-hidden", type=int, default=4096, help="hidden width of projector and predictor")
    add("--projection-dim", type=int, default=256, help="output width of projector and predictor")
    add("--base-lr", type=float, default=None, help="learning rate per 256 images (lr = base * global batch / 256)")
    add("--weight-decay", type=float, default=None)
    add("--tau-base", type=float, default=None, help="target weight tau at step 0 of the cosine schedule")
    add("--warmup-epochs", type=float, default=None, help="linear warm-up (default: 10, at most a tenth of --epochs)")
    add("--workers", type=int, default=None, help="data workers per process (default: CPU cores per process - 1, at most 10; 2 on CPU)")
    add("--synthetic-images", type=int, default=None, help="size of the synthetic dataset without --data")
    add("--output-dir", default="runs/pretrain")
    add("--resume", default="auto", help="auto (latest checkpoint in --output-dir, if any), a checkpoint path, or none")
    add("--seed", type=int, default=0)
    add("--amp", choices=["bf16", "fp16", "off"], default=None, help="mixed precision (default: bf16 on GPU, off on CPU)")
    add("--channels-last", action="store_true", help="NHWC memory format (faster convolutions on tensor cores)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--augment-on-device", action="store_true",
        help="workers only decode, crop, resize and flip; colour jitter, grayscale, blur, solarize run batched on the device")
    add("--save-every", type=int, default=0, help="also save every N optimiser steps (0: only at epoch ends, on signals, at the end)")
    add("--log-every", type=int, default=10, help="log every N optimiser steps")
    add("--roi-probe", default=None, metavar="DATA",
        help="box dataset for the online RoI probe (COCO .json, YOLO folder, or synthetic[:N]); off by default")
    add("--roi-probe-every", type=int, default=1, metavar="N", help="run the RoI probe every N epochs (and at the end)")
    add("--roi-probe-size", type=int, default=None, help="image side for the RoI probe (default: 2x --image-size)")
    add("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = p.parse_args(argv)
    for name in ("epochs", "max_steps", "batch_size", "num_boxes", "projector_hidden", "projection_dim", "log_every",
                 "synthetic_images", "roi_probe_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    # Checked here so that a bad flag is named, rather than the learning rate, warm-up steps or
    # image sizes derived from it later. 32 px is one stride-32 C5 cell and the smallest box side.
    for name, ok, allowed in (
        ("base_lr", lambda v: v > 0, "> 0"),
        ("weight_decay", lambda v: v >= 0, ">= 0"),
        ("tau_base", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ("warmup_epochs", lambda v: v >= 0, ">= 0"),
        ("image_size", lambda v: v >= 32, ">= 32"),
        ("min_box_size", lambda v: v > 0, "> 0"),
        ("roi_probe_size", lambda v: v >= 32, ">= 32"),
    ):
        value = getattr(args, name)
        if value is not None and not ok(value):  # "not ok" also rejects nan
            p.error(f"--{name.replace('_', '-')} must be {allowed}, got {value}")
    if args.min_box_size is not None and args.image_size is not None and args.min_box_size > args.image_size:
        p.error(f"--min-box-size must be at most --image-size ({args.image_size}), got {args.min_box_size}")
    if args.resume not in ("auto", "none") and not os.path.isfile(args.resume):
        p.error(f"--resume {args.resume!r}: no such checkpoint file (use auto, none or a path)")
    for name in ("save_every", "workers"):
        if (getattr(args, name) or 0) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def resolve_defaults(args: argparse.Namespace, on_gpu: bool, local_world_size: int) -> list[str]:
    """Fill unset options from the preset and the device defaults; returns the names that were filled.

    Precedence: command line, then an explicit --preset, then the device defaults, then the
    default preset (1000ep on GPU, 200ep on CPU).
    """
    device_defaults = dict(GPU_DEFAULTS if on_gpu else CPU_DEFAULTS)
    if on_gpu:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        device_defaults["workers"] = max(1, min(10, cores // local_world_size - 1))
    if args.preset is None:
        defaults = {**PRESETS["1000ep" if on_gpu else "200ep"], **device_defaults}
    else:
        defaults = {**device_defaults, **PRESETS[args.preset]}
    filled = []
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
            filled.append(name)
    if args.warmup_epochs is None:
        args.warmup_epochs = min(10.0, args.epochs / 10)
        filled.append("warmup_epochs")
    return filled


def build_dataset(args: argparse.Namespace) -> torch.utils.data.Dataset:
    if args.data is not None:
        return ImageFolderDataset(args.data)  # raises before any worker starts if it holds no image
    return SyntheticScenes(args.synthetic_images, image_size=round(1.5 * args.image_size), seed=args.seed)


def build_model(args: argparse.Namespace) -> nn.Module:
    heads = dict(projector_hidden=args.projector_hidden, projection_dim=args.projection_dim, tau_base=args.tau_base)
    if args.method == "scrl":
        aligned = {"exact": None, "aligned": True, "unaligned": False}[args.roi_pooling]
        return scrl.SCRL(args.arch, num_boxes=args.num_boxes, min_size=args.min_box_size, roi_aligned=aligned, **heads)
    return scrl.BYOL(args.arch, **heads)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of all parameters, online and target, to compare processes.

    Buffers are left out: without SyncBatchNorm (CPU runs) each process keeps its own running
    statistics, while the parameters must agree bit for bit.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def progress_line(r: dict, last_step: int) -> str:
    return (
        f"epoch {r['epoch']} step {r['step']}/{last_step} loss {r['loss']:.4f} lr {r['lr']:.4g} tau {r['tau']:.5f} "
        f"{r['images_per_s']:.1f} img/s data-wait {r['data_wait_share']:.0%} eta {datetime.timedelta(seconds=round(r['eta_s']))} "
        f"valid-boxes {r['valid_box_share']:.0%} skipped {r['skipped_files']}"
    )


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) a pretraining run; returns a summary dict (also after a stop by signal)."""
    args = parse_args(argv)
    dist_info = init_distributed(None if args.device == "auto" else args.device)
    try:
        return pretrain(args, dist_info)
    finally:
        cleanup()


def pretrain(args: argparse.Namespace, dist_info: DistInfo) -> dict:
    # ---------------------------------------------------------------- setup
    rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
    main_process = rank == 0
    log = print if main_process else (lambda *a, **k: None)
    on_gpu = device.type == "cuda"
    filled = resolve_defaults(args, on_gpu, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if not on_gpu:
        picked = " ".join(f"--{n.replace('_', '-')} {getattr(args, n)}" for n in filled)
        log(f"no GPU: using CPU defaults {picked} (set any of them explicitly to override)")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[args.amp]
    global_batch = args.batch_size * world
    lr = args.base_lr * global_batch / 256
    torch.backends.cudnn.benchmark = on_gpu

    photometric = "device" if args.augment_on_device else True
    transform = scrl.TwoViewTransform.byol(size=args.image_size, uint8=True, photometric=photometric)
    dataset = TwoViewDataset(build_dataset(args), transform, seed=args.seed)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = two_view_loader(dataset, sampler, args.batch_size, args.workers, pin_memory=on_gpu)
    steps_per_epoch = len(sampler) // args.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} images give no full batch of {args.batch_size} per process on {world} process(es)")
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(args.warmup_epochs * steps_per_epoch))
    last_step = min(total_steps, args.max_steps or total_steps)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = build_model(args)
    # SyncBatchNorm needs a GPU; on CPU each process normalises with its own batch statistics.
    sync_bn = world > 1 and on_gpu
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # trunk, heads and target alike
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    optimizer = scrl.LARS(scrl.lars_param_groups(model, args.weight_decay), lr=lr, momentum=0.9, eta=0.001)
    scheduler = scrl.warmup_cosine(optimizer, warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    train_model = wrap_ddp(model, device, sync_buffers=not sync_bn)
    if args.compile:
        train_model = torch.compile(train_model)

    # Per-rank random streams: box sampling and photometric augmentation on the device, and the
    # global ones for anything else. torch.compile cannot trace a Generator argument (graph
    # breaks), so compiled runs draw boxes and augmentation parameters from the global device
    # RNG, which is checkpointed as well. Four keys per seed keep these streams apart from the
    # workers' per-sample (seed, epoch, index) ones.
    def rank_seed(stream: int) -> int:
        return mix_seed(args.seed, RANK_STREAMS, rank, stream)

    box_generator = torch.Generator(device).manual_seed(rank_seed(1))
    augment_generator = torch.Generator(device).manual_seed(rank_seed(5))
    generators = {"boxes": box_generator, "augment": augment_generator}
    box_rng, augment_rng = (None, None) if args.compile else (box_generator, augment_generator)
    torch.manual_seed(rank_seed(2))
    np.random.seed(rank_seed(3) % 2**32)
    random.seed(rank_seed(4))

    augment = None
    if args.augment_on_device:
        augment = [BatchPhotometric(view=1).to(device), BatchPhotometric(view=2).to(device)]
        if args.compile:  # dozens of elementwise passes over the batch, fused into a few kernels
            augment = [torch.compile(op) for op in augment]

    def device_views(batch: TwoViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's uint8 views as normalised float views (photometric steps too with --augment-on-device)."""
        if augment is not None:
            view1 = augment[0](batch.view1, generator=augment_rng)
            view2 = augment[1](batch.view2, generator=augment_rng)
        else:
            view1, view2 = normalize_uint8(batch.view1), normalize_uint8(batch.view2)
        return view1.contiguous(memory_format=memory_format), view2.contiguous(memory_format=memory_format)

    # ---------------------------------------------------------------- resume
    step, epoch, batch_in_epoch, skipped_files = 0, 0, 0, set()
    ckpt_path = os.path.join(args.output_dir, CHECKPOINT)
    resume_from = {"auto": latest_checkpoint(args.output_dir), "none": None}.get(args.resume, args.resume)
    if resume_from is not None:
        ckpt = restore_checkpoint(resume_from, device, model=model, optimizer=optimizer, scheduler=scheduler)
        if ckpt["scaler"]:  # empty when the run was not fp16: an fp16 resume then starts a fresh scale
            scaler.load_state_dict(ckpt["scaler"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        skipped_files = set(ckpt["skipped_files"])
        saved_world, saved_batch = ckpt["world_size"], ckpt["args"]["batch_size"]
        if (saved_world, saved_batch) == (world, args.batch_size):
            set_rng_state(ckpt["rng"][rank], generators)
        else:  # the data order and random streams cannot continue exactly; keep the position approximately
            batch_in_epoch = min(steps_per_epoch, batch_in_epoch * saved_world * saved_batch // global_batch)
            log(f"warning: checkpoint made with {saved_world} x {saved_batch} images per step, now {world} x {args.batch_size}: "
                "the run continues, but not exactly as an uninterrupted one would")
        log(f"resumed from {resume_from}: step {step}, epoch {epoch}, batch {batch_in_epoch} of the epoch")

    reported = set(skipped_files)

    def gather_skipped() -> list[str]:
        """Unreadable files met by any rank and not reported yet (a collective); every rank learns all."""
        skipped_files.update(*all_gather_object(skipped_files))
        new = sorted(skipped_files - reported)
        reported.update(new)
        return new

    saved_at = step if resume_from is not None else None

    def save() -> None:
        nonlocal saved_at
        gather_skipped()
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": epoch + (batch_in_epoch == steps_per_epoch),
            "batch_in_epoch": batch_in_epoch % steps_per_epoch,
            "rng": all_gather_object(rng_state(generators)),
            "world_size": world,
            "skipped_files": sorted(skipped_files),
            "args": vars(args),
        }
        if main_process:
            save_checkpoint(state, ckpt_path)
        saved_at = step

    logger = MetricsLogger(args.output_dir, enabled=main_process)
    probe_data = None
    if args.roi_probe and main_process:
        probe_data = open_box_dataset(args.roi_probe, synthetic_image_size=round(1.5 * args.image_size))

    def run_roi_probe() -> None:
        """RoI linear + k-NN accuracy of the online trunk on --roi-probe (rank 0), logged to metrics.jsonl."""
        if probe_data is None:
            return
        # Forked RNG: probing must not change the training's random streams, so a run with the
        # probe trains exactly as one without it (and resumes exactly).
        with torch.random.fork_rng(devices=[device] if on_gpu else []):
            metrics = roi_probe(model.trunk, probe_data, image_size=args.roi_probe_size or 2 * args.image_size,
                                autocast_dtype=amp_dtype, channels_last=args.channels_last)
        logger.log({"event": "roi_probe", "step": step, "epoch": epoch} | metrics)
        log(f"roi probe at step {step}: linear top-1 {metrics['roi_linear_top1']:.1f} %, k-NN top-1 "
            f"{metrics['roi_knn_top1']:.1f} % (chance {metrics['roi_chance']:.1f} %, majority {metrics['roi_majority']:.1f} %)")

    augmented = "photometric steps on the device" if args.augment_on_device else "augmented in the workers"
    log(f"{args.method} {args.arch}: {len(dataset)} images, {world} process(es) x {args.batch_size} = {global_batch} per step, "
        f"lr {lr:.4g}, {steps_per_epoch} steps/epoch, {total_steps} steps total (stopping at {last_step}), "
        f"views {args.image_size}px ({augmented}), amp {args.amp}, {args.workers} workers, device {device}")
    logger.log({"event": "start", "step": step, "world_size": world, "lr": lr, "total_steps": total_steps}
               | {f"arg_{k}": v for k, v in vars(args).items()})

    # ---------------------------------------------------------------- loop
    means, watch = DeviceMeans(), NonFiniteWatch()
    interval_start, data_wait, interval_steps = time.perf_counter(), 0.0, 0
    stopped_by = None

    def check_finite() -> None:
        bad = watch.first_bad_step()
        if bad is not None:
            last_good = f"{ckpt_path} (step {saved_at})" if saved_at is not None else "none written yet"
            raise FloatingPointError(
                f"non-finite loss at step {bad} (epoch {(bad - 1) // steps_per_epoch}); stopping. Last good checkpoint: {last_good}"
            )

    with StopSignal() as stop:
        train_model.train()
        while step < last_step and stopped_by is None:
            sampler.set_epoch(epoch, start=batch_in_epoch * args.batch_size)
            batches = iter(loader)
            while batch_in_epoch < steps_per_epoch and step < last_step:
                t0 = time.perf_counter()
                batch = next(batches).to(device, non_blocking=True)
                data_wait += time.perf_counter() - t0
                view1, view2 = device_views(batch)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss, logs = train_model(view1, view2, batch.geom1, batch.geom2, generator=box_rng)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                lr_now = optimizer.param_groups[0]["lr"]
                scheduler.step()
                model.update_target(step, total_steps)
                step, batch_in_epoch, interval_steps = step + 1, batch_in_epoch + 1, interval_steps + 1
                watch.update(loss, step)
                means.add(logs)
                skipped_files.update(batch.skipped)

                if step % args.log_every == 0 or step == last_step:
                    check_finite()
                    stats = means.read()
                    new_skips = gather_skipped()
                    elapsed = time.perf_counter() - interval_start
                    record = {
                        "step": step, "epoch": epoch, "loss": stats["loss"], "lr": lr_now,
                        "tau": cosine_tau(step - 1, total_steps, args.tau_base),
                        "images_per_s": interval_steps * global_batch / elapsed, "data_wait_share": data_wait / elapsed,
                        "eta_s": (last_step - step) * elapsed / interval_steps, "valid_box_share": stats["valid_share"],
                        "collapse_std": stats["collapse_std"], "skipped_files": len(skipped_files), "new_skipped_files": new_skips,
                    }
                    if on_gpu:
                        record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    logger.log(record)
                    for path in new_skips:
                        log(f"skipped unreadable file: {path}")
                    log(progress_line(record, last_step), flush=True)
                    interval_start, data_wait, interval_steps = time.perf_counter(), 0.0, 0

                if stop.agreed():
                    stopped_by = stop.received.name if stop.received else "signal on another rank"
                    break
                if args.save_every and step % args.save_every == 0:
                    check_finite()
                    save()
            if batch_in_epoch == steps_per_epoch:
                check_finite()
                if saved_at != step:
                    save()
                if (epoch + 1) % args.roi_probe_every == 0 and step < last_step:
                    run_roi_probe()
                epoch, batch_in_epoch = epoch + 1, 0

    # ---------------------------------------------------------------- checkpoint and export
    check_finite()
    if saved_at != step:
        save()
    if stopped_by is None:
        run_roi_probe()
    digests = all_gather_object(weights_digest(model))
    # One write per line: every rank prints to the same stream, and print() writes the line and
    # its end separately, which interleave between processes when the stream is unbuffered.
    print(f"rank {rank}: weights sha256 {digests[rank]}\n", end="", flush=True)
    backbone_path = os.path.join(args.output_dir, "backbone_torchvision.pth")
    if main_process and stopped_by is None:
        save_checkpoint({k: v.contiguous() for k, v in model.backbone_state_dict().items()}, backbone_path)
    logger.log({
        "event": "stopped" if stopped_by else "end", "step": step, "epoch": epoch, "stopped_by": stopped_by,
        "weights_sha256": digests[0], "ranks_identical": len(set(digests)) == 1, "skipped_files": len(skipped_files),
    })
    if stopped_by:
        log(f"stopped by {stopped_by} at step {step}; checkpoint {ckpt_path}; resume with --resume auto")
    else:
        log(f"finished at step {step}; checkpoint {ckpt_path}; backbone {backbone_path}")
    logger.close()
    return {"step": step, "epoch": epoch, "stopped_by": stopped_by, "weights_sha256": digests[rank],
            "skipped_files": sorted(skipped_files)}


if __name__ == "__main__":
    main()
