#!/usr/bin/env python
"""Self-supervised pretraining with SCRL (or BYOL) on ImageNet, any image folder, or synthetic scenes.

One process:      python examples/pretrain_imagenet.py --data /data/imagenet/train --preset 1000ep
One node, 8 GPUs: torchrun --nproc_per_node=8 examples/pretrain_imagenet.py --data ... --preset 1000ep
Several nodes:    torchrun --nnodes=4 --node_rank=R --nproc_per_node=8 --rdzv_endpoint=HOST:29500 \\
                      examples/pretrain_imagenet.py --data ... --preset 1000ep
CPU smoke run:    python examples/pretrain_imagenet.py --epochs 1

From a file:      python examples/pretrain_imagenet.py --config runs/a/config.yaml --output-dir runs/b

The run writes to --output-dir: checkpoint_last.pth (resume with --resume auto, the default),
metrics.jsonl (one JSON object per log line), config.yaml (its resolved settings, for --config),
and at the end backbone_torchvision.pth. The run itself is scrl.train.Pretrainer; this script only
turns flags (over a --config file) into a scrl.train.PretrainConfig. See docs/pretraining.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import sys
import warnings
from typing import Iterator

from scrl.data import DataError
from scrl.runtime import FolderLockedError
from scrl.train import CheckpointError, ConfigError, PretrainConfig, Pretrainer, RunWarning
from scrl.train.config import SETTINGS, add_arguments

# The library names a setting by its field: "base_lr must be ...", "resume='none'", "epochs: 2 ...".
# Longest names first, so that roi_probe_every is not read as roi_probe.
NAMES = "|".join(sorted(SETTINGS, key=len, reverse=True))
SETTING = re.compile(r"(?<![\w./'-])(" + NAMES + r")(?==|: | must | has no effect|,|$)")


def in_flags(message: str) -> str:
    """A library message about settings, with each setting named as its flag."""
    message = SETTING.sub(lambda m: SETTINGS[m[1]].flag, message)
    return re.sub(r"(--[\w-]+)=True\b", r"\1", message)  # on/off flags take no value


def parser() -> argparse.ArgumentParser:
    """The flags of every setting (:func:`scrl.train.config.add_arguments`), and ``--config``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="read the settings from this YAML file (e.g. a run's config.yaml); the flags given override it")
    add_arguments(p)
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
    flags = vars(p.parse_args(argv))
    config_file = flags.pop("config", None)
    with console():
        try:
            config = PretrainConfig(**flags) if config_file is None else PretrainConfig.from_yaml(config_file, **flags)
            return Pretrainer(config).run()
        except (ConfigError, CheckpointError, DataError, FileNotFoundError) as err:  # a setting, file or data the run cannot use: named, exit 2
            p.error(in_flags(str(err)))
        except FolderLockedError as err:  # another run is using --output-dir right now
            p.exit(2, f"error: {in_flags(str(err))}\n")
        except OSError as err:  # e.g. a checkpoint that could not be written: the message names path and cause
            p.exit(1, f"error: {err}\n")


if __name__ == "__main__":
    main()
