"""Strided 3-d views ``(outer, size, inner)`` of N-d tensors, so kernels reduce along any ``dim``
in place (channels-first ``(B, K, H, W)`` with ``dim=1`` is ``(B, K, H*W)``) without permute copies.

A kernel addresses element ``(o, k, i)`` at ``o * stride_outer + k * stride_size + i * stride_inner``
and numbers rows ``r = o * inner + i``.
"""
from typing import NamedTuple

import torch


class RowView(NamedTuple):
    tensor: torch.Tensor  # the input, or a contiguous copy when its layout cannot be merged
    outer: int
    size: int
    inner: int
    stride_outer: int
    stride_size: int
    stride_inner: int


def merged_stride(x: torch.Tensor, start: int, end: int) -> int | None:
    """Stride of dims ``start:end`` of ``x`` merged into one, or None when their layout does not allow it."""
    stride = None  # stride of the innermost dim of size > 1 seen so far
    span = 1  # number of elements those inner dims cover
    for d in reversed(range(start, end)):
        if x.shape[d] == 1:
            continue
        if stride is None:
            stride = x.stride(d)
        elif x.stride(d) != stride * span:
            return None
        span *= x.shape[d]
    return 0 if stride is None else stride


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def row_view(x: torch.Tensor, dim: int) -> RowView:
    """View ``x`` as ``(prod(shape[:dim]), shape[dim], prod(shape[dim+1:]))`` (``dim`` non-negative)."""
    outer_stride, inner_stride = merged_stride(x, 0, dim), merged_stride(x, dim + 1, x.ndim)
    if outer_stride is None or inner_stride is None:
        x = x.contiguous()
        outer_stride, inner_stride = merged_stride(x, 0, dim), merged_stride(x, dim + 1, x.ndim)
    return RowView(x, _numel(x.shape[:dim]), x.shape[dim], _numel(x.shape[dim + 1:]),
                   outer_stride, x.stride(dim), inner_stride)
