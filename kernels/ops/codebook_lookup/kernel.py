"""Triton ``codebook_lookup``: a gather of codebook rows written straight into the (O, D, I) output
layout, and its backward, a float32 atomic scatter-add into the codebook gradient.

The output of ``indices`` (...) with D inserted at ``dim`` is viewed as ``(O, D, I)``,
O = prod(indices.shape[:dim]), I = prod(indices.shape[dim:]); row ``r = o * I + i`` reads
``indices[o, i]``. Programs own ``BLOCK_O x BLOCK_D x BLOCK_I`` tiles of that view, so the
contiguous axis of the output (D when I == 1, the rows i otherwise, e.g. channels-first) is
always a tile axis of consecutive addresses.
"""
import math

import torch
import triton
import triton.language as tl

from ..._launch import LaunchSettings, pow2_block
from ..._memory import new_output
from ..._strided import row_view

# Elements per program tile.
TILE_ELEMENTS = 4096


@triton.jit
def _tile_codes(indices_ptr, stride_idx_outer, stride_idx_inner, outer, size, inner,
                BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    """This program's tile of the dense (O, D, I) tensor: its codes (BLOCK_O, 1, BLOCK_I) int64,
    the D offsets (1, BLOCK_D, 1), the dense element offsets and the mask (BLOCK_O, BLOCK_D, BLOCK_I)."""
    pid_rows = tl.program_id(0).to(tl.int64)
    inner_blocks = tl.cdiv(inner, BLOCK_I)
    o = (pid_rows // inner_blocks) * BLOCK_O + tl.arange(0, BLOCK_O)[:, None, None]
    i = (pid_rows % inner_blocks) * BLOCK_I + tl.arange(0, BLOCK_I)[None, None, :]
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)[None, :, None]
    row_mask = (o < outer) & (i < inner)
    codes = tl.load(indices_ptr + o * stride_idx_outer + i * stride_idx_inner, mask=row_mask, other=0)
    dense = (o * size + d) * inner + i
    return codes.to(tl.int64), d, dense, row_mask & (d < size)


@triton.jit
def _codebook_lookup_forward_kernel(indices_ptr, codebook_ptr, out_ptr, stride_idx_outer, stride_idx_inner,
                                    stride_code, stride_dim, outer, size, inner,
                                    BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    """out[o, d, i] = codebook[indices[o, i], d]."""
    codes, d, dense, mask = _tile_codes(indices_ptr, stride_idx_outer, stride_idx_inner, outer, size, inner,
                                        BLOCK_O, BLOCK_D, BLOCK_I)
    rows = tl.load(codebook_ptr + codes * stride_code + d * stride_dim, mask=mask)
    tl.store(out_ptr + dense, rows, mask=mask)


@triton.jit
def _codebook_lookup_backward_kernel(indices_ptr, grad_out_ptr, grad_codebook_ptr, outer, size, inner,
                                     BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    """grad_codebook[indices[r], d] += grad_out[o, d, i] (float32 atomics; duplicate codes add up)."""
    codes, d, dense, mask = _tile_codes(indices_ptr, inner, 1, outer, size, inner, BLOCK_O, BLOCK_D, BLOCK_I)
    grad = tl.load(grad_out_ptr + dense, mask=mask).to(tl.float32)
    tl.atomic_add(grad_codebook_ptr + codes * size + d, grad, mask=mask, sem="relaxed")


def _launch_settings(outer: int, size: int, inner: int) -> LaunchSettings:
    """Tiles of the (O, D, I) view: up to 64 rows along the inner axis (1 when I == 1, so the D axis
    is the contiguous one), then up to 128 of D, then outer rows up to ``TILE_ELEMENTS``; 4 warps."""
    block_i = pow2_block(inner, maximum=64)
    block_d = pow2_block(size, maximum=min(128, TILE_ELEMENTS // block_i))
    block_o = pow2_block(outer, maximum=max(1, TILE_ELEMENTS // (block_i * block_d)))
    return LaunchSettings({"BLOCK_O": block_o, "BLOCK_D": block_d, "BLOCK_I": block_i}, num_warps=4)


def _grid(outer: int, size: int, inner: int, settings: LaunchSettings) -> tuple[int, int]:
    """(row tiles, D tiles) of the (O, D, I) view."""
    row_tiles = triton.cdiv(outer, settings["BLOCK_O"]) * triton.cdiv(inner, settings["BLOCK_I"])
    return row_tiles, triton.cdiv(size, settings["BLOCK_D"])


def codebook_lookup_forward(indices: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """indices (...) int32/int64 in [0, K), codebook (K, D), ``dim`` a non-negative axis of the output
    -> ``indices.shape[:dim] + (D,) + indices.shape[dim:]`` contiguous, in codebook's dtype."""
    # A size-1 axis at ``dim`` turns indices into the (O, 1, I) view of the output's rows.
    view = row_view(indices.unsqueeze(dim), dim)
    size = codebook.shape[1]
    out = new_output(indices.shape[:dim] + (size,) + indices.shape[dim:], codebook.dtype, codebook.device)
    if out.numel() == 0:
        return out
    s = _launch_settings(view.outer, size, view.inner)
    _codebook_lookup_forward_kernel[_grid(view.outer, size, view.inner, s)](
        view.tensor, codebook, out, view.stride_outer, view.stride_inner, codebook.stride(0), codebook.stride(1),
        view.outer, size, view.inner, **s.options,
    )
    return out


def codebook_lookup_backward(indices: torch.Tensor, grad_out: torch.Tensor, inner: int, num_codes: int) -> torch.Tensor:
    """Scatter-add of an output gradient into the codebook gradient.

    indices: contiguous 1-D int32/int64 tensor of length N = O * I > 0, the codes in row order
    ``r = o * I + i``; grad_out: contiguous, viewable as (O, D, I) with D = grad_out.numel() // N;
    inner: I; num_codes: K. Returns the float32 (K, D) tensor with
    ``grad[indices[r]] += grad_out[o, :, i]`` summed over all rows r (duplicate codes add up).
    With N = 0, D is unknown here: the caller's gradient is then simply zeros.
    """
    rows = indices.numel()
    if rows == 0:
        raise ValueError("indices: empty, so D cannot be derived from grad_out; the gradient is all zeros")
    size = grad_out.numel() // rows
    grad_codebook = new_output((num_codes, size), torch.float32, grad_out.device).zero_()
    outer = rows // inner
    s = _launch_settings(outer, size, inner)
    _codebook_lookup_backward_kernel[_grid(outer, size, inner, s)](indices, grad_out, grad_codebook, outer, size,
                                                                   inner, **s.options)
    return grad_codebook


class CodebookLookupFunction(torch.autograd.Function):
    """``codebook[indices]`` with D at ``dim``; differentiable in ``codebook`` only."""

    @staticmethod
    def forward(ctx, indices: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
        ctx.save_for_backward(indices)
        ctx.dim, ctx.codebook_shape, ctx.codebook_dtype = dim, codebook.shape, codebook.dtype
        return codebook_lookup_forward(indices, codebook, dim)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (indices,) = ctx.saved_tensors
        if indices.numel() == 0:
            return None, grad_out.new_zeros(ctx.codebook_shape, dtype=ctx.codebook_dtype), None
        inner = math.prod(indices.shape[ctx.dim:])
        grad_codebook = codebook_lookup_backward(indices.reshape(-1), grad_out.contiguous(), inner,
                                                 ctx.codebook_shape[0])
        return None, grad_codebook.to(ctx.codebook_dtype), None
