"""Training-time augmentation of the dVAE's images: the paper's random square crop and horizontal
flip (appendix A.2; ``VAEConfig.augment_crop``, ``augment_flip``), and two settings not in the
paper, ``augment_shift`` and ``augment_composite``, for the shapes data.

The crop is what real images need: each image is cut to a random square (side a uniform share in
[``augment_crop``, 1] of the image's, at a uniform position) and resized back, so the dVAE sees
objects at every scale and offset from the token grid; the flip mirrors half the images. The
transformer's images get the same crop when its token cache is built (:func:`random_crop`, with
``TransformerConfig.augment_crop``; not the flip, whose mirror image would contradict captions
such as "arrow pointing left").

Why the other two: the shapes data has no jitter, so every object sits at the same offset from the token grid
whenever it has that position and size; a small object covers exactly 2x2 token cells, one
quadrant in each. Trained on those images alone, the codebook learns one code per (color, shape,
quadrant) and has none for the quadrants of held-out (color, shape) pairs, so their
reconstructions come back as another shape or color. Translating the batch by a few pixels puts
objects at other offsets from the grid, so codes must describe local pieces of edges and fills
that every shape shares; compositing two images gives each batch more objects (and contexts) to
learn from per update.


What each setting measured on the demo preset's vae stage, with and without the decoder
fine-tuning (``VAEConfig.decoder_finetune_fraction``), is in docs/results.md#demo-dvae.

All draw from torch's global RNG (the token cache's crops from their own seeded generators),
which checkpoints save: resuming stays exact. Under
``torchrun`` every process draws the same shift (their RNG states are equal), so a global batch
moves as one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import VAEConfig


def random_crop(images: torch.Tensor, min_scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, S, S) -> (B, C, S, S): each image cut to its own random square, of side a whole
    number of pixels drawn uniformly from [ceil(min_scale * S), S] at a uniform position, and
    resized back to S x S (bilinear). ``min_scale`` 1 returns ``images`` and draws nothing;
    ``generator``: where the draws come from (default: torch's global RNG)."""
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale: must be in (0, 1], got {min_scale!r}")
    if min_scale == 1:
        return images
    batch, _, size, width = images.shape
    if size != width:
        raise ValueError(f"images: expected square images, got {size}x{width}")
    sides = torch.randint(math.ceil(min_scale * size), size + 1, (batch,), generator=generator)
    corners = (torch.rand(batch, 2, generator=generator) * (size - sides + 1)[:, None]).long()
    crops = [images[b:b + 1, :, y:y + side, x:x + side]
             for b, (side, (y, x)) in enumerate(zip(sides.tolist(), corners.tolist()))]
    return torch.cat([F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False) if c.shape[-1] != size
                      else c for c in crops])


def random_flip(images: torch.Tensor, probability: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): each image mirrored left to right with ``probability``."""
    chosen = (torch.rand(len(images)) < probability).to(images.device)
    return torch.where(chosen[:, None, None, None], images.flip(-1), images)


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
    """The dVAE's training images (B, 3, H, W) in [0, 1], augmented as ``vae`` says: cropped
    (:func:`random_crop`) and flipped (:func:`random_flip`), then shifted (:func:`shift_batch`),
    then composited (:func:`composite`) with the next image of the batch as it was before the
    shift (the last pairs with the first), so a composite holds an object off the token grid
    beside one on it. Settings that are off draw nothing."""
    images = random_crop(images, vae.augment_crop)
    if vae.augment_flip:
        images = random_flip(images)
    return composite(shift_batch(images, vae.augment_shift), images.roll(-1, 0), vae.augment_composite)
