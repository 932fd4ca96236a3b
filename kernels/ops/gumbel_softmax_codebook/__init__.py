"""``gumbel_softmax_codebook``: argument checks and backend dispatch."""
import torch

from ..._checks import check_codebook, check_same_device
from ..._gumbel import draw_seed, uniform_noise
from ...backend import backend_for
from ..gumbel_softmax import check_gumbel_args
from .kernel import GumbelSoftmaxCodebookFunction
from .reference import gumbel_softmax_codebook_reference


def gumbel_softmax_codebook(logits: torch.Tensor, codebook: torch.Tensor, tau: float = 1.0, hard: bool = False,
                            dim: int = -1, *, noise: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """``gumbel_softmax(logits, tau, hard, dim)`` contracted with ``codebook`` along ``dim``, fused.

    logits (.., K at dim, ..), codebook (K, D) -> (.., D at dim, ..), e.g. ``(B, K, H, W)`` with
    ``dim=1`` -> ``(B, D, H, W)``; dtype ``torch.promote_types(logits.dtype, codebook.dtype)``.
    The (.., K) soft one-hot is never stored: the kernel keeps an online softmax and a weighted
    sum of codebook rows, and backward recomputes it from logits and the same noise. Gradients
    for logits and codebook; ``hard=True`` returns the argmax's codebook row (straight-through).
    ``noise`` / ``generator`` as in ``gumbel_softmax`` (the same seed gives the same noise).
    """
    tau, dim = check_gumbel_args(logits, tau, hard, dim, noise, generator)
    check_codebook(codebook)
    check_same_device(logits=logits, codebook=codebook)
    if codebook.shape[0] != logits.shape[dim]:
        raise ValueError(f"codebook: has {codebook.shape[0]} rows, but logits has K={logits.shape[dim]} "
                         f"categories along dim {dim}")
    seed = draw_seed(generator) if noise is None else 0
    if backend_for(logits) == "triton":
        if not torch.is_grad_enabled():  # no graph will be built: keep the forward from saving for a backward
            logits, codebook = logits.detach(), codebook.detach()
        return GumbelSoftmaxCodebookFunction.apply(logits, codebook, tau, hard, dim, noise, seed)
    if noise is None:
        noise = uniform_noise(logits.shape, seed, logits.device)
    return gumbel_softmax_codebook_reference(logits, codebook, tau, hard, dim, noise)
