"""The dVAE's encoder and decoder networks: the OpenAI dVAE structure (the released ``dall_e``
package's architecture), with widths and depths from :class:`~dalle_fast.config.VAEConfig`.

Both are ``num_groups`` groups of ``blocks_per_group`` bottleneck residual blocks. Group ``g`` of
the encoder is ``hidden * 2**g`` channels wide, with a 2x max-pool between groups; the decoder
mirrors it (widest group first, nearest 2x upsampling between groups). Every convolution is
initialized like the released model: weights normal with std ``1 / sqrt(fan_in)``, biases zero.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .config import VAEConfig
from .units import Unit

# Kernel sizes of the residual path of a block: the encoder's ends in a 1x1 conv, the decoder's
# starts with one (as in the released model).
ENCODER_KERNELS = (3, 3, 3, 1)
DECODER_KERNELS = (1, 3, 3, 3)
IMAGE_CHANNELS = 3
STEM_KERNEL = 7


def conv(n_in: int, n_out: int, kernel: int) -> nn.Conv2d:
    """A stride-1 ``kernel`` x ``kernel`` convolution with "same" padding, released-model init."""
    layer = nn.Conv2d(n_in, n_out, kernel, padding=(kernel - 1) // 2)
    nn.init.normal_(layer.weight, std=1 / math.sqrt(n_in * kernel**2))
    nn.init.zeros_(layer.bias)
    return layer


class ResidualBlock(nn.Module):
    """Bottleneck residual block: ``x -> id_path(x) + post_gain * res_path(x)``.

    (B, n_in, H, W) -> (B, n_out, H, W). The identity path is a 1x1 conv when the width changes.
    The residual path is ``relu -> conv`` repeated once per entry of ``kernels``, through
    ``n_out // 4`` channels in between. ``post_gain`` (1 / (number of blocks)^2 in the dVAE)
    keeps the sum of many residual branches near the scale of the identity path at init.
    """

    def __init__(self, n_in: int, n_out: int, kernels: Sequence[int], post_gain: float) -> None:
        super().__init__()
        widths = [n_in] + [n_out // 4] * (len(kernels) - 1) + [n_out]
        layers: list[nn.Module] = []
        for a, b, kernel in zip(widths, widths[1:], kernels):
            layers += [nn.ReLU(), conv(a, b, kernel)]
        self.id_path = conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(*layers)
        self.post_gain = post_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class ResidualGroup(Unit, nn.Sequential):
    """One group of residual blocks (then the resampling to the next group): an ``nn.Sequential``
    (same parameter names) that is a :class:`~dalle_fast.units.Unit` (training may recompute and
    shard it on its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(super().forward, x)


def residual_groups(n_in: int, widths: Sequence[int], blocks: int, kernels: Sequence[int],
                    resample: Callable[[], nn.Module]) -> list[nn.Module]:
    """One :class:`ResidualGroup` per entry of ``widths``: ``blocks`` residual blocks of that width
    (the first one from the previous width, ``n_in`` for the first group), then ``resample()``
    between consecutive groups."""
    post_gain = 1 / (len(widths) * blocks) ** 2
    groups: list[nn.Module] = []
    for g, width in enumerate(widths):
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(ResidualBlock(n_in, width, kernels, post_gain))
            n_in = width
        if g < len(widths) - 1:
            layers.append(resample())
        groups.append(ResidualGroup(*layers))
    return groups


class Encoder(nn.Module):
    """Mapped pixels (B, 3, image_size, image_size) -> logits (B, codebook_size, grid_size, grid_size).

    7x7 conv stem to ``hidden`` channels, the residual groups (``hidden * 2**g`` wide, 2x max-pool
    between groups), then ``relu -> 1x1 conv`` to one logit per code.
    """

    def __init__(self, vae: VAEConfig) -> None:
        super().__init__()
        widths = [vae.hidden * 2**g for g in range(vae.num_groups)]
        self.net = nn.Sequential(
            conv(IMAGE_CHANNELS, vae.hidden, STEM_KERNEL),
            *residual_groups(vae.hidden, widths, vae.blocks_per_group, ENCODER_KERNELS, lambda: nn.MaxPool2d(2)),
            nn.ReLU(),
            conv(widths[-1], vae.codebook_size, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Code vectors (B, codebook_dim, grid_size, grid_size) -> logit-Laplace statistics
    (B, 6, image_size, image_size): channels 0-2 are mu, channels 3-5 are ln b (per RGB channel).

    The released decoder starts with a 1x1 conv from a one-hot over the codes (B, codebook_size,
    g, g) to ``codebook_dim`` channels; ``codebook_conv`` is that conv, and its weight is the
    codebook. Callers contract the (relaxed) one-hot with :attr:`codebook` themselves (a fused
    kernel or a lookup), so :meth:`forward` takes the contraction and adds the conv's bias. Then
    the residual groups (widest first, nearest 2x upsampling between groups) and
    ``relu -> 1x1 conv`` to the statistics.
    """

    def __init__(self, vae: VAEConfig) -> None:
        super().__init__()
        widths = [vae.hidden * 2**g for g in reversed(range(vae.num_groups))]
        self.codebook_conv = conv(vae.codebook_size, vae.codebook_dim, 1)
        self.net = nn.Sequential(
            *residual_groups(vae.codebook_dim, widths, vae.blocks_per_group, DECODER_KERNELS,
                             lambda: nn.Upsample(scale_factor=2, mode="nearest")),
            nn.ReLU(),
            conv(widths[-1], 2 * IMAGE_CHANNELS, 1),
        )

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, codebook_dim): a view of ``codebook_conv.weight`` (D, K, 1, 1)."""
        return self.codebook_conv.weight[:, :, 0, 0].t()

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes + self.codebook_conv.bias[:, None, None])
