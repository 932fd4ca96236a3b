"""PyTorch reference of ``fused_linear_cross_entropy``: the full (N, V) logits, then F.cross_entropy."""
import torch
import torch.nn.functional as F


def fused_linear_cross_entropy_reference(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                         bias: torch.Tensor | None, ignore_index: int, reduction: str) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, target)``: hidden (N, D), weight (V, D), bias (V,)
    or None, target (N,) int64. Any float dtype (float64 included, for oracles); a scalar, or (N,)
    for ``reduction="none"``."""
    return F.cross_entropy(F.linear(hidden, weight, bias), target, ignore_index=ignore_index, reduction=reduction)
