"""What a config builds: the images, the workers' transform, the model, and the default optimiser."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping

from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from ..data import ImageFolderDataset, ResumableSampler, SyntheticScenes, TwoViewDataset, two_view_loader
from ..lars import LARS, lars_param_groups
from ..models import BYOL, SCRL
from ..transforms import TwoViewCrops, TwoViewTransform
from ..runtime.checkpoint import CheckpointError, load_checkpoint
from ..runtime.random_streams import seeded_global_rngs
from .config import ConfigError, PretrainConfig

__all__ = ["OptimizerFactory", "build_dataset", "build_loader", "build_model", "build_optimizer", "build_transform", "lars", "load_initial_weights", "weights_digest"]

OptimizerFactory = Callable[[list[dict[str, Any]]], Optimizer]
BATCH_OF_ONE = (
    "batch_size=1 per process without SyncBatchNorm (it needs several GPUs): BatchNorm normalises each view over a batch "
    "of one image and the heads' BatchNorm over the two views of that image, statistics too poor to train on; raise batch_size"
)


def build_dataset(config: PretrainConfig) -> Dataset:
    """The images of a run: the folder tree ``config.data``, or synthetic scenes 1.5x the view side.

    Raises:
        DataError: the folder holds no image (before any worker starts).
    """
    if config.data is not None:
        return ImageFolderDataset(config.data, max_consecutive_unreadable=config.max_consecutive_unreadable)
    if config.synthetic_images is None or config.image_size is None:
        raise ValueError("build_dataset needs a resolved config (PretrainConfig.resolve) for synthetic scenes")
    return SyntheticScenes(config.synthetic_images, image_size=round(1.5 * config.image_size), seed=config.seed)


def build_transform(config: PretrainConfig) -> TwoViewTransform | TwoViewCrops:
    """The data workers' two-view transform: all augmentation, geometry only (``augment_on_device``),
    or geometry without decoding (``decode_on_device``); views of ``config.image_size``, uint8."""
    if config.decode_on_device:
        return TwoViewCrops.byol(size=config.image_size)
    photometric = "device" if config.augment_on_device else True
    return TwoViewTransform.byol(size=config.image_size, photometric=photometric, output="uint8")


def build_loader(config: PretrainConfig, images: Dataset, world_size: int, rank: int,
                 pin_memory: bool = False) -> tuple[TwoViewDataset, ResumableSampler, DataLoader]:
    """The views of ``images`` made in the workers, this rank's share of each epoch, and the loader of their batches.

    Raises:
        ConfigError: the images give no full batch per process.
    """
    dataset = TwoViewDataset(images, build_transform(config), seed=config.seed)
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
    if len(sampler) < config.batch_size:
        raise ConfigError(
            f"{len(dataset)} images give no full batch of batch_size={config.batch_size} per process on "
            f"{world_size} process(es): lower batch_size={config.batch_size} or add images"
        )
    return dataset, sampler, two_view_loader(dataset, sampler, config.batch_size, config.workers, pin_memory=pin_memory,
                                             seed=config.seed)


def build_model(config: PretrainConfig) -> SCRL | BYOL:
    """``SCRL`` or ``BYOL`` with the trunk, heads, boxes and pooling rule of ``config``, initialised from ``config.seed``.

    The same config gives the same initial weights in every process (a run's ranks start
    alike); the caller's global random streams are left as they were.
    """
    if config.arch is None or config.tau_base is None:
        raise ValueError("build_model needs a resolved config (PretrainConfig.resolve): arch and tau_base are unset")
    heads = dict(projector_hidden=config.projector_hidden, projection_dim=config.projection_dim, tau_base=config.tau_base)
    with seeded_global_rngs(config.seed):  # torch.nn initialises from the global stream
        if config.method == "scrl":
            return SCRL(config.arch, num_boxes=config.num_boxes, min_size=config.min_box_size,
                        roi_pooling=config.roi_pooling, **heads)
        return BYOL(config.arch, **heads)


def build_optimizer(model: nn.Module, factory: OptimizerFactory, *, lr: float, weight_decay: float) -> Optimizer:
    """``factory`` applied to the model's :func:`~scrl.lars.lars_param_groups`, each group given ``lr``.

    Args:
        model: the model to optimise.
        factory: ``param_groups -> torch.optim.Optimizer``, e.g. ``lambda groups: torch.optim.AdamW(groups)``.
        lr: the peak learning rate of every group.
        weight_decay: of the adapted group (norms and biases get 0).

    Raises:
        TypeError: ``factory`` did not return an optimiser.
    """
    groups = [group | {"lr": lr} for group in lars_param_groups(model, weight_decay)]
    optimizer = factory(groups)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Start ``model`` from the weights of a run's checkpoint (online and target alike); nothing else of that run carries over.

    Raises:
        CheckpointError: ``path`` is no training checkpoint (a backbone export, say).
        ConfigError: its model is another one; the message names the keys that differ.
    """
    weights = load_checkpoint(path).get("model")
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"init_from={path!r} is not a training checkpoint of scrl.train: it holds no 'model' weights")
    mine = model.state_dict()
    missing, unexpected = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
    reshaped = sorted(k for k in set(mine) & set(weights) if mine[k].shape != weights[k].shape)
    differences = [f"{len(keys)} {what} keys (e.g. {keys[:3]})" for what, keys in
                   (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped)) if keys]
    if differences:
        raise ConfigError(
            f"init_from={path!r} holds another model than this run's: {', '.join(differences)}; start from a checkpoint "
            "of the same method, arch and head widths"
        )
    model.load_state_dict(weights)


def lars(param_groups: list[dict[str, Any]]) -> LARS:
    """The paper's optimiser, the default of :class:`~scrl.train.Pretrainer`: LARS, momentum 0.9, trust coefficient 0.001.

    Args:
        param_groups: groups of :func:`~scrl.lars.lars_param_groups`, each with its ``lr`` and ``weight_decay``.
    """
    return LARS(param_groups, lr=param_groups[0]["lr"], momentum=0.9, eta=0.001)


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
