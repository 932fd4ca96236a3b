"""Gumbel noise shared by the Gumbel-softmax ops.

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
    bits = tl.randint(seed, offsets).to(tl.uint32, bitcast=True)
    # 23 random bits b -> u = (b + 0.5) / 2**23: exact in float32 and strictly inside (0, 1),
    # so g is always finite (|g| < 17).
    u = (((bits >> 9) & 0x7FFFFF).to(tl.float32) + 0.5) * 1.1920928955078125e-07
    return -tl.log(-tl.log(u))
