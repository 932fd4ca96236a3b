"""The dVAE objective's pieces (Ramesh et al. 2021, section 2.1 and appendix A.3): the pixel
mapping, the logit-Laplace reconstruction likelihood, and the KL to the uniform prior.

Pixels in [0, 1] are squeezed into [eps, 1 - eps] by :func:`map_pixels` before the encoder sees
them and before the likelihood scores them, so that the logit-Laplace density, whose support is
(0, 1), stays finite on black and white pixels.
"""
from __future__ import annotations

import math

import torch


def map_pixels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(1 - 2 eps) x + eps``: [0, 1] -> [eps, 1 - eps], any shape."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]; any shape."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


def logit_laplace_nll(stats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log density, in nats, of ``target`` under the logit-Laplace distribution.

    stats (B, 2C, H, W): mu in channels [0, C), ln b in [C, 2C); target (B, C, H, W) in (0, 1)
    (mapped pixels). Returns (B, C, H, W), float32 (float64 stays float64):
    ``ln(2 b) + ln x + ln(1 - x) + |logit(x) - mu| / b``, the density
    ``exp(-|logit(x) - mu| / b) / (2 b x (1 - x))``.
    """
    dtype = torch.promote_types(stats.dtype, torch.float32)
    mu, log_b = stats.to(dtype).chunk(2, dim=1)
    x = target.to(dtype)
    log_x, log_1mx = torch.log(x), torch.log1p(-x)
    return math.log(2) + log_b + log_x + log_1mx + (log_x - log_1mx - mu).abs() * torch.exp(-log_b)


def gaussian_nll(stats: torch.Tensor, target: torch.Tensor, sigma: float) -> torch.Tensor:
    """Negative log density, in nats and without its constant ``ln(sigma sqrt(2 pi))``, of
    ``target`` under a Gaussian of fixed standard deviation ``sigma`` around ``sigmoid(mu)``:
    ``(sigmoid(mu) - x)**2 / (2 sigma**2)``. stats (B, 2C, H, W) with mu in channels [0, C) (the
    ln b channels are not used); target (B, C, H, W) mapped pixels. Returns (B, C, H, W), float32
    (float64 stays float64)."""
    dtype = torch.promote_types(stats.dtype, torch.float32)
    mu = stats[:, :target.shape[1]].to(dtype)
    return (torch.sigmoid(mu) - target.to(dtype)).square() / (2 * sigma**2)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(softmax(logits) || uniform over the K codes), in nats, at every position:
    ``sum_k q_k ln q_k + ln K``. logits (.., K at dim, ..) -> that shape without ``dim``,
    float32 (float64 stays float64). 0 for uniform logits, ln K for a one-hot."""
    log_q = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim)
    return (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])


def marginal_kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(mean softmax || uniform), in nats: the code distribution of the whole batch (the
    encoder's softmax averaged over every position but ``dim``) against the uniform prior.
    logits (.., K at dim, ..) -> scalar, float32 (float64 stays float64). 0 when the batch uses
    every code equally on average, ln K when every position puts all its mass on one code."""
    q = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim)
    marginal = q.transpose(0, dim).flatten(1).mean(1)
    return torch.xlogy(marginal, marginal).sum() + math.log(logits.shape[dim])
