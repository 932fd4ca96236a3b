"""What one training forward of the transformer keeps for its backward, measured: every tensor
autograd saves, counted through ``torch.autograd.graph.saved_tensors_hooks``, each storage once,
sorted by the transformer block that saved it (:func:`measure_activations`).

The forward runs on the ``meta`` device, where nothing is computed, so measuring the 12B model
takes a second. Three things make the meta forward save what the GPU forward saves:

- **The kernels' own autograd Functions.** ``dk.sparse_attention`` and
  ``dk.fused_linear_cross_entropy`` run ``SparseAttentionFunction`` and
  ``FusedLinearCrossEntropyFunction`` (the Triton path: attention saves q, k, v, its output and the
  float32 log-sum-exp; the loss saves the gradients it computes in the forward: dhidden, and
  float32 dweight and dbias), their Python wrappers allocating the outputs as always and only the
  Triton launches skipped (:func:`kernel_functions`). On the CPU the PyTorch references would run
  instead, and they save other tensors (attention's dense probabilities).
- **CUDA autocast's policy** (:class:`AutocastPolicy`): ``F.linear`` in the compute dtype (bf16),
  ``F.layer_norm`` in float32, every other op the model calls in its inputs' dtype; the loss casts
  its inputs itself, as ``dk.fused_linear_cross_entropy`` does under autocast. As autocast, it
  caches the bf16 copy of each float32 parameter for the whole forward: those copies are saved by
  the matrix products and, with checkpointing, still held by the cache until the forward ends.
  ``tests/test_plan.py`` checks that the model calls no op outside the policy's lists.
- **The precision of the weights**, the model's own: float32 under DDP (autocast makes the bf16
  copies); bf16 under FSDP2 with ``MixedPrecisionPolicy(param_dtype=bf16)`` (pass the model cast to
  bf16), whose gathered weights are the parameters themselves: no copies, and the residual stream
  is bf16 too.

Saved tensors that are parameters are not counted (the plan counts the weights once); a block's
input is counted apart from what the block adds, since activation checkpointing keeps exactly the
inputs and recomputes the rest (:attr:`ActivationProfile.checkpointed`). Dropout is measured as
the CPU runs it (a float mask, not the GPU's bool one); the ``gpu`` and ``paper`` presets have none.

This module knows the kernels' internals on purpose (the two autograd Functions and the two
forward launch objects of ``dalle_kernels.ops.*.kernel``): what they save is the point. Renaming
one makes :func:`launches_skipped` fail at once, and ``tests/test_plan.py`` compares the
measurement with a real forward of the Triton kernels.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

import dalle_kernels as dk
from dalle_kernels.ops.fused_linear_cross_entropy import kernel as cross_entropy_kernel
from dalle_kernels.ops.sparse_attention import kernel as attention_kernel

from .. import model as model_module
from ..model import DALLE


class ActivationProfile(NamedTuple):
    """Bytes one forward keeps for the backward: ``blocks`` (what autograd saves in each transformer
    block that the block made), ``copies`` (autocast's cached bf16 copies of each block's weights,
    saved or not: the cache holds them all until the forward ends), ``unsaved_copies`` (the cached
    copies no op saved, the biases': held to the end of the forward only), ``inputs`` (each block's
    input tensor), ``inputs_saved`` (the bytes of block inputs autograd saved: all of them when the
    first LayerNorm of each block saves its input) and ``outside`` (saved outside the blocks:
    embeddings, the final LayerNorm, the loss's gradients)."""

    blocks: tuple[int, ...]
    copies: tuple[int, ...]
    unsaved_copies: int
    inputs: tuple[int, ...]
    inputs_saved: int
    outside: int

    @property
    def total(self) -> int:
        """Without activation checkpointing, at the end of the forward: everything saved, and the
        cached copies no op saved."""
        return sum(self.blocks) + self.inputs_saved + self.outside + self.unsaved_copies

    @property
    def checkpointed(self) -> int:
        """With every block checkpointed: the blocks' inputs and what is outside, plus the larger
        of one block recomputed in the backward (what it saves, its weight copies included) and all
        the weight copies autocast's cache holds at the end of the forward."""
        return sum(self.inputs) + self.outside + max(max(self.blocks, default=0), sum(self.copies))


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` in ``dtype`` when it is a floating tensor, else unchanged."""
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


class AutocastPolicy(TorchFunctionMode):
    """CUDA autocast (``torch.autocast("cuda", dtype)``) for the ops the transformer calls, on any
    device (meta included): ``F.linear`` in ``dtype``, ``F.layer_norm`` in float32, everything else
    as it is. The ``dtype`` copy of a float32 leaf tensor that requires grad (a parameter) is made
    once and kept until the mode exits, as autocast's cast cache does; ``on_copy`` (if set) is called
    with each new copy. With ``dtype`` float32 it changes nothing."""

    LOWER = (F.linear,)  # the ops of CUDA autocast's lower-precision list that the model calls
    FLOAT32 = (F.layer_norm,)  # ... and of its float32 list

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(parameter) -> (parameter, copy)
        self.on_copy: Callable[[torch.Tensor], None] | None = None

    def _lower(self, value: Any) -> Any:
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()) or value.dtype == self.dtype:
            return value
        if not (value.dtype == torch.float32 and value.is_leaf and value.requires_grad):
            return value.to(self.dtype)
        if id(value) not in self.cache:
            copy = value.to(self.dtype)
            self.cache[id(value)] = value, copy
            if self.on_copy is not None:
                self.on_copy(copy)
        return self.cache[id(value)][1]

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.LOWER:
            args, kwargs = tuple(map(self._lower, args)), {k: self._lower(v) for k, v in kwargs.items()}
        elif func in self.FLOAT32:
            args = tuple(_cast(a, torch.float32) for a in args)
            kwargs = {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    def __exit__(self, *exc: Any) -> Any:
        self.cache.clear()
        return super().__exit__(*exc)


class _NoLaunch:
    """Stands for a Triton kernel whose launches (``kernel[grid](...)``) do nothing."""

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def launches_skipped() -> Iterator[None]:
    """The Triton launches of sparse attention's and the fused loss's forward kernels do nothing:
    their Python wrappers run as always and allocate their outputs (left uncomputed), so what the
    autograd Functions save has exactly the shapes and dtypes of a GPU run, on any device."""
    with mock.patch.object(attention_kernel, "_sparse_attention_forward_kernel", _NoLaunch()), \
            mock.patch.object(cross_entropy_kernel, "_fused_linear_cross_entropy_kernel", _NoLaunch()):
        yield


@contextlib.contextmanager
def kernel_functions(dtype: torch.dtype) -> Iterator[None]:
    """``dk.sparse_attention`` and ``dk.fused_linear_cross_entropy`` straight through the kernels'
    autograd Functions (the Triton path, whatever the device), their launches skipped
    (:func:`launches_skipped`); the loss's float inputs cast to ``dtype`` first and its value
    float32, as the dispatcher does under autocast. (The dispatchers' checks of values, which meta
    tensors do not have, are skipped with them.)"""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any,
                  scale: float | None = None) -> torch.Tensor:
        return attention_kernel.SparseAttentionFunction.apply(q, k, v, mask, scale or 1 / math.sqrt(q.shape[-1]))

    def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
                      bias: torch.Tensor | None = None, ignore_index: int = -100,
                      reduction: str = "mean") -> torch.Tensor:
        hidden, weight, bias = (_cast(t, dtype) for t in (hidden, weight, bias))
        return cross_entropy_kernel.FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, target, ignore_index,
                                                                          reduction, torch.float32)

    with launches_skipped(), mock.patch.object(dk, "sparse_attention", attention), \
            mock.patch.object(dk, "fused_linear_cross_entropy", cross_entropy):
        yield


class SavedTensors:
    """``saved_tensors_hooks`` that add up the bytes of every storage autograd saves, once each:
    under the block running (``block``: its index, or None outside the blocks), apart for the
    blocks' inputs (:meth:`entering` a block); :meth:`copied` counts autocast's weight copies. The
    storages of ``excluded`` tensors (the parameters) are not counted."""

    def __init__(self, blocks: int, excluded: list[torch.Tensor]) -> None:
        self.blocks, self.copies, self.inputs = [0] * blocks, [0] * blocks, [0] * blocks
        self.inputs_saved = self.outside = self.outside_copies = 0
        self.block: int | None = None
        self.seen = {StorageWeakRef(t.untyped_storage()) for t in excluded}
        self.input_storages: set[StorageWeakRef] = set()
        self.copy_storages: dict[StorageWeakRef, int] = {}  # -> bytes, until saved
        self.kept: list[torch.Tensor] = []  # what was counted, alive while measuring (no storage address reused)

    def entering(self, index: int, tensor: torch.Tensor) -> None:
        """Block ``index`` starts on ``tensor``."""
        self.block, self.inputs[index] = index, tensor.untyped_storage().nbytes()
        self.input_storages.add(StorageWeakRef(tensor.untyped_storage()))
        self.kept.append(tensor)

    def copied(self, copy: torch.Tensor) -> None:
        """Autocast's cache made ``copy`` of a weight."""
        nbytes = copy.untyped_storage().nbytes()
        self.copy_storages[StorageWeakRef(copy.untyped_storage())] = nbytes
        self.kept.append(copy)
        if self.block is None:
            self.outside_copies += nbytes
        else:
            self.copies[self.block] += nbytes

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref not in self.seen:
            self.seen.add(ref)
            self.kept.append(tensor)
            self.copy_storages.pop(ref, None)
            if ref in self.input_storages:
                self.inputs_saved += storage.nbytes()
            elif self.block is None:
                self.outside += storage.nbytes()
            else:
                self.blocks[self.block] += storage.nbytes()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)

    def profile(self) -> ActivationProfile:
        """What was counted."""
        return ActivationProfile(tuple(self.blocks), tuple(self.copies), sum(self.copy_storages.values()),
                                 tuple(self.inputs), self.inputs_saved, self.outside)


def measure_activations(model: DALLE, batch: int, dtype: torch.dtype = torch.bfloat16, *,
                        autocast: type[AutocastPolicy] = AutocastPolicy) -> ActivationProfile:
    """The :class:`ActivationProfile` of one training forward of ``model`` (on any device, ``meta``
    included; its parameters in the precision they train in) on a micro-batch of ``batch`` samples
    (text (batch, T) and image (batch, N) ids), under ``autocast(dtype)`` (:class:`AutocastPolicy`
    or a subclass with other op lists) and :func:`kernel_functions`. Nothing is computed on ``meta``;
    elsewhere the kernels' outputs are left uninitialized, so only the sizes mean anything."""
    device = model.text_position.device
    text = torch.zeros(batch, model.text_len, dtype=torch.long, device=device)
    image = torch.zeros(batch, model.image_seq_len, dtype=torch.long, device=device)
    policy = autocast(dtype)
    saved = SavedTensors(len(model.blocks), list(model.parameters()))
    policy.on_copy = saved.copied

    def entering(index: int) -> Any:
        def hook(module: nn.Module, args: tuple) -> None:
            saved.entering(index, args[0])
        return hook

    def leaving(module: nn.Module, args: tuple, output: Any) -> None:
        saved.block = None

    handles = [h for i, block in enumerate(model.blocks)
               for h in (block.register_forward_pre_hook(entering(i)), block.register_forward_hook(leaving))]
    was_training = model.training
    recomputed = [block for block in model.blocks if getattr(block, "checkpointed", False)]
    for block in recomputed:  # measure what a block saves, not what a checkpoint keeps
        block.checkpointed = False
    try:
        # the ids' range check reads their values, which meta tensors do not have
        unchecked = mock.patch.object(model_module, "check_ids", lambda name, ids, length, vocab: ids)
        with unchecked, saved.hooks(), kernel_functions(dtype), policy:
            model.train()(text, image)
    finally:
        model.train(was_training)
        for block in recomputed:
            block.checkpointed = True
        for handle in handles:
            handle.remove()
    return saved.profile()
