"""Triton kernels of ``gumbel_softmax_codebook``: y = softmax((logits + g) / tau) contracted with a
(K, D) codebook, fused like flash attention so the (rows, K) soft one-hot never reaches memory.

logits are viewed as ``(O, K, I)`` (:func:`dalle_kernels._strided.row_view`, so channels-first is
read in place) with rows ``r = o * I + i``; the output is the contiguous ``(O, D, I)`` tensor.
The Gumbel noise g comes from the given uniform noise or from Philox at offset ``r * K + k``, the
numbering ``gumbel_softmax`` uses, so one seed gives both ops the same sample.

Forward, per block of rows: an online softmax over blocks of K with ``acc = sum_k p_k c_k``, and the
row's log-sum-exp ``lse`` saved for the backward. The backward recomputes ``p = exp(z - lse)``:
``dy_k = <dout_r, c_k>``, ``delta_r = <dout_r, y_r> = sum_k p_k dy_k``, ``dlogits = p (dy - delta) / tau``
and ``dcodebook = p^T dout`` (soft) or the scatter-add of dout into the argmax rows (hard:
straight-through, the gradient of ``one_hot(argmax) + y - y.detach()`` contracted with the codebook).
"""
import torch
import triton
import triton.language as tl

from ..._gumbel import gumbel_scores, noise_view, online_softmax_step, row_block
from ..._launch import LaunchSettings, dot_stages, pow2_block
from ..._memory import new_output
from ..._strided import row_view
from ..codebook_lookup.kernel import codebook_lookup_backward

# Tiles: 32 rows x 32 categories x up to 128 codebook columns, 8 warps. Philox noise costs many
# registers per element; at this size ptxas (sm_90a) fits every kernel without spilling.
MAX_BLOCK_R = 32  # rows per program
MAX_BLOCK_K = 32  # categories per loop step
MAX_BLOCK_D = 128  # codebook columns per tile; larger D takes several tiles
NUM_WARPS = 8
MIN_DCODEBOOK_PROGRAMS = 512  # split the rows of the dcodebook reduction until the grid has this many programs
DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _load_rows_tile(ptr, out_row, d, row_mask, D, I):
    """A (BLOCK_R, BLOCK_D) tile, in float32, of a contiguous (O, D, I) tensor (0 outside)."""
    mask = row_mask[:, None] & (d < D)[None, :]
    return tl.load(ptr + out_row[:, None] + d[None, :] * I, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _gumbel_softmax_codebook_forward_kernel(
    x_ptr, noise_ptr, codebook_ptr, out_ptr, soft_ptr, lse_ptr, index_ptr, seed, tau, N, K, D, I,
    stride_x_o, stride_x_k, stride_x_i, stride_noise_o, stride_noise_k, stride_noise_i, stride_c_k, stride_c_d,
    HAS_NOISE: tl.constexpr, HARD: tl.constexpr, SOFT: tl.constexpr, SAVE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (row block, D tile). out_ptr gets the sample: sum_k p_k c_k, or c_argmax when HARD, in
    # which case soft_ptr gets the float32 soft sum when SOFT. SAVE: store lse (and the argmax when
    # HARD) for the backward.
    rows, row_mask, o, i = row_block(tl.program_id(0).to(tl.int64) * BLOCK_R, N, I, BLOCK_R)
    x_row = o * stride_x_o + i * stride_x_i
    noise_row = o * stride_noise_o + i * stride_noise_i
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)  # running max of z
    l = tl.zeros((BLOCK_R,), tl.float32)  # running sum of exp(z - m)
    best = tl.zeros((BLOCK_R,), tl.int32)  # running argmax of z
    acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)  # running sum of exp(z - m) c_k
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, k, K,
                          stride_x_k, stride_noise_k, HAS_NOISE)
        m, l, best, alpha, p = online_softmax_step(z, k0, m, l, best)
        if SOFT:
            c = tl.load(codebook_ptr + k[:, None] * stride_c_k + d[None, :] * stride_c_d,
                        mask=(k < K)[:, None] & (d < D)[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), c.to(DOT_DTYPE), input_precision="ieee")
    out_row = o * D * I + i  # outputs are contiguous (O, D, I)
    out_offsets = out_row[:, None] + d[None, :] * I
    mask = row_mask[:, None] & (d < D)[None, :]
    if HARD:
        c = tl.load(codebook_ptr + best.to(tl.int64)[:, None] * stride_c_k + d[None, :] * stride_c_d,
                    mask=mask, other=0.0).to(tl.float32)
        # l is NaN when the row's z holds a NaN (or +inf), 0 when all of it is -inf: the reference's
        # softmax is NaN then, and so is the sample.
        c = tl.where((l > 0)[:, None], c, float("nan"))
        tl.store(out_ptr + out_offsets, c.to(out_ptr.dtype.element_ty), mask=mask)
        if SOFT:
            tl.store(soft_ptr + out_offsets, acc / l[:, None], mask=mask)
    else:
        tl.store(out_ptr + out_offsets, (acc / l[:, None]).to(out_ptr.dtype.element_ty), mask=mask)
    if SAVE:
        if tl.program_id(1) == 0:  # every D tile has the same statistics; the first stores them
            tl.store(lse_ptr + rows, m + tl.log(l), mask=row_mask)
            if HARD:
                tl.store(index_ptr + rows, best, mask=row_mask)


@triton.jit
def _gumbel_softmax_codebook_dlogits_kernel(
    x_ptr, noise_ptr, codebook_ptr, dout_ptr, soft_ptr, lse_ptr, dx_ptr, seed, tau, N, K, D, I,
    stride_x_o, stride_x_k, stride_x_i, stride_noise_o, stride_noise_k, stride_noise_i, stride_c_k, stride_c_d,
    stride_dx_o, stride_dx_k, stride_dx_i,
    HAS_NOISE: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # dlogits for one block of rows, written block of K by block of K; p recomputed, never loaded.
    rows, row_mask, o, i = row_block(tl.program_id(0).to(tl.int64) * BLOCK_R, N, I, BLOCK_R)
    x_row = o * stride_x_o + i * stride_x_i
    noise_row = o * stride_noise_o + i * stride_noise_i
    dx_row = o * stride_dx_o + i * stride_dx_i
    out_row = o * D * I + i  # dout and the soft sample are contiguous (O, D, I)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    cols = tl.arange(0, BLOCK_K).to(tl.int64)
    # delta_r = <dout_r, y_r> = sum_k p_k dy_k, from the saved soft sample y = sum_k p_k c_k.
    delta = tl.zeros((BLOCK_R,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dout = _load_rows_tile(dout_ptr, out_row, d0 + dims, row_mask, D, I)
        delta += tl.sum(dout * _load_rows_tile(soft_ptr, out_row, d0 + dims, row_mask, D, I), axis=1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=float("inf"))  # rows past N: p = 0
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, k, K,
                          stride_x_k, stride_noise_k, HAS_NOISE)
        p = tl.exp(z - lse[:, None])
        dy = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)  # dy_k = <dout_r, c_k> = (dout @ codebook^T)[r, k]
        for d0 in range(0, D, BLOCK_D):
            dout = _load_rows_tile(dout_ptr, out_row, d0 + dims, row_mask, D, I)
            c_t = tl.load(codebook_ptr + k[None, :] * stride_c_k + (d0 + dims)[:, None] * stride_c_d,
                          mask=(d0 + dims < D)[:, None] & (k < K)[None, :], other=0.0)
            dy = tl.dot(dout.to(DOT_DTYPE), c_t.to(DOT_DTYPE), dy, input_precision="ieee")
        # Softmax backward through z = (logits + g) / tau.
        dx = p * (dy - delta[:, None]) / tau
        tl.store(dx_ptr + dx_row[:, None] + k[None, :] * stride_dx_k, dx.to(dx_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & (k < K)[None, :])


@triton.jit
def _gumbel_softmax_codebook_dcodebook_kernel(
    x_ptr, noise_ptr, dout_ptr, lse_ptr, partial_ptr, seed, tau, N, K, D, I, rows_per_split,
    stride_x_o, stride_x_k, stride_x_i, stride_noise_o, stride_noise_k, stride_noise_i,
    HAS_NOISE: tl.constexpr, DOT_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program (K block, D tile, split s): partial[s, k, d] = sum_r p[r, k] dout[r, d] over the
    # split's rows s * rows_per_split ..., with p recomputed from logits, noise and lse.
    k = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    split = tl.program_id(2).to(tl.int64)
    acc = tl.zeros((BLOCK_K, BLOCK_D), tl.float32)
    for r0 in range(0, rows_per_split, BLOCK_R):
        rows, row_mask, o, i = row_block(split * rows_per_split + r0, N, I, BLOCK_R)
        x_row = o * stride_x_o + i * stride_x_i
        noise_row = o * stride_noise_o + i * stride_noise_i
        z = gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, k, K,
                          stride_x_k, stride_noise_k, HAS_NOISE)
        lse = tl.load(lse_ptr + rows, mask=row_mask, other=float("inf"))
        p = tl.exp(z - lse[:, None])  # rows past N: exp(z - inf) = 0 (exp(z - 0) could overflow)
        dout = _load_rows_tile(dout_ptr, o * D * I + i, d, row_mask, D, I)
        acc = tl.dot(tl.trans(p.to(DOT_DTYPE)), dout.to(DOT_DTYPE), acc, input_precision="ieee")
    tl.store(partial_ptr + (split * K + k[:, None]) * D + d[None, :], acc,
             mask=(k < K)[:, None] & (d < D)[None, :])


def _dot_dtype(logits_dtype: torch.dtype, codebook_dtype: torch.dtype) -> torch.dtype:
    """The tl.dot operand type: 16-bit when an input is (like autocast), else float32."""
    return codebook_dtype if codebook_dtype != torch.float32 else logits_dtype


def _launch_settings(rows: int, num_codes: int, size: int, dot_dtype: torch.dtype) -> LaunchSettings:
    """Tiles shared by the three kernels, for ``rows`` rows of ``num_codes`` categories and a codebook
    of ``size`` columns: every tl.dot dimension is >= 16; NUM_WARPS warps; pipelined unless the dots
    are float32."""
    blocks = {"BLOCK_R": pow2_block(rows, 16, MAX_BLOCK_R), "BLOCK_K": pow2_block(num_codes, 16, MAX_BLOCK_K),
              "BLOCK_D": pow2_block(size, 16, MAX_BLOCK_D)}
    return LaunchSettings(blocks, NUM_WARPS, num_stages=dot_stages(dot_dtype, 3))


def _dcodebook_splits(rows: int, num_codes: int, size: int, settings: LaunchSettings) -> tuple[int, int]:
    """``(splits, rows_per_split)`` of the dcodebook reduction (rows_per_split a multiple of BLOCK_R).

    Its grid (K blocks x D tiles) is small for small K, so its rows are split until it has about
    MIN_DCODEBOOK_PROGRAMS programs.
    """
    block_r = settings["BLOCK_R"]
    tiles = triton.cdiv(num_codes, settings["BLOCK_K"]) * triton.cdiv(size, settings["BLOCK_D"])
    rows_per_split = triton.cdiv(triton.cdiv(rows, block_r), max(1, MIN_DCODEBOOK_PROGRAMS // tiles)) * block_r
    return triton.cdiv(rows, rows_per_split), rows_per_split


def gumbel_softmax_codebook_forward(
    logits: torch.Tensor, codebook: torch.Tensor, tau: float, hard: bool, dim: int, noise: torch.Tensor | None,
    seed: int, for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Sample of logits (.., K at non-negative ``dim``, ..) contracted with codebook (K, D).

    ``noise``: uniform (0, 1) samples shaped like logits, or None for Philox noise from ``seed``.
    Returns ``(out, soft, lse, indices)``: out (.., D at dim, ..) contiguous in
    ``promote_types(logits, codebook)``, the codebook row of the argmax when ``hard``. With
    ``for_backward``: soft, the soft sample (``out`` itself, or a float32 tensor shaped like out
    when ``hard``), lse, the float32 (N,) log-sum-exp of z per row r = o * I + i, and, when
    ``hard``, indices, the int32 (N,) argmax; otherwise (out, None, None, None).
    """
    x = row_view(logits, dim)
    u = noise_view(noise, dim, x)
    rows, num_codes, size = x.outer * x.inner, x.size, codebook.shape[1]
    out_shape = logits.shape[:dim] + (size,) + logits.shape[dim + 1:]
    out = new_output(out_shape, torch.promote_types(logits.dtype, codebook.dtype), logits.device)
    soft = lse = indices = None
    if for_backward:
        soft = new_output(out_shape, torch.float32, logits.device) if hard else out
        lse = new_output((rows,), torch.float32, logits.device)
        indices = new_output((rows,), torch.int32, logits.device) if hard else None
    if rows == 0:
        return out, soft, lse, indices
    dot_dtype = _dot_dtype(logits.dtype, codebook.dtype)
    s = _launch_settings(rows, num_codes, size, dot_dtype)
    _gumbel_softmax_codebook_forward_kernel[(triton.cdiv(rows, s["BLOCK_R"]), triton.cdiv(size, s["BLOCK_D"]))](
        x.tensor, u.tensor, codebook, out, out if soft is None else soft, lse, indices, seed, tau,
        rows, num_codes, size, x.inner, x.stride_outer, x.stride_size, x.stride_inner,
        u.stride_outer, u.stride_size, u.stride_inner, codebook.stride(0), codebook.stride(1),
        HAS_NOISE=noise is not None, HARD=hard, SOFT=not hard or for_backward, SAVE=for_backward,
        DOT_DTYPE=DOT_DTYPES[dot_dtype], **s.options,
    )
    return out, soft, lse, indices


def gumbel_softmax_codebook_backward(
    grad_out: torch.Tensor, logits: torch.Tensor, codebook: torch.Tensor, noise: torch.Tensor | None,
    soft: torch.Tensor, lse: torch.Tensor, indices: torch.Tensor | None, tau: float, dim: int, seed: int,
    need_dlogits: bool, need_dcodebook: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(dlogits, dcodebook)`` from ``grad_out`` (shaped like the output, any layout) and
    what :func:`gumbel_softmax_codebook_forward` saved; ``indices`` is None in soft mode.

    dlogits: shaped and typed like logits (contiguous); dcodebook: (K, D) in codebook's dtype;
    each None when not needed.
    """
    x = row_view(logits, dim)
    u = noise_view(noise, dim, x)
    rows, num_codes, size = x.outer * x.inner, x.size, codebook.shape[1]
    dout = grad_out.contiguous()  # (O, D, I), like the saved soft sample
    dlogits = new_output(logits.shape, logits.dtype, logits.device) if need_dlogits else None
    dcodebook = new_output(codebook.shape, codebook.dtype, codebook.device) if need_dcodebook else None
    if rows == 0:
        if need_dcodebook:
            dcodebook.zero_()
        return dlogits, dcodebook
    dot_dtype = _dot_dtype(logits.dtype, codebook.dtype)
    s = _launch_settings(rows, num_codes, size, dot_dtype)
    constants = dict(HAS_NOISE=noise is not None, DOT_DTYPE=DOT_DTYPES[dot_dtype], **s.options)
    if need_dlogits:
        dx = row_view(dlogits, dim)
        _gumbel_softmax_codebook_dlogits_kernel[(triton.cdiv(rows, s["BLOCK_R"]),)](
            x.tensor, u.tensor, codebook, dout, soft, lse, dlogits, seed, tau, rows, num_codes, size, x.inner,
            x.stride_outer, x.stride_size, x.stride_inner, u.stride_outer, u.stride_size, u.stride_inner,
            codebook.stride(0), codebook.stride(1), dx.stride_outer, dx.stride_size, dx.stride_inner, **constants,
        )
    if need_dcodebook and indices is not None:  # straight-through: one_hot^T @ dout
        dcodebook.copy_(codebook_lookup_backward(indices, dout, x.inner, num_codes))
    elif need_dcodebook:
        splits, rows_per_split = _dcodebook_splits(rows, num_codes, size, s)
        partial = new_output((splits, num_codes, size), torch.float32, codebook.device)
        grid = (triton.cdiv(num_codes, s["BLOCK_K"]), triton.cdiv(size, s["BLOCK_D"]), splits)
        _gumbel_softmax_codebook_dcodebook_kernel[grid](
            x.tensor, u.tensor, dout, lse, partial, seed, tau, rows, num_codes, size, x.inner, rows_per_split,
            x.stride_outer, x.stride_size, x.stride_inner, u.stride_outer, u.stride_size, u.stride_inner,
            **constants,
        )
        torch.sum(partial, 0, out=dcodebook)
    return dlogits, dcodebook


class GumbelSoftmaxCodebookFunction(torch.autograd.Function):
    """Fused Gumbel-softmax + codebook contraction; saves lse per row (and the argmax when hard),
    never the soft one-hot."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, codebook: torch.Tensor, tau: float, hard: bool, dim: int,
                noise: torch.Tensor | None, seed: int) -> torch.Tensor:
        for_backward = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        out, soft, lse, indices = gumbel_softmax_codebook_forward(logits, codebook, tau, hard, dim, noise, seed,
                                                                  for_backward)
        if for_backward:
            ctx.save_for_backward(logits, codebook, noise, soft, lse, indices)
        ctx.tau, ctx.dim, ctx.seed = tau, dim, seed
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, codebook, noise, soft, lse, indices = ctx.saved_tensors
        dlogits, dcodebook = gumbel_softmax_codebook_backward(
            grad_out, logits, codebook, noise, soft, lse, indices, ctx.tau, ctx.dim, ctx.seed,
            need_dlogits=ctx.needs_input_grad[0], need_dcodebook=ctx.needs_input_grad[1],
        )
        return dlogits, dcodebook, None, None, None, None, None
