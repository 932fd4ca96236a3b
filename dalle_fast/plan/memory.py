"""The memory plan of the dalle stage: what each GPU holds while the transformer trains, under DDP
and FSDP, with and without activation checkpointing, and whether it fits (:func:`plan_memory`).

Counted per GPU, in bytes; the models are built on the ``meta`` device. ``P`` is the transformer's
parameter count, ``P/g`` the share of one of ``g`` GPUs (FSDP2 pads each parameter's first
dimension to a multiple of ``g``), ``root`` the parameters outside the blocks (embeddings, final
LayerNorm, head bias), ``block`` those of the largest block. The GPU trains in bf16 autocast
(``train.precision`` ``auto`` or ``bf16``; ``fp32`` makes every bf16 below float32).

- **DDP** (``train.parallel = "ddp"``; one process alone is the same without the wrapper):
  params ``4 P`` (float32, the master weights); grads ``4 P``, plus ``4 P`` for DDP's gradient
  buckets with more than one GPU (``gradient_as_bucket_view`` off, the loop's default); optimizer
  ``8 P`` (AdamW's two float32 moments; ``+ 4 P`` for an EMA). That is the usual 16 bytes a
  parameter, 20 with the buckets.
- **FSDP** (FSDP2, one unit per transformer block, the root holding the rest, with
  ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)``; with one process the loop does
  not shard and it is the DDP row): params ``4 P/g`` (the float32 shard) ``+ 2 root`` (the gathered
  root, kept from the forward to the end of the backward) ``+ 2 x 2 block`` (two gathered blocks: the
  one computing and the one prefetched); grads ``4 P/g + 2 root + 6 block`` (the float32 shard, the
  root's bf16 gradients until they are reduced at the end, one block's bf16 gradients and their
  float32 copy for the reduce-scatter); optimizer ``8 P/g`` (an EMA would add ``4 P/g``, but the loop
  refuses one under FSDP).
- Both: the frozen dVAE's float32 weights (resident for the sample grids) are in params.
- **activations**: measured (:mod:`.saved`) for one micro-batch (``optim.batch_size /
  (optim.accumulation x g)`` samples): everything autograd saves, DDP with float32 weights (the
  bf16 copies autocast makes of them included), FSDP with bf16 ones; with checkpointing, the
  blocks' inputs, what is outside the blocks and the larger of one block recomputed and the weight
  copies autocast caches during the forward.

Not counted: the CUDA context (about 0.5 GiB) and allocator slack, the backward's transient
gradients of activations (a block's worth at most; on the CPU the real peak of a tiny model stays
under the plan's gradients + activations, as the saved tensors are freed block by block) and kernel
workspaces, the loss's logits chunk, AdamW's step temporaries (foreach AdamW: about one float32
copy of the local parameters, when the activations are already freed), communication buffers
beyond the above, the data loader's pinned memory. Leave a few GiB:
``fits`` says only that the counted total is at most ``gpu_memory`` GiB. ``accumulation_to_fit``
is the smallest ``optim.accumulation`` (the batch still splitting evenly) at which a row fits, the
activations scaling with the micro-batch (each part of the profile is affine in it; measured at
the micro-batch and at 1).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple
from unittest import mock

import torch

from ..config import Config
from ..dvae import DiscreteVAE
from ..model import DALLE
from .saved import ActivationProfile, measure_activations

GIB = 2**30
FLOAT32 = 4  # bytes per element
ADAM_MOMENTS = 2
GATHERED_BLOCKS = 2  # FSDP's gathered blocks at once: the one computing and the one prefetched
SINGLE, DDP, FSDP = "single", "ddp", "fsdp"
NAMES = {SINGLE: "one process", DDP: "DDP", FSDP: "FSDP"}


class Row(NamedTuple):
    """One way to train: ``parallel`` (``"single"`` for one process, ``"ddp"``, ``"fsdp"``),
    ``checkpointing``, the bytes per GPU of each part and their ``total``, whether it ``fits`` and
    the smallest accumulation at which it would (``accumulation_to_fit``; None if none does)."""

    parallel: str
    checkpointing: bool
    params: int
    grads: int
    optimizer: int
    activations: int
    total: int
    fits: bool
    accumulation_to_fit: int | None


class MemoryPlan(NamedTuple):
    """The plan of a config's dalle stage on ``gpus`` GPUs of ``gpu_memory`` GiB each: the
    transformer's ``parameters`` (``largest_block`` of them in one block, ``root`` outside the
    blocks), the frozen dVAE's, the ``micro_batch`` and ``accumulation``, the ``compute`` dtype, the
    measured ``profiles`` (by parallel kind) and the :class:`Row` s (DDP, FSDP x checkpointing off,
    on; one process: checkpointing off, on)."""

    name: str
    gpus: int
    gpu_memory: float
    micro_batch: int
    accumulation: int
    batch_size: int
    parameters: int
    largest_block: int
    root: int
    vae_parameters: int
    compute: torch.dtype
    profiles: dict[str, ActivationProfile]
    rows: tuple[Row, ...]

    def row(self, parallel: str, checkpointing: bool) -> Row:
        """The row of ``parallel`` and ``checkpointing``."""
        return next(r for r in self.rows if r.parallel == parallel and r.checkpointing == checkpointing)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shard_size(module: torch.nn.Module, gpus: int) -> int:
    """Elements of ``module``'s parameters on one of ``gpus`` FSDP2 ranks: each parameter split on its
    first dimension, padded to a multiple of ``gpus`` (0-dimensional ones stay whole)."""
    return sum(p.numel() if p.ndim == 0 else math.ceil(p.shape[0] / gpus) * math.prod(p.shape[1:])
               for p in module.parameters())


def build_on_meta(config: Config) -> tuple[DALLE, DiscreteVAE]:
    """The transformer and the dVAE of ``config`` on the ``meta`` device (no memory, no init)."""
    with torch.device("meta"), mock.patch.object(torch.nn.init, "normal_", lambda tensor, *args, **kwargs: tensor):
        return DALLE(config), DiscreteVAE(config)


def _interpolate(at_one: ActivationProfile, at_micro: ActivationProfile, micro: int, batch: int) -> ActivationProfile:
    """The profile at a micro-batch of ``batch`` from those at 1 and ``micro`` (each field affine in it)."""
    if micro == 1:
        return at_micro

    def field(one: int, many: int) -> int:
        return one + (many - one) * (batch - 1) // (micro - 1)

    return ActivationProfile(*(tuple(map(field, one, many)) if isinstance(one, tuple) else field(one, many)
                               for one, many in zip(at_one, at_micro)))


def plan_memory(config: Config, gpus: int, gpu_memory: float, accumulation: int | None = None) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``config``'s dalle stage on ``gpus`` GPUs of ``gpu_memory`` GiB
    (``accumulation``: micro-batches per step, default ``config.transformer.optim.accumulation``).
    ``ValueError`` naming the setting when the batch does not split evenly."""
    if gpus < 1:
        raise ValueError(f"gpus: must be >= 1, got {gpus!r}")
    if not 0 < gpu_memory < math.inf:
        raise ValueError(f"gpu_memory: must be a finite number > 0, got {gpu_memory!r}")
    optim = config.transformer.optim
    if accumulation is not None:
        optim = dataclasses.replace(optim, accumulation=accumulation)
    micro = optim.micro_batch(gpus)
    compute = torch.float32 if config.train.precision == "fp32" else torch.bfloat16
    half = torch.finfo(compute).bits // 8  # bytes of the gathered FSDP weights and their gradients
    model, vae = build_on_meta(config)
    total, largest = _count(model), max(_count(block) for block in model.blocks)
    root = total - sum(_count(block) for block in model.blocks)
    shard, frozen = shard_size(model, gpus), FLOAT32 * _count(vae)
    ema = FLOAT32 if optim.ema_decay else 0
    kinds = (SINGLE,) if gpus == 1 else (DDP, FSDP)
    measured = {}  # kind -> (profile at 1, profile at micro)
    for kind in kinds:
        if kind == FSDP:
            model = model.to(compute)  # FSDP2's gathered weights are the parameters, in param_dtype
        at_micro = measure_activations(model, micro, compute)
        measured[kind] = (measure_activations(model, 1, compute) if micro > 1 else at_micro, at_micro)

    def states(kind: str) -> tuple[int, int, int]:
        if kind == FSDP:
            return (FLOAT32 * shard + half * (root + GATHERED_BLOCKS * largest) + frozen,
                    FLOAT32 * shard + half * root + (half + FLOAT32) * largest,
                    (ADAM_MOMENTS * FLOAT32 + ema) * shard)
        buckets = FLOAT32 * total if kind == DDP else 0
        return FLOAT32 * total + frozen, FLOAT32 * total + buckets, (ADAM_MOMENTS * FLOAT32 + ema) * total

    def activations(kind: str, checkpointing: bool, batch: int) -> int:
        profile = _interpolate(*measured[kind], micro, batch)
        return profile.checkpointed if checkpointing else profile.total

    accumulations = [a for a in range(1, optim.batch_size // gpus + 1) if optim.batch_size % (a * gpus) == 0]
    rows = []
    for kind in kinds:
        params, grads, optimizer = states(kind)
        for checkpointing in (False, True):
            used = params + grads + optimizer + activations(kind, checkpointing, micro)
            to_fit = next((a for a in accumulations if params + grads + optimizer + activations(
                kind, checkpointing, optim.batch_size // (a * gpus)) <= gpu_memory * GIB), None)
            rows.append(Row(kind, checkpointing, params, grads, optimizer, used - params - grads - optimizer, used,
                            used <= gpu_memory * GIB, to_fit))
    return MemoryPlan(config.name, gpus, gpu_memory, micro, optim.accumulation, optim.batch_size, total, largest, root,
                      _count(vae), compute, {kind: pair[1] for kind, pair in measured.items()}, tuple(rows))


def _gib(value: int) -> str:
    return f"{value / GIB:.2f}"


def markdown(plan: MemoryPlan) -> str:
    """The plan as a Markdown table (GiB per GPU) under lines saying what was planned."""
    compute = str(plan.compute).removeprefix("torch.")
    head = [f"dalle stage of preset `{plan.name}`: {plan.parameters:,} transformer parameters (largest block "
            f"{plan.largest_block:,}, outside the blocks {plan.root:,}), frozen dVAE {plan.vae_parameters:,}",
            f"{plan.gpus} GPU(s) of {plan.gpu_memory:g} GiB; batch {plan.batch_size} = micro-batch {plan.micro_batch} "
            f"x accumulation {plan.accumulation} x {plan.gpus} GPU(s); {compute} compute, float32 master weights, "
            "gradients and AdamW moments"]
    for kind, profile in plan.profiles.items():
        head.append(f"activations of one micro-batch ({NAMES[kind]}): {_gib(max(profile.blocks, default=0))} GiB "
                    f"saved a block, its input {_gib(max(profile.inputs, default=0))} GiB, autocast's weight copies "
                    f"{_gib(sum(profile.copies))} GiB in all, {_gib(profile.outside)} GiB outside the blocks")
    lines = [*(f"{line}  " for line in head[:-1]), head[-1], "",
             "| parallel | checkpointing | params | grads | optimizer | activations | total per GPU (GiB) | "
             f"fits in {plan.gpu_memory:g} GiB | fits with accumulation |", "|---|---|---|---|---|---|---|---|---|"]
    for row in plan.rows:
        parts = " | ".join(_gib(value) for value in (row.params, row.grads, row.optimizer, row.activations, row.total))
        to_fit = "no" if row.accumulation_to_fit is None else f"{row.accumulation_to_fit}"
        lines.append(f"| {NAMES[row.parallel]} | {'on' if row.checkpointing else 'off'} | {parts} | "
                     f"{'yes' if row.fits else 'no'} | {to_fit} |")
    lines.append("")
    lines.append("GiB per GPU. params: the float32 weights (FSDP: the shard, the gathered bf16 root and two blocks) "
                 "and the frozen dVAE; grads: float32 (DDP on several GPUs: as much again for its buckets; FSDP: the "
                 "shard, the root's and one block's unsharded ones); optimizer: AdamW's float32 moments; activations: "
                 "measured (with checkpointing: the blocks' inputs, one block recomputed, autocast's weight copies). "
                 "Not counted: the CUDA context, allocator slack, the backward's transient gradients and workspaces: "
                 "leave a few GiB.")
    return "\n".join(lines)
