"""PyTorch reference of ``gumbel_softmax``: the formula, in float32, materializing everything."""
import torch

from ..._gumbel import gumbel_from_uniform_reference


def soft_gumbel_softmax_reference(logits: torch.Tensor, tau: float, dim: int, noise: torch.Tensor) -> torch.Tensor:
    """y = softmax((logits + g) / tau) along ``dim`` with g = -log(-log(noise)); float32, shape of logits."""
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.softmax((logits.to(compute) + gumbel_from_uniform_reference(noise)) / tau, dim)


def straight_through(y_soft: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact one-hot of argmax(y_soft) in value, gradient of ``y_soft`` (rows holding NaN stay NaN)."""
    one_hot = torch.zeros_like(y_soft).scatter_(dim, y_soft.argmax(dim, keepdim=True), 1.0)
    return one_hot + (y_soft - y_soft.detach())


def gumbel_softmax_reference(logits: torch.Tensor, tau: float, hard: bool, dim: int,
                             noise: torch.Tensor) -> torch.Tensor:
    """Reference of ``dalle_kernels.gumbel_softmax``; ``noise``: uniform (0, 1) samples shaped like logits.

    Returns a tensor shaped and typed like ``logits``.
    """
    y = soft_gumbel_softmax_reference(logits, tau, dim, noise)
    if hard:
        y = straight_through(y, dim)
    return y.to(logits.dtype)
