"""Checks before a run trains: can the box pairs fit in its views, and which settings will not do what they say."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from ..box_sampler import BoxPairSampler
from ..data import TwoViewDataset
from .config import BOX_FIELDS, FIXED_DEFAULTS, MODEL_FIELDS, ConfigError, PretrainConfig

__all__ = ["LOW_VALID_SHARE", "box_fill", "check_boxes_fit", "cpu_defaults_notice", "setting_warnings"]

# Below this share of filled box slots SCRL learns from few boxes per image; a run warns.
LOW_VALID_SHARE = 0.25


def box_fill(dataset: TwoViewDataset, sampler: BoxPairSampler, pairs: int = 64, seed: int = 0) -> tuple[float, int]:
    """The share of box slots ``sampler`` fills on view pairs of the first images of ``dataset``.

    The views are made exactly as in training (epoch 0 of ``dataset``); the random streams of the
    caller are left untouched (``TwoViewDataset`` seeds per sample, the sampler draws from its own
    generator).

    Args:
        dataset: the run's two-view dataset.
        sampler: the run's box sampler.
        pairs: view pairs to draw, one per image, cycling over the first images if there are fewer.
        seed: seeds the box draws.

    Returns:
        ``(share of filled slots in [0, 1], number of view pairs drawn)``.
    """
    count = min(pairs, len(dataset))
    items = [dataset[(0, i)] for i in range(count)]
    geom1 = default_collate([item.geom1 for item in items])
    geom2 = default_collate([item.geom2 for item in items])
    boxes = sampler(geom1, geom2, generator=torch.Generator().manual_seed(seed))
    return float(boxes.valid.float().mean()), count


def setting_warnings(
    config: PretrainConfig, resolved: PretrainConfig, *, model_given: bool, on_gpu: bool, warmup_steps: int, total_steps: int
) -> list[str]:
    """What the run will do other than its settings suggest: one message per problem, naming the fields.

    Args:
        config: the settings as given (before :meth:`PretrainConfig.resolve`), to tell a given
            setting from a default.
        resolved: the same settings resolved for the device.
        model_given: the run trains a model given to it.
        on_gpu: the run trains on a GPU.
        warmup_steps, total_steps: the learning-rate schedule's lengths in optimiser steps.
    """
    messages = config.ignored_settings(model_given)
    if warmup_steps > 0 and warmup_steps >= total_steps:
        messages.append(
            f"warmup_epochs={resolved.warmup_epochs} is as long as the whole run (epochs={resolved.epochs}): the learning "
            "rate rises for all of it and never decays; use a shorter warm-up"
        )
    if resolved.amp == "fp16" and not on_gpu:
        messages.append(
            "amp='fp16' on the CPU is emulated and many times slower than amp='off', and its loss scaler skips the first "
            "steps while it calibrates; use amp='bf16' or amp='off' on the CPU"
        )
    return messages


def check_boxes_fit(dataset: TwoViewDataset, sampler: BoxPairSampler | None, config: PretrainConfig) -> list[str]:
    """Refuse a run whose box pairs cannot fit in its views; the warning when few do (a list of at most one).

    Args:
        dataset: the run's two-view dataset.
        sampler: the model's box sampler (nothing to check without one: BYOL).
        config: the resolved config.

    Raises:
        ConfigError: no box pair fits.
    """
    if not isinstance(sampler, BoxPairSampler):
        return []
    share, pairs = box_fill(dataset, sampler, seed=config.seed)
    size = config.image_size
    where = f"min_box_size={sampler.min_size:g} px boxes in image_size={size} px views"
    remedy = f"raise image_size={size} or lower min_box_size={sampler.min_size:g}"
    if share == 0:
        raise ConfigError(
            f"no box pair fits: {where} (none in {pairs} view pairs of the images, cropped as in training), so SCRL "
            f"would train on nothing; {remedy}"
        )
    if share < LOW_VALID_SHARE:
        return [f"only {share:.0%} of the box slots hold a pair with {where} ({pairs} view pairs sampled; below "
                f"{LOW_VALID_SHARE:.0%}, SCRL learns from few boxes); {remedy}"]
    return []


def cpu_defaults_notice(config: PretrainConfig, filled: list[str], *, model_given: bool, dataset_given: bool) -> str:
    """The line that names the CPU defaults a run picked (only those that apply), or ``""``.

    Args:
        config: the resolved config.
        filled: the fields :meth:`PretrainConfig.resolve` filled.
        model_given, dataset_given: the run trains a given model / on a given dataset.
    """
    unused = set(FIXED_DEFAULTS) | (set(MODEL_FIELDS) if model_given else set())
    unused |= set(BOX_FIELDS) if not model_given and config.method == "byol" else set()
    unused |= {"synthetic_images"} if config.data is not None or dataset_given else set()
    picked = " ".join(f"{name}={getattr(config, name)}" for name in filled if name not in unused)
    return f"no GPU: using CPU defaults {picked} (set any of them explicitly to override)" if picked else ""
