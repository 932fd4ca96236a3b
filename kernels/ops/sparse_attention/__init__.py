"""``dalle_mask``, ``sparse_attention`` and ``sparse_attention_decode``: argument checks and backend dispatch."""
import math
from numbers import Real

import torch

from ..._checks import FLOAT_DTYPES, check_int, check_same_device, check_tensor
from ...backend import backend_for
from .kernel import SparseAttentionFunction, sparse_attention_decode_forward
from .mask import DalleMask, dalle_mask  # noqa: F401 -- re-exported
from .reference import sparse_attention_decode_reference, sparse_attention_reference

MAX_HEAD_DIM = 128


def _check_mask(mask) -> None:
    if not isinstance(mask, DalleMask):
        raise TypeError(f"mask: expected a dalle_mask(...), got {type(mask).__name__}")


def _check_like_q(q: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Each named tensor is a 4-d tensor with q's dtype, batch, heads and head dim, on q's device."""
    for name, value in tensors.items():
        check_tensor(name, value, FLOAT_DTYPES, ndim=4)
        if value.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {value.dtype} differs from q's {q.dtype}")
        if value.shape[:2] != q.shape[:2] or value.shape[3] != q.shape[3]:
            raise ValueError(f"{name}: shape {tuple(value.shape)} does not match q {tuple(q.shape)} "
                             "in batch, heads or head dim (B, H, _, Dh)")
        check_same_device(q=q, **{name: value})


def _check_q(q) -> None:
    check_tensor("q", q, FLOAT_DTYPES, ndim=4)
    if not 1 <= q.shape[3] <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim {q.shape[3]} is outside 1..{MAX_HEAD_DIM}, shape {tuple(q.shape)}")


def _check_scale(scale, head_dim: int) -> float:
    """The score scale as a float: 1 / sqrt(head_dim) when None, else a finite real number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale: expected a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: must be finite, got {scale}")
    return float(scale)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DalleMask,
                     scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention restricted to a DALL-E ``mask`` (a :func:`dalle_mask`).

    q, k, v: (B, H, S, Dh) with S = mask.seq_len, one float dtype, any strides (a (B, S, H, Dh)
    tensor transposed to (B, H, S, Dh) is read in place); Dh in 1..128. Returns (B, H, S, Dh) in
    q's dtype, equal to ``softmax(q k^T * scale, masked by mask.dense()) v`` with scale
    ``1 / sqrt(Dh)`` by default. Differentiable in q, k and v. The Triton kernels accumulate in
    float32 and never compute a block without an allowed entry.
    """
    _check_q(q)
    _check_like_q(q, k=k, v=v)
    _check_mask(mask)
    for name, value in (("k", k), ("v", v)):
        if value.shape[2] != q.shape[2]:
            raise ValueError(f"{name}: sequence length {value.shape[2]} differs from q's {q.shape[2]}")
    if q.shape[2] != mask.seq_len:
        raise ValueError(f"q: sequence length {q.shape[2]} does not match the mask's S = text_len + image_size**2 "
                         f"= {mask.text_len} + {mask.image_size}**2 = {mask.seq_len}")
    scale = _check_scale(scale, q.shape[3])
    if backend_for(q) == "triton":
        if not torch.is_grad_enabled():  # no graph will be built: keep the forward from saving for a backward
            q, k, v = q.detach(), k.detach(), v.detach()
        return SparseAttentionFunction.apply(q, k, v, mask, scale)
    return sparse_attention_reference(q, k, v, mask, scale)


def sparse_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: DalleMask,
                            position: int, scale: float | None = None) -> torch.Tensor:
    """Cached decoding: row ``position`` of ``sparse_attention`` for one new query.

    q (B, H, 1, Dh): the query of the token at sequence index ``position``; k_cache, v_cache
    (B, H, S_cache, Dh), valid at rows 0..position (S_cache > position; later rows are never
    read). Returns (B, H, 1, Dh) in q's dtype. The Triton kernel reads only the cache rows the mask
    allows (the text keys, then: row, the last W + 1 image keys; column, every W-th; conv, the
    neighbourhood). Inference only: the result carries no gradient.
    """
    _check_q(q)
    if q.shape[2] != 1:
        raise ValueError(f"q: expected one query (B, H, 1, Dh), got shape {tuple(q.shape)}")
    _check_like_q(q, k_cache=k_cache, v_cache=v_cache)
    if k_cache.shape[2] != v_cache.shape[2]:
        raise ValueError(f"v_cache: {v_cache.shape[2]} rows, but k_cache has {k_cache.shape[2]}")
    _check_mask(mask)
    check_int("position", position)
    if not 0 <= position < min(mask.seq_len, k_cache.shape[2]):
        raise ValueError(f"position: {position} is outside [0, {min(mask.seq_len, k_cache.shape[2])}) "
                         f"(mask S = {mask.seq_len}, cache rows = {k_cache.shape[2]})")
    scale = _check_scale(scale, q.shape[3])
    q, k_cache, v_cache = q.detach(), k_cache.detach(), v_cache.detach()
    if backend_for(q) == "triton":
        return sparse_attention_decode_forward(q, k_cache, v_cache, mask, position, scale)
    return sparse_attention_decode_reference(q, k_cache, v_cache, mask, position, scale)
