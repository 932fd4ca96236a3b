"""The discrete VAE (docs/design.md#dvae): images <-> a grid of codebook tokens.

Training relaxes the encoder's categorical distribution with the Gumbel-softmax and feeds the
decoder the relaxed code vector, ``dalle_kernels.gumbel_softmax_codebook`` fusing the sample with
its contraction against the codebook. Encoding to tokens is the argmax of the logits; decoding
looks the tokens up in the codebook. The codebook is the weight of the decoder's first 1x1 conv.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

import dalle_kernels as dk

from .config import Config
from .dvae_loss import gaussian_nll, kl_to_uniform, logit_laplace_nll, map_pixels, marginal_kl_to_uniform, unmap_pixels
from .dvae_nets import IMAGE_CHANNELS, Decoder, Encoder


class VAEOutput(NamedTuple):
    """What :meth:`DiscreteVAE.forward` and :meth:`DiscreteVAE.decoder_forward` return.

    loss: scalar. From ``forward``, the negative ELBO with its KL weighted by ``kl_weight`` (the
    paper's beta), per pixel-channel (the likelihood is ``VAEConfig.reconstruction``'s), plus the
    codebook usage term: ``recon_loss + kl_weight * latents_per_pixel * kl + usage_weight *
    marginal_kl`` (see :attr:`DiscreteVAE.latents_per_pixel` and ``VAEConfig.usage_weight``); from
    ``decoder_forward``, ``recon_loss`` alone. recon_loss: scalar, the negative log-likelihood of
    the mapped pixels (logit-Laplace, or Gaussian without its constant), mean per pixel-channel,
    in nats. kl: scalar, KL of the encoder's softmax to the uniform prior, mean per latent
    position, in nats. marginal_kl: scalar, KL of the batch's mean softmax to the uniform prior
    (0 when every code is used equally on average), in nats. logits: (B, K, g, g).
    reconstruction: (B, 3, H, W) in [0, 1], the decoded image.
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    kl: torch.Tensor
    marginal_kl: torch.Tensor
    logits: torch.Tensor
    reconstruction: torch.Tensor


class DiscreteVAE(nn.Module):
    """The OpenAI-structured dVAE of ``config.vae`` (see :mod:`dalle_fast.dvae_nets`).

    Images are (B, 3, image_size, image_size) floats in [0, 1]; tokens (B, grid_size, grid_size)
    integers in [0, codebook_size).
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        if not isinstance(config, Config):
            raise TypeError(f"config: expected a dalle_fast.config.Config, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config.vae)
        self.decoder = Decoder(config.vae)

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, codebook_dim): a view of the decoder's first 1x1 conv weight
        (``weight[:, :, 0, 0].t()``); writing to either changes both."""
        return self.decoder.codebook

    @property
    def latents_per_pixel(self) -> float:
        """Latent positions per pixel-channel, ``g**2 / (3 H W)``: the factor that puts the mean KL
        per latent on the scale of the mean likelihood per pixel-channel, so that ``kl_weight`` is
        the beta of the ELBO summed over the whole image, as in the paper (beta = 6.6)."""
        vae = self.config.vae
        return vae.grid_size**2 / (IMAGE_CHANNELS * vae.image_size**2)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> encoder logits (B, K, g, g)."""
        self._check_images(images)
        return self.encoder(map_pixels(images, self.config.vae.logit_laplace_eps))

    def forward(self, images: torch.Tensor, tau: float, kl_weight: float, hard: bool = False, *,
                noise: torch.Tensor | None = None) -> VAEOutput:
        """One training evaluation: encode, Gumbel-softmax relaxation at temperature ``tau``
        (``hard``: straight-through one-hot), decode, and the loss.

        images (B, 3, H, W) in [0, 1]. ``noise``: optional uniform (0, 1) samples (B, K, g, g)
        for the Gumbel noise (default: drawn from torch's RNG). See :class:`VAEOutput`.
        """
        if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)):
            raise TypeError(f"kl_weight: expected a real number, got {type(kl_weight).__name__}")
        if not (math.isfinite(kl_weight) and kl_weight >= 0):
            raise ValueError(f"kl_weight: must be finite and >= 0, got {kl_weight!r}")
        logits = self.logits(images)
        codes = dk.gumbel_softmax_codebook(logits, self.codebook, tau, hard, dim=1, noise=noise)
        return self._output(images, logits, codes, kl_weight * self.latents_per_pixel, self.config.vae.usage_weight)

    def decoder_forward(self, images: torch.Tensor) -> VAEOutput:
        """One decoder fine-tuning evaluation (``VAEConfig.decoder_finetune_fraction``): the
        encoder frozen (no gradient reaches it), the decoder fed the codes of the argmax tokens,
        exactly what :meth:`decode` feeds it, and the loss the reconstruction term alone.
        images (B, 3, H, W) in [0, 1]. See :class:`VAEOutput`."""
        with torch.no_grad():
            logits = self.logits(images)
        codes = dk.codebook_lookup(logits.argmax(dim=1), self.codebook, dim=1)
        return self._output(images, logits, codes, 0.0, 0.0)

    def _output(self, images: torch.Tensor, logits: torch.Tensor, codes: torch.Tensor, kl_scale: float,
                usage_weight: float) -> VAEOutput:
        """Decode ``codes`` (B, D, g, g) and score them against ``images``: the loss is the
        reconstruction term plus ``kl_scale`` times the KL and ``usage_weight`` times the marginal
        KL of ``logits`` (B, K, g, g)."""
        stats = self.decoder(codes)
        vae = self.config.vae
        target = map_pixels(images, vae.logit_laplace_eps)
        if vae.reconstruction == "gaussian":
            recon_loss = gaussian_nll(stats, target, vae.gaussian_sigma).mean()
        else:
            recon_loss = logit_laplace_nll(stats, target).mean()
        kl = kl_to_uniform(logits, dim=1).mean()
        marginal_kl = marginal_kl_to_uniform(logits, dim=1)
        loss = recon_loss + kl_scale * kl + usage_weight * marginal_kl
        return VAEOutput(loss, recon_loss, kl, marginal_kl, logits, self._reconstruction(stats))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> tokens (B, g, g) int64, the argmax of the logits."""
        return self.logits(images).argmax(dim=1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, g, g) int32/int64 in [0, K) -> images (B, 3, H, W) in [0, 1]."""
        self._check_tokens(tokens)
        return self._reconstruction(self.decoder(dk.codebook_lookup(tokens, self.codebook, dim=1)))

    def _reconstruction(self, stats: torch.Tensor) -> torch.Tensor:
        """Decoder statistics (B, 6, H, W) -> image (B, 3, H, W) in [0, 1]: unmapped sigmoid(mu)."""
        return unmap_pixels(torch.sigmoid(stats[:, :IMAGE_CHANNELS].float()), self.config.vae.logit_laplace_eps)

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images: expected a float tensor, got {getattr(images, 'dtype', type(images).__name__)}")
        side = self.config.vae.image_size
        if images.ndim != 4 or images.shape[1:] != (IMAGE_CHANNELS, side, side):
            raise ValueError(f"images: expected shape (B, {IMAGE_CHANNELS}, {side}, {side}), "
                             f"got {tuple(images.shape)}")
        if images.numel():
            low, high = images.detach().aminmax()
            if not (low >= 0 and high <= 1):  # also catches NaN
                raise ValueError(f"images: values must lie in [0, 1], got the range [{low.item()}, {high.item()}]")

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"tokens: expected an int32/int64 tensor, got "
                            f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        side, size = self.config.vae.grid_size, self.config.vae.codebook_size
        if tokens.ndim != 3 or tokens.shape[1:] != (side, side):
            raise ValueError(f"tokens: expected shape (B, {side}, {side}), got {tuple(tokens.shape)}")
        if tokens.numel() and not (tokens.min() >= 0 and tokens.max() < size):
            raise ValueError(f"tokens: values must lie in [0, {size}), got the range "
                             f"[{tokens.min().item()}, {tokens.max().item()}]")
