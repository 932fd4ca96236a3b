"""PyTorch reference of ``gumbel_softmax_codebook``: the soft one-hot, materialized, times the codebook."""
import torch

from ..gumbel_softmax.reference import soft_gumbel_softmax_reference, straight_through


def contract_codebook(weights: torch.Tensor, codebook: torch.Tensor, dim: int) -> torch.Tensor:
    """``weights`` (.., K at dim, ..) times ``codebook`` (K, D) -> (.., D at dim, ..), in weights' dtype."""
    return (weights.movedim(dim, -1) @ codebook.to(weights.dtype)).movedim(-1, dim)


def gumbel_softmax_codebook_reference(logits: torch.Tensor, codebook: torch.Tensor, tau: float, hard: bool,
                                      dim: int, noise: torch.Tensor) -> torch.Tensor:
    """Reference of ``dalle_kernels.gumbel_softmax_codebook``.

    logits (.., K at dim, ..), codebook (K, D), noise uniform (0, 1) shaped like logits.
    Returns (.., D at dim, ..) in ``torch.promote_types(logits.dtype, codebook.dtype)``.
    """
    y = soft_gumbel_softmax_reference(logits, tau, dim, noise)
    if hard:
        y = straight_through(y, dim)
    return contract_codebook(y, codebook, dim).to(torch.promote_types(logits.dtype, codebook.dtype))
