"""PyTorch reference of ``sparse_attention`` and ``sparse_attention_decode``: dense masked attention.

Memory-safe at the paper's S = 1280: query rows go in chunks of about CHUNK_ENTRIES scores (each
against the keys up to its last row only: causal), and with autograd each chunk is checkpointed,
so its scores are recomputed in backward instead of being kept for every chunk at once.
"""
import torch
from torch.utils.checkpoint import checkpoint

from .mask import DalleMask

CHUNK_ENTRIES = 1 << 24  # scores per chunk: 64 MiB in float32


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """softmax(q k^T * scale where ``allowed``, -inf elsewhere) v, in float32, returned in q's dtype.

    q (.., Sq, Dh), k and v (.., Sk, Dh), allowed (Sq, Sk) bool with at least one True per row.
    """
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    return (probs @ v.float()).to(q.dtype)


def sparse_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DalleMask,
                               scale: float) -> torch.Tensor:
    """Reference of ``dalle_kernels.sparse_attention``: q, k, v (B, H, S, Dh) -> (B, H, S, Dh) in q's dtype."""
    batch, heads, seq, _ = q.shape
    rows = max(1, CHUNK_ENTRIES // max(1, batch * heads * seq))
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    index = torch.arange(seq, device=q.device)
    chunks = []
    for start in range(0, seq, rows):
        end = min(seq, start + rows)
        allowed = mask.allows(index[start:end, None], index[None, :end])
        args = (q[:, :, start:end], k[:, :, :end], v[:, :, :end], allowed, scale)
        chunks.append(checkpoint(masked_attention, *args, use_reentrant=False) if track else masked_attention(*args))
    return torch.cat(chunks, 2)


def sparse_attention_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                      mask: DalleMask, position: int, scale: float) -> torch.Tensor:
    """Reference of ``dalle_kernels.sparse_attention_decode``: q (B, H, 1, Dh) at sequence index
    ``position`` against cache rows 0..position (B, H, S_cache, Dh) -> (B, H, 1, Dh)."""
    keys = torch.arange(position + 1, device=q.device)
    allowed = mask.allows(torch.tensor([[position]], device=q.device), keys[None, :])
    return masked_attention(q, k_cache[:, :, :position + 1], v_cache[:, :, :position + 1], allowed, scale)
