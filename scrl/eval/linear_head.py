"""A single linear layer trained on cached box features (the RoI linear protocol's classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from ..schedule import warmup_cosine

__all__ = ["top1_accuracy", "train_linear_head"]


def train_linear_head(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    warmup_epochs: int = 5,
    generator: torch.Generator | None = None,
) -> nn.Linear:
    """Train ``nn.Linear(D, num_classes)`` with SGD, linear warm-up and cosine decay per step.

    Features are standardised per dimension with the training set's mean and standard
    deviation, which makes one learning rate fit trunks of any feature scale; the affine map
    is folded into the returned layer, so it applies to raw features and stays one linear
    layer. Constant dimensions carry no information and are zeroed by the standardisation.

    Args:
        features: float ``[N, D]`` training features (any device; training runs there).
        labels: int64 ``[N]`` in ``[0, num_classes)``.
        num_classes: output classes, >= 1.
        epochs: passes over the features, >= 1 (paper: 80).
        batch_size: features per step, >= 1 (paper: 512).
        lr: peak learning rate, > 0 (paper: 0.1).
        momentum: SGD momentum in ``[0, 1)``.
        weight_decay: L2 penalty, >= 0.
        warmup_epochs: linear warm-up, in ``[0, epochs]`` (paper: 5).
        generator: CPU generator driving the initialisation and the batch order; ``None``:
            one seeded with 0. Nothing is drawn from the global RNG.

    Returns:
        The trained layer (eval mode, on the features' device), mapping raw ``[*, D]`` to logits.

    Example:
        >>> head = train_linear_head(train.features, train.labels, num_classes=80)
        >>> top1_accuracy(head(test.features), test.labels)  # percent   # doctest: +SKIP
        41.3
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, D] and labels [N], got {tuple(features.shape)} and {tuple(labels.shape)}")
    if features.shape[0] < 1:
        raise ValueError("features must hold at least one row")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(f"labels must lie in [0, num_classes={num_classes})")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(warmup_epochs, int) or not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be an integer in [0, epochs={epochs}], got {warmup_epochs!r}")

    device = features.device
    x64 = features.double()
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant dimension -> stays 0 after centring
    x = ((x64 - mean) / std).float()
    labels = labels.to(device)

    n, d = x.shape
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    head = skip_init(nn.Linear, d, num_classes, device=device)  # nn.Linear's own init would draw from the global RNG
    with torch.no_grad():
        bound = 1.0 / d**0.5
        head.weight.copy_(torch.empty(num_classes, d).uniform_(-bound, bound, generator=generator))
        head.bias.zero_()
    steps_per_epoch = -(-n // batch_size)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(head(x[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

    # Fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - (W / s) m).
    with torch.no_grad():
        weight = head.weight.double() / std
        bias = head.bias.double() - weight @ mean
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    return head.requires_grad_(False).eval()


def top1_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of rows whose highest logit is the label, in percent.

    Args:
        logits: float ``[N, C]`` (or predicted classes int64 ``[N]``).
        labels: int64 ``[N]``.
    """
    if labels.numel() == 0:
        raise ValueError("labels is empty: no boxes to score")
    predicted = logits.argmax(dim=1) if logits.dim() == 2 else logits
    return 100.0 * (predicted.to(labels.device) == labels).double().mean().item()
