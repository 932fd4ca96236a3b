"""How the torchrun processes of a stage share its model (``train.parallel``), and the pieces of an
optimizer step and of a checkpoint that depend on it.

- ``"ddp"``: every process holds the whole model; ``DistributedDataParallel`` all-reduces the
  gradients (:func:`replicate`).
- ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards parameters, gradients and
  AdamW moments over the processes (:func:`shard`): one FSDP unit per
  :class:`~dalle_fast.units.Unit` of the model (transformer blocks, dVAE residual groups), then
  the root (embeddings, heads, stems: the rest). A run that computes in bf16 (a GPU under
  ``precision = "auto"``) gathers the parameters in bf16 and reduces the gradients in float32
  (:func:`precision_policy`); on the CPU everything is float32. FSDP2 cannot shard a
  0-dimensional parameter (CLIP's logit scale): those stay whole on every process
  (:func:`replicated_parameters`) and :func:`average_replicated_gradients` all-reduces theirs.

Either way the stage's forward reaches the model through :class:`StageForward`, so that the
wrapper's hooks run around the whole forward of the stage (the dVAE's decoder fine-tuning calls a
method of the model other than ``forward``). Under ``"fsdp"`` checkpoints hold the sharded state
through ``torch.distributed.checkpoint`` (:func:`save_sharded`, :func:`load_sharded`: each process
writes and reads its own shards; a directory loads under any number of processes), and the whole
weights are gathered to rank 0 (:func:`whole_weights`) for the weights file and for evaluation.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from ..units import units

MODEL, OPTIMIZER = "model", "optimizer"  # the two parts of a sharded checkpoint
Forward = Callable[[Any, NamedTuple], NamedTuple]  # a stage's forward(batch, settings) -> output with .loss


class StageForward(nn.Module):
    """A stage's ``forward(batch, settings)`` (which runs ``model``) as a module owning
    ``model``'s parameters, for ``DistributedDataParallel`` or ``fully_shard`` to wrap."""

    def __init__(self, model: nn.Module, forward: Forward) -> None:
        super().__init__()
        self.model, self.stage_forward = model, forward

    def forward(self, batch: Any, settings: NamedTuple) -> NamedTuple:
        return self.stage_forward(batch, settings)


def replicate(model: nn.Module, forward: Forward, device: torch.device,
              find_unused_parameters: bool) -> DistributedDataParallel:
    """``forward`` over ``model`` in ``DistributedDataParallel``: calling it runs the stage's
    forward on this process's micro-batch, and the backward averages every process's gradients
    (``find_unused_parameters``: some updates leave some parameters without a gradient)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(StageForward(model, forward), device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def precision_policy(bf16: bool) -> MixedPrecisionPolicy:
    """FSDP2's precision for a run that computes in bf16 or not (``bf16``, from
    :func:`dalle_fast.device.uses_bf16`): parameters gathered in bf16 for the forward and the
    backward, gradients reduced (and kept, sharded) in float32; otherwise float32 throughout.
    The modules' inputs are not cast (``cast_forward_inputs=False``): the images reach the dVAE
    and CLIP in float32 and autocast picks each op's dtype; what the bf16 parameters compute is
    bf16, the embeddings included, so the transformers' residual streams are bf16 under FSDP
    (float32 under DDP's autocast). The weights the optimizer steps stay float32."""
    if bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                    cast_forward_inputs=False)
    return MixedPrecisionPolicy(cast_forward_inputs=False)


def shard(model: nn.Module, forward: Forward, policy: MixedPrecisionPolicy) -> StageForward:
    """Shard ``model`` in place with FSDP2 (see the module doc) under ``policy``
    (:func:`precision_policy`); returns ``forward`` over it as the root FSDP module."""
    scalars = set(replicated_parameters(model))
    for unit in units(model):
        fully_shard(unit, mp_policy=policy, ignored_params=scalars & set(unit.parameters()) or None)
    root = StageForward(model, forward)
    fully_shard(root, mp_policy=policy, ignored_params=scalars or None)
    return root


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters FSDP2 leaves whole on every process: the 0-dimensional ones."""
    return [p for p in model.parameters() if p.ndim == 0]


def average_replicated_gradients(params: Iterable[nn.Parameter], size: int) -> None:
    """All-reduce the gradients of ``params`` (those of :func:`replicated_parameters`) to their
    mean over the ``size`` processes, as FSDP2 does for the sharded ones."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size


def whole_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the sharded ``model``, whole, gathered to rank 0's CPU (every process
    must call this; the others get an empty dict)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Write the weights and the optimizer state of ``model`` (sharded or whole) into
    ``directory`` with ``torch.distributed.checkpoint``, each process its own shards (every
    process of the group calls this, with the same ``directory``)."""
    weights, moments = get_state_dict(model, optimizer)
    with _single_process_expected():
        dcp.save({MODEL: weights, OPTIMIZER: moments}, checkpoint_id=directory)


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Load what :func:`save_sharded` wrote (under any number of processes) into ``model`` and
    ``optimizer``, resharded for this group (every process of the group calls this)."""
    weights, moments = get_state_dict(model, optimizer)
    state = {MODEL: weights, OPTIMIZER: moments}
    with _single_process_expected():
        dcp.load(state, checkpoint_id=directory)
    set_state_dict(model, optimizer, model_state_dict=state[MODEL], optim_state_dict=state[OPTIMIZER])


@contextlib.contextmanager
def _single_process_expected() -> Iterator[None]:
    """Silence the warning of ``torch.distributed.checkpoint`` that it runs in a single process
    (no process group): that is how a one-process FSDP run checkpoints."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield
