"""Triton kernel of ``fused_linear_cross_entropy``: cross-entropy of ``hidden @ weight.T + bias``
without the (N, V) logits, after Liger-Kernel's chunked scheme.

The N rows are processed in chunks of ``chunk_rows`` (:func:`_chunk_rows`). Per chunk:

1. ``logits = hidden[chunk] @ weight.T + bias`` into one reused (chunk_rows, V) buffer, in the
   inputs' dtype (the matmul accumulates in float32);
2. the Triton kernel, one program per row, runs an online log-sum-exp over blocks of V in float32,
   writes the row's loss ``lse - logits[target]`` (0 for ``ignore_index`` rows) and, when
   gradients are wanted, turns the buffer in place into ``dlogits = (softmax - onehot) * scale``
   (0 for ignored rows);
3. ``dhidden[chunk] = dlogits @ weight``, ``dweight += dlogits.T @ hidden[chunk]`` and
   ``dbias += dlogits.sum(0)``; dweight and dbias accumulate in float32 across chunks.

Reductions ``mean`` and ``sum`` compute the gradients during the forward with ``scale`` = 1 / (number
of non-ignored rows) or 1; the backward multiplies them by the scalar grad_output. With reduction
``none`` the upstream gradient is one number per row and unknown in the forward, and dweight, a
sum over rows, cannot be rescaled row by row afterwards: so the forward computes only the losses
and the backward recomputes the chunks with ``scale`` = grad_output[row]. That costs a second
matmul per chunk, but nothing of size N x V is ever stored.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..._launch import LaunchSettings, pow2_block, warps_for
from ..._memory import new_output

# Bounds of the logits buffer, in elements. Below the lower one matmuls get small and the float32
# dweight accumulator (read and written once per chunk) costs more than it saves; the upper one
# (128 MiB in 16-bit) holds whatever N is.
MIN_CHUNK_ELEMENTS = 1 << 25
MAX_CHUNK_ELEMENTS = 1 << 26
MAX_BLOCK_V = 4096  # vocabulary entries per loop step of the kernel
REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def _fused_linear_cross_entropy_kernel(
    logits_ptr, target_ptr, loss_ptr, scale_ptr, V, stride_logits, stride_scale, ignore_index,
    WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # One program per row of the chunk: loss_ptr[row] = logsumexp(logits[row]) - logits[row, target];
    # WRITE_GRAD: logits[row] <- (softmax(logits[row]) - onehot(target)) * scale[row], in place.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_logits
    target = tl.load(target_ptr + row)
    ignored = target == ignore_index
    cols = tl.arange(0, BLOCK_V).to(tl.int64)
    m = float("-inf")  # running max
    s = 0.0  # running sum of exp(logits - m)
    for v0 in range(0, V, BLOCK_V):
        x = tl.load(row_ptr + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(s)
    target_logit = tl.load(row_ptr + tl.where(ignored, 0, target)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(ignored, 0.0, lse - target_logit))
    if WRITE_GRAD:
        scale = tl.where(ignored, 0.0, tl.load(scale_ptr + row * stride_scale).to(tl.float32))
        for v0 in range(0, V, BLOCK_V):
            v = v0 + cols
            mask = v < V
            p = tl.exp(tl.load(row_ptr + v, mask=mask, other=0.0).to(tl.float32) - lse)
            dlogits = tl.where(v == target, p - 1.0, p) * scale
            tl.store(row_ptr + v, dlogits.to(logits_ptr.dtype.element_ty), mask=mask)


def _prev_power_of_2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _chunk_rows(rows: int, vocab: int, size: int) -> int:
    """Rows per chunk for ``rows`` rows of width ``size`` against a vocabulary of ``vocab`` entries:
    the logits buffer is (chunk_rows, vocab).

    Like Liger-Kernel, a chunk's logits hold about as many elements as ``hidden`` itself:
    ``chunk_rows = next_pow2(ceil(rows / ceil(vocab / size)))``; but at least MIN_CHUNK_ELEMENTS
    (rounded up to a power of two of rows) and at most MAX_CHUNK_ELEMENTS (rounded down), and
    never more than ``rows``.
    """
    chunk_rows = triton.next_power_of_2(triton.cdiv(rows, triton.cdiv(vocab, size)))
    chunk_rows = max(chunk_rows, triton.next_power_of_2(triton.cdiv(MIN_CHUNK_ELEMENTS, vocab)))
    return min(chunk_rows, _prev_power_of_2(max(1, MAX_CHUNK_ELEMENTS // vocab)), max(rows, 1))


def _launch_settings(vocab: int) -> LaunchSettings:
    """BLOCK_V vocabulary entries per kernel loop step (up to MAX_BLOCK_V); 8 warps from 2048 on."""
    block_v = pow2_block(vocab, maximum=MAX_BLOCK_V)
    return LaunchSettings({"BLOCK_V": block_v}, num_warps=warps_for(block_v, 256, minimum=4, maximum=8))


class Gradients(NamedTuple):
    """dhidden (N, D) in hidden's dtype; dweight (V, D) and dbias (V,) in float32; None when not wanted."""

    hidden: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None


def _accumulate_product(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for a float32 ``acc``; 16-bit ``a``, ``b`` multiply in their dtype (float32 accumulation)."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a @ b)


def linear_cross_entropy_chunks(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None, ignore_index: int,
    scale: torch.Tensor | None, needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, Gradients]:
    """One pass over the chunks of hidden (N, D) against weight (V, D), bias (V,) or None, target (N,) int64.

    Returns the float32 (N,) loss per row (0 for ignore_index rows) and the gradients of
    sum_r scale[r] * loss[r] wrt (hidden, weight, bias) for those of ``needs`` that are True.
    ``scale``: float tensor of 1 element (every row) or N (one per row); None when no gradient is
    wanted. The logits buffer is the only tensor with V columns.
    """
    rows, size = hidden.shape
    vocab = weight.shape[0]
    device, dtype = hidden.device, hidden.dtype
    need_dhidden, need_dweight, need_dbias = needs
    write_grad = any(needs)
    losses = new_output((rows,), torch.float32, device)
    grads = Gradients(new_output((rows, size), dtype, device) if need_dhidden else None,
                      new_output((vocab, size), torch.float32, device).zero_() if need_dweight else None,
                      new_output((vocab,), torch.float32, device).zero_() if need_dbias else None)
    if rows == 0:
        return losses, grads
    chunk_rows, settings = _chunk_rows(rows, vocab, size), _launch_settings(vocab)
    target = target.contiguous()
    buffer = new_output((chunk_rows, vocab), dtype, device)
    weight_t = weight.t()
    for start in range(0, rows, chunk_rows):
        end = min(start + chunk_rows, rows)
        chunk = hidden[start:end]
        logits = buffer[:end - start]
        if bias is None:
            torch.mm(chunk, weight_t, out=logits)
        else:
            torch.addmm(bias, chunk, weight_t, out=logits)
        row_scale = scale if scale is None or scale.numel() == 1 else scale[start:end]
        _fused_linear_cross_entropy_kernel[(end - start,)](
            logits, target[start:end], losses[start:end], row_scale, vocab, logits.stride(0),
            0 if row_scale is None or row_scale.numel() == 1 else row_scale.stride(0), ignore_index,
            WRITE_GRAD=write_grad, **settings.options,
        )
        if need_dhidden:
            torch.mm(logits, weight, out=grads.hidden[start:end])
        if need_dweight:
            _accumulate_product(grads.weight, logits.t(), chunk)
        if need_dbias:
            grads.bias.add_(logits.sum(0, dtype=torch.float32))
    return losses, grads


def _valid_rows(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Number of rows whose target is not ``ignore_index``, as a float32 tensor of shape (1,)."""
    return (target != ignore_index).sum(dtype=torch.float32).reshape(1)


def fused_linear_cross_entropy_forward(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None, ignore_index: int,
    reduction: str, needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, Gradients]:
    """The loss (float32: a scalar, or (N,) for ``none``) and, for ``mean`` / ``sum`` and each of
    ``needs``, the gradients of that loss wrt (hidden, weight, bias) (see :func:`linear_cross_entropy_chunks`).

    ``none`` never computes gradients here: the backward recomputes them with the per-row grad_output.
    """
    if reduction == "none":
        return linear_cross_entropy_chunks(hidden, weight, target, bias, ignore_index, None, (False, False, False))
    valid = _valid_rows(target, ignore_index) if reduction == "mean" else None
    scale = torch.ones(1, device=hidden.device) if valid is None else valid.reciprocal()
    losses, grads = linear_cross_entropy_chunks(hidden, weight, target, bias, ignore_index,
                                                scale if any(needs) else None, needs)
    total = losses.sum()
    return (total if valid is None else total / valid[0]), grads


def _finish(grad: torch.Tensor | None, factor: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """``grad * factor`` (just ``grad`` when factor is None) in ``dtype``; None stays None."""
    if grad is None:
        return None
    return (grad if factor is None else grad * factor).to(dtype)


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked linear + cross-entropy. mean / sum: saves the gradients computed in the forward
    (dhidden (N, D), float32 dweight (V, D) and dbias (V,)); none: saves the inputs and recomputes."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor,
                ignore_index: int, reduction: str, out_dtype: torch.dtype) -> torch.Tensor:
        needs = tuple(ctx.needs_input_grad[:3])
        loss, grads = fused_linear_cross_entropy_forward(hidden, weight, target, bias, ignore_index, reduction,
                                                         needs)
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, target)
        else:
            ctx.save_for_backward(*grads)
        ctx.ignore_index, ctx.reduction, ctx.needs = ignore_index, reduction, needs
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss.to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.reduction == "none":  # recompute, each row's dlogits scaled by its grad_output
            hidden, weight, bias, target = ctx.saved_tensors
            _, grads = linear_cross_entropy_chunks(hidden, weight, target, bias, ctx.ignore_index, grad_loss,
                                                   ctx.needs)
            factor = None
        else:
            grads, factor = Gradients(*ctx.saved_tensors), grad_loss.float()
        return (*(_finish(grad, factor, dtype) for grad, dtype in zip(grads, ctx.dtypes)), None, None, None, None)
