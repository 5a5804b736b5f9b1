"""LARS (layer-wise adaptive rate scaling) as used by BYOL and SCRL, and its parameter grouping."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["LARS", "lars_param_groups", "NORM_LAYERS"]

# Every normalisation layer with affine parameters: _NormBase covers BatchNorm1d/2d/3d, their
# lazy forms, SyncBatchNorm and InstanceNorm1d/2d/3d.
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


class LARS(Optimizer):
    """SGD with momentum whose per-tensor step is scaled by a trust ratio (You et al., 2017).

    For each parameter tensor ``w`` with gradient ``g``, weight decay ``lambda``, trust
    coefficient ``eta``, momentum ``mu`` and learning rate ``lr``::

        u = g + lambda * w
        r = eta * ||w|| / ||u||   if ||w|| > 0 and ||u|| > 0, else 1
        v <- mu * v + r * u
        w <- w - lr * v

    Parameter groups with ``lars_exclude=True`` (see :func:`lars_param_groups`) skip the first
    two lines: ``u = g`` and ``r = 1``, i.e. plain SGD with momentum. The learning rate is applied
    once, in the last line, for every group. All arithmetic runs through ``torch._foreach_*``
    ops over the group's tensors, and the zero-norm case goes through ``torch.where``, so a step
    never reads a value back to the host.

    Args:
        params: parameters or parameter groups (dicts may set ``lr``, ``weight_decay``,
            ``momentum``, ``eta``, ``lars_exclude``).
        lr: learning rate, >= 0.
        momentum: ``mu`` in ``[0, 1)`` (paper: 0.9).
        weight_decay: ``lambda`` >= 0 (paper: 1e-6 / 1.5e-6).
        eta: trust coefficient > 0 (paper: 0.001).

    Example:
        >>> model = torchvision.models.resnet18()
        >>> opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.45)
        >>> model(torch.randn(2, 3, 64, 64)).sum().backward()
        >>> opt.step()
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0 (trust coefficient), got {eta!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    # torch.amp.GradScaler hands this optimizer the loss scale and its inf/NaN flag as tensors
    # (``grad_scale``, ``found_inf``) instead of reading the flag on the host to decide whether
    # to call step(): an fp16 step then never waits for the device either.
    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure: Any = None) -> Tensor | None:  # type: ignore[override]
        """One LARS step over all parameters that have a gradient.

        Under ``torch.amp.GradScaler`` the gradients are unscaled here, and a step whose
        gradients hold an inf or NaN changes neither the parameters nor the momentum buffers.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            momentum: float | Tensor = group["momentum"]
            lr: float | Tensor = group["lr"]
            if grad_scale is not None:
                torch._foreach_div_(grads, grad_scale)
            if found_inf is not None:
                # A skipped step keeps every buffer (momentum 1, nothing added) and every
                # parameter (learning rate 0); its non-finite gradients are zeroed first, as any
                # arithmetic with them would turn the kept values into NaN.
                skip = found_inf > 0
                for grad in grads:
                    grad.masked_fill_(skip, 0)
                momentum = torch.where(skip, 1.0, momentum)
                lr = torch.where(skip, 0.0, lr)
            torch._foreach_mul_(buffers, momentum)
            if group["lars_exclude"]:
                torch._foreach_add_(buffers, grads)
            else:
                update = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if group["weight_decay"] else grads
                trust = self._trust_ratios(params, update, group["eta"])
                if found_inf is not None:
                    trust = torch._foreach_mul(trust, 1 - skip.to(trust[0].dtype))
                torch._foreach_addcmul_(buffers, update, trust)
            if isinstance(lr, Tensor):
                torch._foreach_sub_(params, torch._foreach_mul(buffers, lr))
            else:
                torch._foreach_add_(params, buffers, alpha=-lr)
        return loss

    @staticmethod
    def _trust_ratios(params: list[Tensor], update: list[Tensor], eta: float) -> list[Tensor]:
        """``eta ||w|| / ||u||`` per tensor as 0-dim tensors, 1 where either norm is 0."""
        w_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.stack(torch._foreach_norm(update))
        ok = (w_norm > 0) & (u_norm > 0)
        return list(torch.where(ok, eta * w_norm / torch.where(ok, u_norm, 1.0), 1.0).unbind(0))


_WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.Embedding)


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a LARS group and an excluded group.

    Excluded (no weight decay, no trust-ratio adaptation, ``lars_exclude=True``): every
    parameter of a normalisation layer, found by module type (BatchNorm*, SyncBatchNorm,
    InstanceNorm*, GroupNorm, LayerNorm, RMSNorm; ConvNeXt's ``LayerNorm2d`` is a LayerNorm),
    every parameter with at most one dimension (biases), and every per-channel scale held
    outside a convolution or linear layer (one dimension longer than 1, like ConvNeXt's layer
    scale ``[C, 1, 1]``: it scales a block's output as a norm's weight does). Everything else
    gets ``weight_decay`` and adaptation. Parameters with
    ``requires_grad=False`` (e.g. a momentum target) are left out; shared ones appear once.

    Args:
        model: the module to optimise.
        weight_decay: ``lambda`` >= 0 for the adapted group.

    Returns:
        ``[{"params": adapted, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True}]``.

    Example:
        >>> groups = lars_param_groups(torchvision.models.resnet50(), weight_decay=1.5e-6)
        >>> len(groups[0]["params"]), len(groups[1]["params"])  # conv/fc weights; BN + fc.bias
        (54, 107)
    """
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    layer_weights = {id(m.weight) for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)}
    adapted: list[Tensor] = []
    excluded: list[Tensor] = []
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        per_channel = id(p) not in layer_weights and sum(size > 1 for size in p.shape) <= 1
        (excluded if id(p) in norm_params or p.ndim <= 1 or per_channel else adapted).append(p)
    return [
        {"params": adapted, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
