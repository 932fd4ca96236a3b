"""dVAE quality metrics: reconstruction PSNR, codebook usage, and attribute agreement of shapes
images (does the shapes reader see the same size, color, shape and position)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .checks import check_int
from .data import Attributes, read_attributes


class CodebookUsage(NamedTuple):
    """How a set of tokens spreads over the codebook: ``fraction_used`` in (0, 1], the share of
    codes that occur at least once; ``perplexity`` in [1, num_codes], ``exp`` of the entropy (in
    nats) of the codes' empirical distribution, the number of equally used codes it equals."""

    fraction_used: float
    perplexity: float


def check_images(name: str, images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got {getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (B, 3, H, W), got {tuple(images.shape)}")


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, for images in [0, 1] (peak 1):
    ``-10 log10(mean squared error)``.

    reconstruction, target: (B, 3, H, W) float -> (B,) float32 (float64 stays float64). An image
    identical to its target has infinite PSNR and gets ``inf`` (not clamped), so average the
    finite values or the MSE when a batch may hold exact copies.
    """
    check_images("reconstruction", reconstruction)
    check_images("target", target)
    if reconstruction.shape != target.shape:
        raise ValueError(f"reconstruction: shape {tuple(reconstruction.shape)} differs from target "
                         f"{tuple(target.shape)}")
    dtype = torch.promote_types(torch.promote_types(reconstruction.dtype, target.dtype), torch.float32)
    mse = (reconstruction.to(dtype) - target.to(dtype)).square().mean(dim=(1, 2, 3))
    return -10 * torch.log10(mse)


def codebook_usage(tokens: torch.Tensor, num_codes: int) -> CodebookUsage:
    """Usage of ``num_codes`` codes by ``tokens``: an int tensor of any shape, values in
    [0, num_codes), at least one element. See :class:`CodebookUsage`."""
    check_int("num_codes", num_codes, 1)
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex() \
            or tokens.dtype == torch.bool:
        raise TypeError(f"tokens: expected an integer tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}")
    if tokens.numel() == 0:
        raise ValueError("tokens: is empty; usage needs at least one token")
    flat = tokens.reshape(-1).long()
    if flat.min() < 0 or flat.max() >= num_codes:
        raise ValueError(f"tokens: values must lie in [0, {num_codes}), got the range "
                         f"[{flat.min().item()}, {flat.max().item()}]")
    counts = torch.bincount(flat, minlength=num_codes).double()
    p = counts[counts > 0] / flat.numel()
    entropy = -(p * p.log()).sum().item()
    return CodebookUsage(fraction_used=len(p) / num_codes, perplexity=math.exp(entropy))


def attribute_agreement(images: torch.Tensor, attributes: Sequence[Attributes]) -> float:
    """Fraction of ``images`` (B, 3, S, S) in [0, 1] whose attributes, as the shapes reader
    (:func:`dalle_fast.data.read_attributes`) sees them, equal ``attributes[i]`` in all four
    fields (size, color, shape, position). An image with no visible object counts as a miss."""
    check_images("images", images)
    if len(attributes) != len(images):
        raise ValueError(f"attributes: has {len(attributes)} records for {len(images)} images")
    if len(images) == 0:
        raise ValueError("images: is empty; agreement needs at least one image")
    for i, record in enumerate(attributes):
        if not isinstance(record, Attributes):
            raise TypeError(f"attributes[{i}]: expected a dalle_fast.data.Attributes, got {type(record).__name__}")
    return sum(read_attributes(image) == record for image, record in zip(images, attributes)) / len(images)
