"""Oracles of the kernel tests: each op's formula computed in float64, and the DALL-E masks written
out entry by entry from docs/design.md#attention-masks (plain Python loops and divmod, not the
vectorized tensor formula of ``dalle_kernels``). Also the helpers that run implementations side by
side: their gradients, and the sizes of the outputs an op allocates.
"""
import functools
from types import ModuleType

import pytest
import torch

from dalle_kernels.ops.fused_linear_cross_entropy.reference import fused_linear_cross_entropy_reference

KINDS = ("full", "row", "column", "conv")


# ---------------------------------------------------------------- running implementations


def gradients(fn, inputs, grad_out: torch.Tensor) -> tuple:
    """The output of ``fn(*inputs)`` and its gradients wrt ``inputs`` (fresh leaves) for ``grad_out``;
    an input that is None stays None and has gradient None."""
    leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grads = iter(torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out.to(out.dtype)))
    return (out, *(None if t is None else next(grads) for t in leaves))


def record_allocations(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[int]:
    """Make ``module.new_output`` record the number of elements of each output it allocates (zeros),
    in the returned list."""
    allocated = []

    def recording_new_output(shape, dtype, device):
        allocated.append(torch.Size(shape).numel())
        return torch.zeros(shape, dtype=dtype, device=device)

    monkeypatch.setattr(module, "new_output", recording_new_output)
    return allocated


# ---------------------------------------------------------------- Gumbel-softmax


def gumbel_scores_float64(logits: torch.Tensor, noise: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """z = (logits + g) / tau in float64 with g = -log(-log(noise)); shape of logits."""
    return (logits.double() - torch.log(-torch.log(noise.double()))) / tau


def gumbel_softmax_float64(logits: torch.Tensor, noise: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """y = softmax(z) along ``dim`` (z of :func:`gumbel_scores_float64`), in float64."""
    return torch.softmax(gumbel_scores_float64(logits, noise, tau), dim)


def gumbel_softmax_grad_float64(y: torch.Tensor, dy: torch.Tensor, tau: float, dim: int) -> torch.Tensor:
    """dlogits of the float64 soft sample y for the upstream gradient dy: y * (dy - <dy, y>) / tau."""
    dy = dy.double()
    return y * (dy - (dy * y).sum(dim, keepdim=True)) / tau


def gumbel_softmax_codebook_float64(logits: torch.Tensor, codebook: torch.Tensor, tau: float, hard: bool, dim: int,
                                    noise: torch.Tensor) -> torch.Tensor:
    """sum_k y_k c_k in float64 with y = softmax(z) along ``dim`` (z of :func:`gumbel_scores_float64`),
    codebook (K, D): (.., D at dim, ..). ``hard``: y is the one-hot of argmax z in value, the gradient
    of the soft y."""
    dim = dim % logits.ndim
    z = gumbel_scores_float64(logits, noise, tau)
    y = torch.softmax(z, dim)
    if hard:
        categories = torch.arange(z.shape[dim], device=z.device).view([-1] + [1] * (z.ndim - dim - 1))
        y = (categories == z.argmax(dim, keepdim=True)).double() + (y - y.detach())
    return torch.tensordot(y.movedim(dim, -1), codebook.double(), dims=1).movedim(-1, dim)


# ---------------------------------------------------------------- codebooks, cross-entropy, attention


def scatter_add_float64(indices: torch.Tensor, grad_out: torch.Tensor, num_codes: int, dim: int) -> torch.Tensor:
    """The (K, D) float64 codebook gradient of a lookup: every vector of ``grad_out`` (D at ``dim``) added
    to the row of its code in ``indices`` (grad_out's shape without ``dim``)."""
    rows = grad_out.detach().double().movedim(dim, -1).reshape(-1, grad_out.shape[dim])
    expected = torch.zeros(num_codes, rows.shape[1], dtype=torch.float64, device=rows.device)
    return expected.index_add_(0, indices.reshape(-1).long(), rows)


def cross_entropy_float64(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, *,
                          bias: torch.Tensor | None = None, ignore_index: int = -100,
                          reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, target)`` in float64: hidden (N, D), weight (V, D),
    bias (V,) or None, target (N,); a scalar, or (N,) for ``reduction="none"``."""
    return fused_linear_cross_entropy_reference(hidden.double(), weight.double(), target,
                                                None if bias is None else bias.double(), ignore_index, reduction)


def attention_float64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dense: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale masked by ``dense``) v, all in float64: q (.., Sq, Dh), k and v
    (.., Sk, Dh), dense (Sq, Sk) bool; scale 1 / sqrt(Dh) when None."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~dense.to(q.device), float("-inf")), -1) @ v.double()


# ---------------------------------------------------------------- DALL-E masks, entry by entry


def _cycle_distance(d: int, w: int) -> int:
    d %= w  # Python's modulo is never negative
    return min(d, w - d)


def may_attend(kind: str, text_len: int, image_size: int, conv_kernel: int, i: int, j: int) -> bool:
    """Whether query i may attend key j (raster sequence indices)."""
    if j > i:
        return False
    if j < text_len:
        return True
    a, b = i - text_len, j - text_len
    (ra, ca), (rb, cb) = divmod(a, image_size), divmod(b, image_size)
    if kind == "full":
        return True
    if kind == "row":
        return a - b <= image_size
    if kind == "column":
        return ca == cb
    assert kind == "conv", kind
    half = conv_kernel // 2
    return _cycle_distance(ra - rb, image_size) <= half and _cycle_distance(ca - cb, image_size) <= half


@functools.cache
def _loop_mask(kind: str, text_len: int, image_size: int, conv_kernel: int) -> torch.Tensor:
    s = text_len + image_size**2
    return torch.tensor([[may_attend(kind, text_len, image_size, conv_kernel, i, j) for j in range(s)]
                         for i in range(s)])


def loop_mask(kind: str, text_len: int, image_size: int, conv_kernel: int = 11) -> torch.Tensor:
    """The (S, S) bool mask, True where query (row) i may attend key (column) j (a fresh copy)."""
    return _loop_mask(kind, text_len, image_size, conv_kernel).clone()


def column_major_order(text_len: int, image_size: int) -> list[int]:
    """Raster indices in the order the column kernels read them: the text, then column after column."""
    return list(range(text_len)) + [text_len + r * image_size + c for c in range(image_size)
                                    for r in range(image_size)]
