"""``fused_linear_cross_entropy``: argument checks, autocast and backend dispatch."""
import torch

from ..._checks import FLOAT_DTYPES, check_int, check_same_device, check_tensor
from ...backend import backend_for
from .kernel import REDUCTIONS, FusedLinearCrossEntropyFunction
from .reference import fused_linear_cross_entropy_reference


def _check_args(hidden, weight, target, bias, ignore_index, reduction) -> None:
    check_tensor("hidden", hidden, FLOAT_DTYPES, ndim=2)
    check_tensor("weight", weight, FLOAT_DTYPES, ndim=2)
    check_tensor("target", target, (torch.int64,), ndim=1)
    tensors = dict(hidden=hidden, weight=weight, target=target)
    if bias is not None:
        check_tensor("bias", bias, FLOAT_DTYPES, ndim=1)
        tensors["bias"] = bias
    check_same_device(**tensors)
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight: V and D must be > 0, got shape {tuple(weight.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"weight: has D={weight.shape[1]} columns, but hidden has D={hidden.shape[1]}")
    if target.shape[0] != hidden.shape[0]:
        raise ValueError(f"target: has {target.shape[0]} entries, but hidden has N={hidden.shape[0]} rows")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias: has {bias.shape[0]} entries, but weight has V={weight.shape[0]} rows")
    check_int("ignore_index", ignore_index)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def _check_dtypes(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and value.dtype != hidden.dtype:
            raise TypeError(f"{name}: dtype {str(value.dtype).removeprefix('torch.')} differs from hidden's "
                            f"{str(hidden.dtype).removeprefix('torch.')} (cast it, or run under torch.autocast)")


def _check_target_range(target: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """ValueError when a target is outside [0, vocab) and not ``ignore_index``. On a GPU this reads
    one bool back (a synchronization); it is skipped while a CUDA graph is being captured."""
    if target.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = ((target < 0) | (target >= vocab)) & (target != ignore_index)
    if bool(bad.any()):
        raise ValueError(f"target: class {int(target[bad][0])} is outside [0, {vocab}) and is not "
                         f"ignore_index={ignore_index}")


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
                               bias: torch.Tensor | None = None, ignore_index: int = -100,
                               reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, target, ignore_index=..., reduction=...)``, fused.

    hidden (N, D), weight (V, D) (any strides: a row slice ``W[a:b]`` of a larger parameter passes
    its gradient on to it), bias (V,) or None, all of one float dtype; target (N,) int64 in
    [0, V) or ``ignore_index``. Returns a scalar (``mean``, ``sum``) or the (N,) losses (``none``)
    in hidden's dtype; under ``torch.autocast`` the float inputs are cast to the autocast dtype
    first and the loss is float32, as with the plain ops. ``mean`` divides by the number of
    non-ignored rows (NaN when there is none, with zero gradients, as torch does).

    The Triton path never holds the (N, V) logits: it walks N in chunks, computing each chunk's
    logits, an online log-sum-exp in float32 and, for ``mean``/``sum``, the gradients of hidden,
    weight and bias during the forward (``none`` recomputes them in the backward); see
    :mod:`dalle_kernels.ops.fused_linear_cross_entropy.kernel`.
    """
    _check_args(hidden, weight, target, bias, ignore_index, reduction)
    out_dtype = hidden.dtype
    if torch.is_autocast_enabled(hidden.device.type):
        out_dtype = torch.float32
        cast = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(cast), weight.to(cast)
        bias = None if bias is None else bias.to(cast)
    _check_dtypes(hidden, weight, bias)
    _check_target_range(target, weight.shape[0], ignore_index)
    if backend_for(hidden) == "triton":
        if not torch.is_grad_enabled():  # no graph will be built: keep the forward from computing gradients
            hidden, weight = hidden.detach(), weight.detach()
            bias = None if bias is None else bias.detach()
        return FusedLinearCrossEntropyFunction.apply(hidden, weight, bias, target, ignore_index, reduction,
                                                     out_dtype)
    return fused_linear_cross_entropy_reference(hidden, weight, target, bias, ignore_index, reduction)
