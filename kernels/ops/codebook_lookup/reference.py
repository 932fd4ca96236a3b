"""PyTorch reference of ``codebook_lookup``: an embedding gather, D moved to ``dim``."""
import torch
import torch.nn.functional as F


def codebook_lookup_reference(indices: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """indices (...) int, codebook (K, D) -> (...) with D inserted at ``dim`` of the output."""
    return F.embedding(indices.long(), codebook).movedim(-1, dim)
