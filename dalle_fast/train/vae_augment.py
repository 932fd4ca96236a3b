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

Measured on the demo preset's vae stage; val reconstructions keeping all four attributes (held-out
pairs' images alone in brackets):

- without augmentation (2000 steps): 95.1% (58.5%);
- shift 3 px, composite 0.5 with the partner shifted too, ``gaussian_sigma=0.05`` (2000 steps):
  86.3% (78.0%);
- the same with the partner left in place, as here (2000 steps, seeds 0 / 1): 93.2% / 94.0%
  (93.2% / 93.2%). Every miss is a small triangle: codes shared by objects at several offsets
  leave it blurred into a bell that reads as a diamond;
- runs of 2250 steps whose last 250 train the decoder alone on the argmax tokens of un-augmented
  images (``VAEConfig.decoder_finetune_fraction``, from lr 5e-4), seeds 0 / 1 / 2: 92.8% / 100% /
  100% (82.2% / 100% / 100%); at step 2000, before those 250, seed 0 was at 86.7% and seeds 1 and 2
  at 98.9%;
- the demo preset: 500 such steps from lr 1e-3, on the same 2000 first steps (their checkpoints
  resumed under the preset), seeds 0 / 1 / 2: 99.2% / 100% / 100% (95.8% / 100% / 100%).

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
