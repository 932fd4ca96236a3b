"""PyTorch reference of ``nearest_codebook``: squared distances chunk by chunk, then argmin."""
import torch

# Rows per chunk are chosen so one chunk's distance block holds about this many entries.
CHUNK_ENTRIES = 1 << 24


def nearest_indices_reference(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """argmin_k ||x - codebook[k]||^2 along ``dim`` (vectors of size D), ties to the lowest k; int64.

    Computed in float32 as ||x||^2 - 2 x.c + ||c||^2 over row chunks, so memory stays bounded.
    """
    rows = x.detach().movedim(dim, -1)
    flat = rows.reshape(-1, rows.shape[-1]).float()
    cb = codebook.detach().float()
    cb_sq = (cb * cb).sum(1)
    chunk = max(1, CHUNK_ENTRIES // cb.shape[0])
    indices = torch.empty(flat.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, flat.shape[0], chunk):
        part = flat[start:start + chunk]
        dist = (part * part).sum(1, keepdim=True) - 2 * (part @ cb.T) + cb_sq
        indices[start:start + chunk] = dist.argmin(1)  # first minimum: ties -> lowest index
    return indices.reshape(rows.shape[:-1])


def nearest_codebook_reference(x: torch.Tensor, codebook: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``dalle_kernels.nearest_codebook``: (indices int64, sq_dist float32), both shaped
    like ``x`` without ``dim``. ``sq_dist`` is differentiable in ``x`` and ``codebook``."""
    indices = nearest_indices_reference(x, codebook, dim)
    diff = x.movedim(dim, -1).float() - codebook.float()[indices]
    return indices, (diff * diff).sum(-1)
