"""Triton kernels of ``gumbel_softmax``: y = softmax((logits + g) / tau) along one axis, read
straight from strided layouts (no permute copies).

The input is viewed as ``(O, K, I)`` (:func:`dalle_kernels._strided.row_view`) with rows
``r = o * I + i`` and the K categories along the middle axis; outputs are contiguous tensors of the
input's shape, i.e. ``(O, K, I)`` with strides ``(K * I, I, 1)``. A program owns ``BLOCK_R`` rows
and walks their categories in ``BLOCK_K`` chunks: one chunk held in registers when K fits, else
two passes (online max/sum, then write). Gumbel noise is regenerated from (seed, r * K + k) with
Philox, so it is never stored.
"""
import torch
import triton
import triton.language as tl

from ..._gumbel import gumbel_scores, noise_view, online_softmax_step, row_block
from ..._launch import LaunchSettings, pow2_block, warps_for
from ..._memory import new_output
from ..._strided import row_view

MAX_BLOCK_K = 8192  # categories held in registers at once; larger K takes the two-pass path
TILE = 4096  # target elements per program when one tile spans several rows
ROW_MAJOR_BLOCK_R = 128  # rows per program when rows are the contiguous axis (channels-first)


@triton.jit
def _store_one_hot(y_ptr, s, best, out_row, cols, mask, stride_out_k):
    """Write the one-hot of each row's argmax ``best`` for one chunk of categories."""
    one_hot = tl.where(cols[None, :] == best[:, None], 1.0, 0.0)
    # s is NaN exactly when the row's z holds a NaN (or +inf): then the whole row is NaN.
    one_hot = tl.where((s != s)[:, None], float("nan"), one_hot)
    tl.store(y_ptr + out_row[:, None] + cols[None, :] * stride_out_k, one_hot.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_soft(y_ptr, z, m, s, out_row, cols, mask, stride_out_k):
    """Write y = exp(z - m) / s for one chunk of categories."""
    y = tl.exp(z - m[:, None]) / s[:, None]
    tl.store(y_ptr + out_row[:, None] + cols[None, :] * stride_out_k, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gumbel_softmax_forward_kernel(
    x_ptr, noise_ptr, y_ptr, soft_ptr, seed, tau, N, K, I,
    stride_x_o, stride_x_k, stride_x_i, stride_noise_o, stride_noise_k, stride_noise_i,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
    HAS_NOISE: tl.constexpr, HARD: tl.constexpr, WRITE_SOFT: tl.constexpr,
):
    # y_ptr gets the sample (the one-hot when HARD); soft_ptr the soft sample when WRITE_SOFT.
    rows, row_mask, o, i = row_block(tl.program_id(0).to(tl.int64) * BLOCK_R, N, I, BLOCK_R)
    x_row = o * stride_x_o + i * stride_x_i
    noise_row = o * stride_noise_o + i * stride_noise_i
    out_row = o * K * I + i  # outputs are contiguous (O, K, I)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)  # int64: cols * stride_k can pass 2**31
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_R,), tl.float32)
    best = tl.zeros((BLOCK_R,), tl.int64)
    if SINGLE_CHUNK:  # the whole row stays in registers
        z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, cols, K,
                          stride_x_k, stride_noise_k, HAS_NOISE)
        m, s, best, _, _ = online_softmax_step(z, 0, m, s, best)
        mask = row_mask[:, None] & (cols < K)[None, :]
        if HARD:
            _store_one_hot(y_ptr, s, best, out_row, cols, mask, I)
        if WRITE_SOFT:
            _store_soft(soft_ptr, z, m, s, out_row, cols, mask, I)
    else:
        for k0 in range(0, K, BLOCK_K):
            z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, k0 + cols, K,
                              stride_x_k, stride_noise_k, HAS_NOISE)
            m, s, best, _, _ = online_softmax_step(z, k0, m, s, best)
        for k0 in range(0, K, BLOCK_K):
            mask = row_mask[:, None] & (k0 + cols < K)[None, :]
            if HARD:
                _store_one_hot(y_ptr, s, best, out_row, k0 + cols, mask, I)
            if WRITE_SOFT:  # recompute z (Philox included) rather than keep it in memory
                z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, k0 + cols, K,
                              stride_x_k, stride_noise_k, HAS_NOISE)
                _store_soft(soft_ptr, z, m, s, out_row, k0 + cols, mask, I)


@triton.jit
def _load_y_dy(y_ptr, dy_ptr, out_row, dy_row, cols, mask, stride_y_k, stride_dy_k):
    """One chunk of the soft sample y and the upstream gradient dy, in float32."""
    y = tl.load(y_ptr + out_row[:, None] + cols[None, :] * stride_y_k, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + dy_row[:, None] + cols[None, :] * stride_dy_k, mask=mask, other=0.0).to(tl.float32)
    return y, dy


@triton.jit
def _store_grad(dx_ptr, y, dy, dot, tau, out_row, cols, mask, stride_out_k):
    # Softmax backward through z = (logits + g) / tau: dlogits = y * (dy - sum_k dy * y) / tau.
    dx = y * (dy - dot[:, None]) / tau
    tl.store(dx_ptr + out_row[:, None] + cols[None, :] * stride_out_k, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gumbel_softmax_backward_kernel(
    dy_ptr, y_ptr, dx_ptr, tau, N, K, I, stride_dy_o, stride_dy_k, stride_dy_i,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_CHUNK: tl.constexpr,
):
    # dot = sum_j y_j dy_j / sum_j y_j. The saved y (16-bit for 16-bit logits) does not sum to 1
    # exactly; normalizing makes dy_k - dot = sum_j y_j (dy_k - dy_j) / sum_j y_j, which stays
    # accurate when one y_j is close to 1 instead of cancelling that entry's rounding error.
    rows, row_mask, o, i = row_block(tl.program_id(0).to(tl.int64) * BLOCK_R, N, I, BLOCK_R)
    dy_row = o * stride_dy_o + i * stride_dy_i
    out_row = o * K * I + i  # y and dx are contiguous (O, K, I)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)  # int64: cols * stride_k can pass 2**31
    if SINGLE_CHUNK:  # the whole row stays in registers
        mask = row_mask[:, None] & (cols < K)[None, :]
        y, dy = _load_y_dy(y_ptr, dy_ptr, out_row, dy_row, cols, mask, I, stride_dy_k)
        dot, total = tl.sum(dy * y, axis=1), tl.sum(y, axis=1)
    else:  # pass 1: the row sums; pass 2 (below): the gradient
        dot = tl.zeros((BLOCK_R,), tl.float32)
        total = tl.zeros((BLOCK_R,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = row_mask[:, None] & (k0 + cols < K)[None, :]
            y, dy = _load_y_dy(y_ptr, dy_ptr, out_row, dy_row, k0 + cols, mask, I, stride_dy_k)
            dot += tl.sum(dy * y, axis=1)
            total += tl.sum(y, axis=1)
    dot = dot / tl.where(row_mask, total, 1.0)  # rows past N hold nothing: no 0 / 0
    if SINGLE_CHUNK:
        _store_grad(dx_ptr, y, dy, dot, tau, out_row, cols, mask, I)
    else:
        for k0 in range(0, K, BLOCK_K):
            mask = row_mask[:, None] & (k0 + cols < K)[None, :]
            y, dy = _load_y_dy(y_ptr, dy_ptr, out_row, dy_row, k0 + cols, mask, I, stride_dy_k)
            _store_grad(dx_ptr, y, dy, dot, tau, out_row, k0 + cols, mask, I)


def launch_settings(rows: int, size: int, inner: int) -> LaunchSettings:
    """``BLOCK_R`` rows x ``BLOCK_K`` categories per program, for ``rows`` rows of ``size`` categories;
    a warp per 512 elements of the tile.

    The tile follows the outputs' contiguous axis: categories when ``inner == 1`` (whole rows of
    up to MAX_BLOCK_K categories, several short rows per program), else rows (channels-first:
    ROW_MAJOR_BLOCK_R consecutive positions x a few categories).
    """
    if inner == 1:
        block_k = pow2_block(size, maximum=MAX_BLOCK_K)
        block_r = pow2_block(rows, maximum=max(TILE // block_k, 1))
    else:
        block_r = pow2_block(rows, maximum=ROW_MAJOR_BLOCK_R)
        block_k = pow2_block(size, maximum=TILE // block_r)
    return LaunchSettings({"BLOCK_R": block_r, "BLOCK_K": block_k}, num_warps=warps_for(block_r * block_k, 512))


def gumbel_softmax_forward(logits: torch.Tensor, tau: float, hard: bool, dim: int, noise: torch.Tensor | None,
                           seed: int, keep_soft: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gumbel-softmax of ``logits`` (any shape, K categories at non-negative ``dim``).

    ``noise``: uniform (0, 1) samples shaped like logits, or None for Philox noise from ``seed``.
    Returns ``(y, y_soft)``, both contiguous, shaped and typed like logits: y is the sample (the
    one-hot of the argmax when ``hard``); y_soft the soft sample the backward needs (y itself
    when not ``hard``), or None when ``hard`` and not ``keep_soft``.
    """
    x = row_view(logits, dim)
    y = new_output(logits.shape, logits.dtype, logits.device)
    if not hard:
        y_soft = y
    else:
        y_soft = new_output(logits.shape, logits.dtype, logits.device) if keep_soft else None
    if logits.numel() == 0:
        return y, y_soft
    u = noise_view(noise, dim, x)
    rows = x.outer * x.inner
    s = launch_settings(rows, x.size, x.inner)
    _gumbel_softmax_forward_kernel[(triton.cdiv(rows, s["BLOCK_R"]),)](
        x.tensor, u.tensor, y, y if y_soft is None else y_soft, seed, tau, rows, x.size, x.inner,
        x.stride_outer, x.stride_size, x.stride_inner, u.stride_outer, u.stride_size, u.stride_inner,
        SINGLE_CHUNK=x.size <= s["BLOCK_K"], HAS_NOISE=noise is not None, HARD=hard, WRITE_SOFT=y_soft is not None,
        **s.options,
    )
    return y, y_soft


def gumbel_softmax_backward(dy: torch.Tensor, y_soft: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """Gradient of the logits (shape and dtype of ``y_soft``) from the upstream gradient ``dy``
    (same shape, any layout) and the contiguous soft sample ``y_soft``."""
    g = row_view(dy, dim)
    dx = new_output(y_soft.shape, y_soft.dtype, y_soft.device)
    if dx.numel() == 0:
        return dx
    rows = g.outer * g.inner
    s = launch_settings(rows, g.size, g.inner)
    _gumbel_softmax_backward_kernel[(triton.cdiv(rows, s["BLOCK_R"]),)](
        g.tensor, y_soft, dx, tau, rows, g.size, g.inner, g.stride_outer, g.stride_size, g.stride_inner,
        SINGLE_CHUNK=g.size <= s["BLOCK_K"], **s.options,
    )
    return dx


class GumbelSoftmaxFunction(torch.autograd.Function):
    """Gumbel-softmax with a straight-through gradient when ``hard``; saves only the soft sample."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tau: float, hard: bool, dim: int, noise: torch.Tensor | None,
                seed: int) -> torch.Tensor:
        y, y_soft = gumbel_softmax_forward(logits, tau, hard, dim, noise, seed, keep_soft=ctx.needs_input_grad[0])
        ctx.save_for_backward(y_soft)
        ctx.tau, ctx.dim = tau, dim
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (y_soft,) = ctx.saved_tensors
        return gumbel_softmax_backward(dy, y_soft, ctx.tau, ctx.dim), None, None, None, None, None
