"""Triton ``nearest_codebook``: squared distances to the codebook and their argmin, fused tile by
tile (tl.dot for x.c), so the N x K distance matrix never exists. The backward of ``sq_dist`` is
plain PyTorch plus the codebook_lookup gather and scatter-add launchers (O(N * D)).

x (.., D at dim, ..) is read in place as the (O, D, I) view of ``row_view``; row ``r = o * I + i``.
"""
import math

import torch
import triton
import triton.language as tl

from ..._launch import LaunchSettings, pow2_block
from ..._memory import new_output
from ..._strided import row_view
from ..codebook_lookup.kernel import codebook_lookup_backward, codebook_lookup_forward


@triton.jit
def _load_x_chunk(x_rows, row_mask, d0, size, stride_x_dim, BLOCK_D: tl.constexpr):
    """x[rows, d0:d0 + BLOCK_D] as a (BLOCK_N, BLOCK_D) tile in x's dtype, zeros past D."""
    d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
    return tl.load(x_rows[:, None] + d[None, :] * stride_x_dim, mask=row_mask[:, None] & (d < size)[None, :], other=0.0)


@triton.jit
def _nearest_codebook_forward_kernel(x_ptr, codebook_ptr, code_sq_ptr, indices_ptr, sq_dist_ptr,
                                     stride_x_outer, stride_x_dim, stride_x_inner, stride_code, stride_code_dim,
                                     rows, inner, size, num_codes,
                                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """indices[r] = argmin_k ||x_r - c_k||^2 (first minimum), sq_dist[r] = that minimum, clamped >= 0.
    code_sq: (K,) float32 ||c_k||^2, computed once per call rather than once per program."""
    r = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = r < rows
    x_rows = x_ptr + (r // inner) * stride_x_outer + (r % inner) * stride_x_inner

    x_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, size, BLOCK_D):
        x = _load_x_chunk(x_rows, row_mask, d0, size, stride_x_dim, BLOCK_D).to(tl.float32)
        x_sq += tl.sum(x * x, 1)

    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2. ||x||^2 is the same for every code, so the running
    # minimum is taken over ||c||^2 - 2 x.c and ||x||^2 is added once at the end.
    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_code = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, num_codes, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        code_rows = codebook_ptr + k.to(tl.int64) * stride_code
        x_dot_c = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for d0 in range(0, size, BLOCK_D):
            x = _load_x_chunk(x_rows, row_mask, d0, size, stride_x_dim, BLOCK_D)
            d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
            c_t = tl.load(code_rows[None, :] + d[:, None] * stride_code_dim,  # (BLOCK_D, BLOCK_K): codes^T
                          mask=(d < size)[:, None] & (k < num_codes)[None, :], other=0.0)
            x_dot_c = tl.dot(x, c_t, x_dot_c, input_precision="ieee")
        c_sq = tl.load(code_sq_ptr + k, mask=k < num_codes, other=0.0)
        dist = tl.where((k < num_codes)[None, :], c_sq[None, :] - 2.0 * x_dot_c, float("inf"))
        # A NaN (from x or a code) ranks below every number, as in torch.argmin; it ends as sq_dist NaN.
        dist = tl.where(dist == dist, dist, float("-inf"))
        tile_best, tile_code = tl.min(dist, 1, return_indices=True, return_indices_tie_break_left=True)
        # Strictly smaller only: on a tie the earlier tile, i.e. the lower index, keeps the row.
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_code = tl.where(better, tile_code + k0, best_code)

    sq_dist = tl.where(best > float("-inf"), tl.maximum(x_sq + best, 0.0), float("nan"))
    tl.store(indices_ptr + r, best_code.to(tl.int64), mask=row_mask)
    tl.store(sq_dist_ptr + r, sq_dist, mask=row_mask)


def _launch_settings(rows: int, size: int, dtype: torch.dtype) -> LaunchSettings:
    """Tiles: BLOCK_N rows x BLOCK_K codes of distances per step, D in chunks of BLOCK_D (every
    tl.dot dimension >= 16). Many rows of 16-bit codes get matmul-sized 128 x 128 tiles with 8 warps,
    a 3-stage software pipeline and D 32 at a time; few rows get 64-code tiles with up to 64 rows,
    so that more programs run, and D up to 64 at a time.

    float32 dots run on FMA units with their operands in registers: no pipeline (stages only add
    registers), 64 x 64 tiles at most, D 16 at a time, 4 warps.

    Chosen by ptxas's register counts (benchmarks/compile_report.py, sm_90 and sm_80, triton 3.9;
    not yet timed on a GPU): 16-bit 128 x 128 x 64 spilled inside the main loop at 255 registers,
    128 x 128 x 32 held 167 (sm_90) and 214 (sm_80); a 16-bit 64 x 64 x 64 step at 4 warps held 255
    and spilled. float32 spilled at 128 x 128 for any D, at 64 x 64 x 32 with 8 warps, and at
    64 x 64 x 16 with 8 warps for D = 256; 64 x 64 x 16 at 4 warps held 168 registers."""
    if dtype == torch.float32:
        return LaunchSettings({"BLOCK_N": pow2_block(rows, 16, 64), "BLOCK_K": 64, "BLOCK_D": 16}, num_warps=4,
                              num_stages=1)
    if rows >= 128 * 256:
        return LaunchSettings({"BLOCK_N": 128, "BLOCK_K": 128, "BLOCK_D": pow2_block(size, 16, 32)}, num_warps=8,
                              num_stages=3)
    return LaunchSettings({"BLOCK_N": pow2_block(rows, 16, 64), "BLOCK_K": 64, "BLOCK_D": pow2_block(size, 16, 64)},
                          num_warps=8, num_stages=3)


def nearest_codebook_forward(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (.., D at dim, ..) float, codebook (K, D), ``dim`` non-negative -> (indices int64, sq_dist
    float32), both contiguous and shaped like x without ``dim``. Mixed input dtypes meet in the
    promoted one (the dot's operands share a dtype)."""
    dtype = torch.promote_types(x.dtype, codebook.dtype)
    view = row_view(x.to(dtype), dim)
    codebook = codebook.to(dtype)
    shape = x.shape[:dim] + x.shape[dim + 1:]
    indices = new_output(shape, torch.int64, x.device)
    sq_dist = new_output(shape, torch.float32, x.device)
    rows = view.outer * view.inner
    if rows == 0:
        return indices, sq_dist
    code_sq = codebook.float().square().sum(1)
    s = _launch_settings(rows, view.size, dtype)
    _nearest_codebook_forward_kernel[(triton.cdiv(rows, s["BLOCK_N"]),)](
        view.tensor, codebook, code_sq, indices, sq_dist, view.stride_outer, view.stride_size, view.stride_inner,
        codebook.stride(0), codebook.stride(1), rows, view.inner, view.size, codebook.shape[0], **s.options,
    )
    return indices, sq_dist


class NearestCodebookFunction(torch.autograd.Function):
    """(indices, sq_dist) of the nearest code; ``sq_dist`` is differentiable in x and codebook."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, codebook: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, sq_dist = nearest_codebook_forward(x, codebook, dim)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(x, codebook, indices)
        ctx.dim = dim
        return indices, sq_dist

    @staticmethod
    def backward(ctx, grad_indices: torch.Tensor, grad_sq_dist: torch.Tensor):
        x, codebook, indices = ctx.saved_tensors
        if indices.numel() == 0:
            return torch.zeros_like(x), torch.zeros_like(codebook), None
        # sq_dist = ||x - c||^2 with c = codebook[index]: d/dx = 2 (x - c), d/dc = -2 (x - c).
        diff = x.float() - codebook_lookup_forward(indices, codebook, ctx.dim).float()
        grad_diff = 2.0 * grad_sq_dist.unsqueeze(ctx.dim) * diff
        grad_x = grad_diff.to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_codebook = None
        if ctx.needs_input_grad[1]:
            inner = math.prod(x.shape[ctx.dim + 1:])
            grad_codebook = codebook_lookup_backward(indices.reshape(-1), grad_diff.neg().contiguous(), inner,
                                                     codebook.shape[0]).to(codebook.dtype)
        return grad_x, grad_codebook, None
