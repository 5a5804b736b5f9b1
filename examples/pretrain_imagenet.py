#!/usr/bin/env python
"""Self-supervised pretraining with SCRL (or BYOL) on ImageNet, any image folder, or synthetic scenes.

One process:      python examples/pretrain_imagenet.py --data /data/imagenet/train --preset 1000ep
One node, 8 GPUs: torchrun --nproc_per_node=8 examples/pretrain_imagenet.py --data ... --preset 1000ep
Several nodes:    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_endpoint=HOST:29500 \\
                      examples/pretrain_imagenet.py --data ... --preset 1000ep
CPU smoke run:    python examples/pretrain_imagenet.py --epochs 1

The run writes to --output-dir: checkpoint_last.pth (resume with --resume auto, the default),
metrics.jsonl (one JSON object per log line), and at the end backbone_torchvision.pth. The run
itself is scrl.train.Pretrainer; this script only turns flags into a scrl.train.PretrainConfig.
See docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import sys
import warnings
from typing import Iterator, get_args

from scrl.data import DataError
from scrl.runtime import FolderLockedError
from scrl.train import PRESETS, CheckpointError, ConfigError, PretrainConfig, Pretrainer, RunWarning
from scrl.train.config import CPU_DEFAULTS, FIXED_DEFAULTS, GPU_DEFAULTS, Amp, Device, Method, RoIPooling

FIELDS = sorted((f.name for f in dataclasses.fields(PretrainConfig)), key=len, reverse=True)
# The library names a setting by its field: "base_lr must be ...", "resume='none'", "epochs: 2 ...".
SETTING = re.compile(r"(?<![\w./'-])(" + "|".join(FIELDS) + r")(?==|: | must | has no effect|,|$)")


def in_flags(message: str) -> str:
    """A library message about settings, with each setting named as its flag."""
    message = SETTING.sub(lambda m: "--" + m[1].replace("_", "-"), message)
    return re.sub(r"(--[\w-]+)=True\b", r"\1", message)  # on/off flags take no value


def default(name: str) -> str:
    """What a run uses for an unset flag, as PretrainConfig decides it."""
    if name in FIXED_DEFAULTS:
        return f"default: {FIXED_DEFAULTS[name]}"
    if name in GPU_DEFAULTS or name in CPU_DEFAULTS:
        return f"default: {GPU_DEFAULTS.get(name, 'from --preset')} on GPU, {CPU_DEFAULTS.get(name, 'from --preset')} on CPU"
    return f"default: {PretrainConfig.__dataclass_fields__[name].default}"


def parser() -> argparse.ArgumentParser:
    # Unset flags stay out of the namespace, so PretrainConfig holds the one set of defaults.
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    add = p.add_argument
    add("--data", help="folder tree of images (e.g. ImageNet train/); default: built-in synthetic scenes")
    add("--method", choices=get_args(Method), help=default("method"))
    add("--arch", help=f"a torchvision CNN: resnet50, resnext50_32x4d, regnet_y_800mf, convnext_tiny, efficientnet_b0, mobilenet_v3_large, ... (docs/trunks.md; {default('arch')})")
    add("--preset", choices=sorted(PRESETS), help="paper hyper-parameters (default: 1000ep on GPU, 200ep on CPU)")
    add("--epochs", type=int, help=f"epochs of the schedule ({default('epochs')})")
    add("--max-steps", type=int, help="stop after this many optimiser steps (the schedule still spans --epochs)")
    add("--batch-size", type=int, help=f"images per process ({default('batch_size')})")
    add("--image-size", type=int, help=f"view side in pixels ({default('image_size')})")
    add("--num-boxes", type=int, help=f"box pairs per image K (SCRL; {default('num_boxes')})")
    add("--roi-pooling", choices=get_args(RoIPooling),
        help="where SCRL pools each box: at the trunk's cell centres (exact), or as RoIAlign's aligned=True "
             f"(Detectron2) / aligned=False (the authors' code) assume ({default('roi_pooling')})")
    add("--min-box-size", type=float, help=f"smallest box side in view pixels (SCRL; {default('min_box_size')})")
    add("--projector-hidden", type=int, help=f"hidden width of projector and predictor ({default('projector_hidden')})")
    add("--projection-dim", type=int, help=f"output width of projector and predictor ({default('projection_dim')})")
    add("--base-lr", type=float, help="learning rate per 256 images (lr = base * global batch / 256)")
    add("--weight-decay", type=float)
    add("--tau-base", type=float, help="target weight tau at step 0 of the cosine schedule")
    add("--warmup-epochs", type=float, help="linear warm-up (default: 10, at most a tenth of --epochs)")
    add("--workers", type=int, help=f"data workers per process (default: CPU cores per process - 1, at most 10; {CPU_DEFAULTS['workers']} on CPU)")
    add("--synthetic-images", type=int, help=f"size of the synthetic dataset without --data ({default('synthetic_images')})")
    add("--output-dir", help=default("output_dir"))
    add("--resume", help=f"auto (latest checkpoint in --output-dir, if any), a checkpoint path, or none ({default('resume')})")
    add("--overwrite", action="store_true",
        help="if --output-dir holds another run (or one that cannot be resumed), move it aside into replaced-<time>/ and start afresh")
    add("--seed", type=int, help=default("seed"))
    add("--amp", choices=get_args(Amp), help=f"mixed precision ({default('amp')})")
    add("--channels-last", action="store_true", help="NHWC memory format (faster convolutions on tensor cores)")
    add("--compile", action="store_true", help="torch.compile the model")
    add("--augment-on-device", action="store_true",
        help="workers only decode, crop, resize and flip; colour jitter, grayscale, blur, solarize run batched on the device")
    add("--decode-on-device", action="store_true",
        help="workers only read the files; JPEG decoding, crop, resize, flip and the photometric steps run batched on the device")
    add("--save-every", type=int, help=f"also save every N optimiser steps (0: only at epoch ends, on signals, at the end; {default('save_every')})")
    add("--log-every", type=int, help=f"log at step 1 and every N optimiser steps ({default('log_every')})")
    add("--roi-probe", metavar="DATA",
        help="box dataset for the online RoI probe (COCO .json, YOLO folder, or synthetic[:N]); off by default")
    add("--roi-probe-every", type=int, metavar="N", help=f"run the RoI probe every N epochs (and at the end; {default('roi_probe_every')})")
    add("--roi-probe-size", type=int, help="image side for the RoI probe (default: 2x --image-size)")
    add("--device", choices=get_args(Device), help=default("device"))
    add("--max-consecutive-unreadable", type=int, metavar="N",
        help=f"with --data: stop when N files in a row cannot be decoded; fewer are replaced and reported ({default('max_consecutive_unreadable')})")
    return p


class Console(logging.Handler):
    """The library's log lines, on stdout; a signal's notice (WARNING) on stderr.

    One write per line: every rank writes to the same terminal, and separate writes of a line and
    its end interleave between processes.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            show(f"warning: {record.getMessage()}", sys.stderr)
        else:
            show(record.getMessage(), sys.stdout)


def show(line: str, stream) -> None:
    stream.write(f"{line}\n")
    stream.flush()


def show_warning(message: Warning | str, category: type[Warning], *_: object) -> None:
    """A warning as one line; the run's own (about its settings) name each setting as its flag."""
    show(f"warning: {in_flags(str(message)) if issubclass(category, RunWarning) else message}", sys.stderr)


@contextlib.contextmanager
def console() -> Iterator[None]:
    """Show the ``scrl`` logger's INFO lines and every warning, one line each, for the length of one run."""
    logger, handler = logging.getLogger("scrl"), Console()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("always", RunWarning)
        warnings.showwarning = show_warning
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) a pretraining run; returns its summary dict (also after a stop by signal)."""
    p = parser()
    args = p.parse_args(argv)
    with console():
        try:
            return Pretrainer(PretrainConfig(**vars(args))).run()
        except (ConfigError, CheckpointError, DataError, FileNotFoundError) as err:  # a setting, file or data the run cannot use: named, exit 2
            p.error(in_flags(str(err)))
        except FolderLockedError as err:  # another run is using --output-dir right now
            p.exit(2, f"error: {in_flags(str(err))}\n")
        except OSError as err:  # e.g. a checkpoint that could not be written: the message names path and cause
            p.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
