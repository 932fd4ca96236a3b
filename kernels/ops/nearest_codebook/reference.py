"""PyTorch reference of ``nearest_codebook``: squared distances chunk by chunk, then argmin."""
import torch

# Rows per chunk are chosen so one chunk's distance block holds about this many entries.
CHUNK_ENTRIES = 1 << 24


def first_occurrences(codebook: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the first occurrence of every distinct row of ``codebook`` (K, D); int64."""
    _, inverse = torch.unique(codebook, dim=0, return_inverse=True)
    codes = torch.arange(codebook.shape[0], device=codebook.device)
    first = torch.empty(int(inverse.max()) + 1, dtype=torch.long, device=codebook.device)
    return first.scatter_reduce_(0, inverse, codes, "amin", include_self=False).sort().values


def nearest_indices_reference(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """argmin_k ||x - codebook[k]||^2 along ``dim`` (vectors of size D), ties to the lowest k; int64.

    Computed in float32 as ||x||^2 - 2 x.c + ||c||^2 over row chunks, so memory stays bounded, against
    the distinct codebook rows only (each kept at its first index, in index order): a GEMM may round the
    dot products of identical columns differently, so duplicates would not tie exactly.
    """
    rows = x.detach().movedim(dim, -1)
    flat = rows.reshape(-1, rows.shape[-1]).float()
    cb = codebook.detach().float()
    first = first_occurrences(cb)
    cb = cb[first]
    cb_sq = (cb * cb).sum(1)
    chunk = max(1, CHUNK_ENTRIES // cb.shape[0])
    indices = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, flat.shape[0], chunk):
        part = flat[start:start + chunk]
        dist = (part * part).sum(1, keepdim=True) - 2 * (part @ cb.T) + cb_sq
        # First minimum over distinct rows in index order, mapped back: ties -> lowest original index.
        indices[start:start + chunk] = first[dist.argmin(1)]
    return indices.reshape(rows.shape[:-1])


def nearest_codebook_reference(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``dalle_kernels.nearest_codebook``: (indices int64, sq_dist float32), both shaped
    like ``x`` without ``dim``. ``sq_dist`` is differentiable in ``x`` and ``codebook``."""
    indices = nearest_indices_reference(x, codebook, dim)
    diff = x.movedim(dim, -1).float() - codebook.float()[indices]
    return indices, (diff * diff).sum(-1)
