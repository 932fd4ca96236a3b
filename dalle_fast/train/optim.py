"""The optimizer of a training stage: AdamW as an ``OptimConfig`` sets it up, and its state as
checkpoint tensors plus JSON."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..config import OptimConfig

_PREFIX = "optimizer."


def make_optimizer(params: Iterable[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with ``optim``'s lr, betas, eps and weight decay (the lr is then set every step)."""
    return torch.optim.AdamW(params, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def decay_matrices_only(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Parameter groups that exempt biases, norm gains and scalars (parameters of fewer than 2
    dimensions) from weight decay: ``[{"params": matrices}, {"params": rest, "weight_decay": 0.0}]``."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim >= 2]},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """``optimizer.state_dict()`` split into tensors ``optimizer.<param index>.<name>`` (moments,
    step counts) and the JSON-serializable parameter groups."""
    state = optimizer.state_dict()
    tensors = {f"{_PREFIX}{index}.{name}": value for index, values in state["state"].items()
               for name, value in values.items()}
    return tensors, state["param_groups"]


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         param_groups: list[dict[str, Any]]) -> None:
    """Inverse of :func:`optimizer_state`: load it into ``optimizer`` (other keys of ``tensors``
    are ignored)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(_PREFIX):
            index, name = key.removeprefix(_PREFIX).split(".", 1)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
