"""The units of a model: the blocks that training may recompute (activation checkpointing) and
shard (FSDP2) one at a time: each transformer block of the DALL-E transformer and of CLIP's two
towers, each residual group of the dVAE's encoder and decoder.

A unit's forward runs through :meth:`Unit.run`. With checkpointing on (:func:`set_checkpointing`,
which the trainer calls for ``train.activation_checkpointing``) and gradients enabled, it is a
non-reentrant ``torch.utils.checkpoint``: the forward keeps only the unit's inputs, and the
backward runs the unit's forward again to rebuild what it needs. The RNG states are saved and
restored around the recomputation (``preserve_rng_state``), so dropout draws the same masks twice,
the gradients equal those of the plain forward, and the global RNG ends where it would without
checkpointing (exact resume is unaffected). Inference (no gradients) is never checkpointed.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Unit(nn.Module):
    """Base of a model's units (see the module doc); a subclass's ``forward`` returns
    ``self.run(compute, *args)``, ``compute`` being the unit's actual forward."""

    checkpointed = False  # recompute the activations in the backward (set per instance)

    def run(self, compute: Callable[..., Any], *args: Any) -> Any:
        """``compute(*args)``, checkpointed when ``self.checkpointed`` and gradients are on."""
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(compute, *args, use_reentrant=False)
        return compute(*args)


def units(model: nn.Module) -> list[Unit]:
    """The units of ``model``, in module order."""
    return [module for module in model.modules() if isinstance(module, Unit)]


def set_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch activation checkpointing of every unit of ``model`` on or off; returns how many
    units there are."""
    found = units(model)
    for unit in found:
        unit.checkpointed = enabled
    return len(found)
