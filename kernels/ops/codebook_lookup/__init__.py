"""``codebook_lookup``: argument checks and backend dispatch."""
import torch

from ..._checks import INDEX_DTYPES, check_codebook, check_same_device, check_tensor, normalize_dim
from ...backend import backend_for
from .kernel import CodebookLookupFunction
from .reference import codebook_lookup_reference


def check_indices_in_range(indices: torch.Tensor, size: int) -> None:
    """Raise ValueError when an index is outside [0, size). (Synchronizes with the device.)"""
    if indices.numel() and bool(((indices < 0) | (indices >= size)).any()):
        bad = indices[(indices < 0) | (indices >= size)][0].item()
        raise ValueError(f"indices: value {bad} is out of range for a codebook of {size} rows")


def codebook_lookup(indices: torch.Tensor, codebook: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``codebook[indices]`` with the D axis placed at ``dim`` of the output.

    indices (...) int32/int64 in [0, K), codebook (K, D) -> output of ``indices.ndim + 1``
    dimensions, e.g. ``(B, H, W)`` with ``dim=1`` -> ``(B, D, H, W)``, in codebook's dtype.
    Differentiable in ``codebook`` (the gradient is a scatter-add of the output gradient).
    """
    check_tensor("indices", indices, INDEX_DTYPES)
    check_codebook(codebook)
    check_same_device(indices=indices, codebook=codebook)
    dim = normalize_dim(dim, indices.ndim + 1)
    check_indices_in_range(indices, codebook.shape[0])
    if backend_for(codebook) == "triton":
        return CodebookLookupFunction.apply(indices, codebook, dim)
    return codebook_lookup_reference(indices, codebook, dim)
