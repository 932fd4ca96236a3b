"""``nearest_codebook``: argument checks and backend dispatch."""
import torch

from ..._checks import FLOAT_DTYPES, check_codebook, check_same_device, check_tensor, normalize_dim
from ...backend import backend_for
from .kernel import NearestCodebookFunction
from .reference import nearest_codebook_reference


def nearest_codebook(x: torch.Tensor, codebook: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest codebook row of every vector of ``x``: ``(indices, sq_dist)``.

    x (.., D at dim, ..) float, codebook (K, D). Returns ``indices`` int64 = argmin_k
    ||x - codebook[k]||^2 (ties -> lowest k) and ``sq_dist`` float32, that minimum, both shaped
    like ``x`` without ``dim``. Distances are computed tile by tile in float32 as
    ||x||^2 - 2 x.c + ||c||^2; the N x K distance matrix never exists. ``sq_dist`` is
    differentiable in ``x`` and ``codebook``.
    """
    check_tensor("x", x, FLOAT_DTYPES, min_ndim=1)
    check_codebook(codebook)
    check_same_device(x=x, codebook=codebook)
    dim = normalize_dim(dim, x.ndim)
    if x.shape[dim] != codebook.shape[1]:
        raise ValueError(f"x: vector size {x.shape[dim]} along dim {dim} does not match codebook D={codebook.shape[1]}")
    if backend_for(x) == "triton":
        return NearestCodebookFunction.apply(x, codebook, dim)
    return nearest_codebook_reference(x, codebook, dim)
