"""k-nearest-neighbour classification of box features by cosine similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["knn_predict"]


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float | None = 0.07,
    center: bool = True,
    chunk_size: int = 4096,
) -> Tensor:
    """Classify each test feature by a vote of its ``k`` most cosine-similar training features.

    With ``temperature`` each neighbour votes ``exp(cos / temperature)`` (the weighting of
    Wu et al. 2018 used by most self-supervised k-NN monitors); with ``None`` every neighbour
    votes 1. Needs no training, so it stays meaningful when there are few boxes.

    With ``center`` (default) both sides are first centred on the training mean (SimpleShot's
    "CL2N"): features after a ReLU share a large common component that pushes every cosine
    towards 1, so that weak features would all vote for the most frequent class.

    Args:
        train_features: float ``[N, D]``.
        train_labels: int64 ``[N]`` in ``[0, num_classes)``.
        test_features: float ``[M, D]`` (same device as the training features).
        num_classes: >= 1.
        k: neighbours, >= 1 (clamped to ``N``).
        temperature: > 0, or ``None`` for a plain majority vote.
        center: subtract the training mean from both sides before the cosine.
        chunk_size: test rows per similarity block (bounds memory at ``chunk_size x N``).

    Returns:
        int64 ``[M]`` predicted classes.

    Example:
        >>> pred = knn_predict(train.features, train.labels, test.features, num_classes=18)
        >>> top1_accuracy(pred, test.labels)  # percent   # doctest: +SKIP
        17.4
    """
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be [N, D] and [M, D], got {tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_labels.shape != train_features.shape[:1] or train_features.shape[0] < 1:
        raise ValueError("train_labels must be [N] with N >= 1 matching train_features")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 or None, got {temperature!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    k = min(k, train_features.shape[0])
    train = train_features.float()
    offset = train.mean(dim=0) if center else torch.zeros_like(train[0])
    train = F.normalize(train - offset, dim=1)
    train_labels = train_labels.to(train.device)
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].float().to(train.device) - offset, dim=1)
        similarity, neighbour = (test @ train.T).topk(k, dim=1)
        weight = torch.ones_like(similarity) if temperature is None else (similarity / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[neighbour], weight)
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.zeros(0, dtype=torch.int64, device=train.device)
    return torch.cat(predictions)
