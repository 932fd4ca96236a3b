"""Gumbel noise and the online softmax shared by the Gumbel-softmax ops.

Without an explicit ``noise`` tensor, an op draws one integer seed from torch's RNG
(``generator`` or the default CPU generator, so ``torch.manual_seed`` makes runs repeatable).
The Triton kernels turn (seed, element offset) into noise with Philox, inside the kernel, so
backward passes regenerate it instead of storing it; the reference draws the same-shaped
uniform tensor from a torch generator seeded with that seed. Both ops number elements the same
way (row ``r`` of the ``(rows, K)`` problem, entry ``k`` -> offset ``r * K + k``), so
``gumbel_softmax`` and ``gumbel_softmax_codebook`` see the same noise for the same seed.
"""
import torch
import triton
import triton.language as tl

from ._strided import RowView, row_view

SEED_BOUND = 2**31 - 1


def draw_seed(generator: torch.Generator | None) -> int:
    """One seed in [0, 2**31 - 1) from ``generator`` (default: torch's global CPU generator)."""
    device = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, SEED_BOUND, (1,), generator=generator, device=device).item())


def uniform_noise(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    """Reference noise: float32 uniform samples in (0, 1) of ``shape``, determined by ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    u = torch.rand(shape, generator=generator, device=device)
    return u.clamp_(min=torch.finfo(torch.float32).tiny)


def gumbel_from_uniform_reference(u: torch.Tensor) -> torch.Tensor:
    """g = -log(-log(u)), in float32 (float64 stays float64)."""
    u = u if u.dtype == torch.float64 else u.float()
    return -torch.log(-torch.log(u))


@triton.jit
def gumbel_from_uniform(u):
    """g = -log(-log(u)) in float32."""
    return -tl.log(-tl.log(u.to(tl.float32)))


@triton.jit
def philox_gumbel(seed, offsets):
    """Gumbel(0, 1) samples, float32, one per (int64) offset, from Triton's Philox generator."""
    # Triton versions differ in the integer type randint returns for int64 offsets (int32, uint32
    # or uint64); bits 9..31 are the same random bits in all of them, whatever the shift's sign.
    bits = (tl.randint(seed, offsets) >> 9) & 0x7FFFFF
    # 23 random bits b -> u = (b + 0.5) / 2**23: exact in float32 and strictly inside (0, 1),
    # so g is always finite (|g| < 17).
    u = (bits.to(tl.float32) + 0.5) * 1.1920928955078125e-07
    return -tl.log(-tl.log(u))


def noise_view(noise: torch.Tensor | None, dim: int, logits_view: RowView) -> RowView:
    """The (O, K, I) view of ``noise``; without noise, the logits' view as a placeholder kernels never read."""
    return row_view(noise, dim) if noise is not None else logits_view


@triton.jit
def row_block(start, N, I, BLOCK_R: tl.constexpr):
    """Rows ``start ... start + BLOCK_R - 1`` (int64) of the (O, K, I) view: rows, mask, o, i."""
    rows = start + tl.arange(0, BLOCK_R).to(tl.int64)
    return rows, rows < N, rows // I, rows % I


@triton.jit
def gumbel_scores(x_ptr, noise_ptr, seed, tau, rows, row_mask, x_row, noise_row, cols, K,
                  stride_x_k, stride_noise_k, HAS_NOISE: tl.constexpr):
    """z = (logits + g) / tau, float32, for a (BLOCK_R, BLOCK_K) tile of rows x categories ``cols``
    (int64); -inf for categories >= K. g from the uniform ``noise`` when HAS_NOISE, else Philox."""
    col_mask = cols < K
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(x_ptr + x_row[:, None] + cols[None, :] * stride_x_k, mask=mask, other=0.0).to(tl.float32)
    if HAS_NOISE:
        u = tl.load(noise_ptr + noise_row[:, None] + cols[None, :] * stride_noise_k, mask=mask, other=0.5)
        g = gumbel_from_uniform(u)
    else:
        g = philox_gumbel(seed, rows[:, None] * K + cols[None, :])
    return tl.where(col_mask[None, :], (x + g) / tau, float("-inf"))


@triton.jit
def online_softmax_step(z, k0, m, l, best):
    """Fold one chunk of scores z (BLOCK_R, BLOCK_K), categories k0..., into each row's running max m,
    sum l = sum_k exp(z_k - m) and argmax ``best``. Returns (m_new, l_new, best_new, alpha, p) with
    alpha = exp(m - m_new), the factor that rescales sums taken against the old max, and
    p = exp(z - m_new), the chunk's unnormalized weights.

    While a row has seen only -inf (masked categories), the shift is 0 instead of m_new = -inf so
    exp gives 0, not exp(-inf + inf) = NaN. ``best`` moves only on a strictly greater chunk max, so
    ties keep the lowest index across chunks (and tie_break_left within one)."""
    chunk_max, chunk_arg = tl.max(z, axis=1, return_indices=True, return_indices_tie_break_left=True)
    m_new = tl.maximum(m, chunk_max)
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - shift)
    p = tl.exp(z - shift[:, None])
    l_new = l * alpha + tl.sum(p, axis=1)
    best_new = tl.where(chunk_max > m, k0 + chunk_arg, best)
    return m_new, l_new, best_new, alpha, p
