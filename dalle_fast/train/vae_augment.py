"""Training-time augmentation of the dVAE's images (``VAEConfig.augment_shift`` and
``augment_composite``; not in the paper).

Why: the shapes data has no jitter, so every object sits at the same offset from the token grid
whenever it has that position and size; a small object covers exactly 2x2 token cells, one
quadrant in each. Trained on those images alone, the codebook learns one code per (color, shape,
quadrant) and has none for the quadrants of held-out (color, shape) pairs, so their
reconstructions come back as another shape or color. Translating the batch by a few pixels puts
objects at other offsets from the grid, so codes must describe local pieces of edges and fills
that every shape shares; compositing two images gives each batch more objects (and contexts) to
learn from per update.

What each setting measured on the demo preset's vae stage, with and without the decoder
fine-tuning (``VAEConfig.decoder_finetune_fraction``), is in docs/results.md#demo-dvae.

Both draw from torch's global RNG, which checkpoints save: resuming stays exact. Under
``torchrun`` every process draws the same shift (their RNG states are equal), so a global batch
moves as one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import VAEConfig


def shift_batch(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): the whole batch translated by one offset (dy, dx) drawn
    uniformly from [-max_shift, max_shift]^2; pixels shifted in from outside repeat the edge."""
    if max_shift == 0:
        return images
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
    height, width = images.shape[-2:]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    return padded[..., dy:dy + height, dx:dx + width]


def composite(images: torch.Tensor, partners: torch.Tensor, probability: float) -> torch.Tensor:
    """(B, C, H, W), (B, C, H, W) -> (B, C, H, W): each image, with ``probability``, replaced by the
    pixel-wise minimum of itself and its partner. On a white background that draws both images'
    objects (darker where they overlap), so it suits data of objects on white, like shapes, not
    photographs."""
    if probability == 0:
        return images
    chosen = (torch.rand(len(images)) < probability).to(images.device)
    return torch.where(chosen[:, None, None, None], torch.minimum(images, partners), images)


def augment(images: torch.Tensor, vae: VAEConfig) -> torch.Tensor:
    """The dVAE's training images (B, 3, H, W) in [0, 1], augmented as ``vae`` says: shifted
    (:func:`shift_batch`), then composited (:func:`composite`) with the next image of the batch
    (the last pairs with the first) left where it was, so a composite holds an object off the
    token grid beside one on it."""
    return composite(shift_batch(images, vae.augment_shift), images.roll(-1, 0), vae.augment_composite)
