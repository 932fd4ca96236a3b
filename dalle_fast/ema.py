"""An exponential moving average (EMA) of a model's weights, for evaluating and sampling with
smoother weights than the last optimizer step's."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Keeps ``model``: a frozen copy of the tracked module whose floating-point parameters and
    buffers follow ``ema = decay * ema + (1 - decay) * current`` at every :meth:`update` (other
    buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay: must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights (same architecture as tracked)."""
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.lerp_(current[name], 1 - self.decay)
            else:
                average.copy_(current[name])
