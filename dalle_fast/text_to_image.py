"""Text to images with a trained run: sample image tokens with the transformer, decode them with
the dVAE, rerank the samples by CLIP score (Ramesh et al. 2021, section 2.5).

Sampling is repeatable: ``seed`` seeds one generator on the run's device that the batches draw
from in turn, so the same prompt, seed, settings and ``batch_size`` give the same images.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, NamedTuple

import torch

from .checks import check_int
from .clip import CLIP
from .config import Config
from .dvae import DiscreteVAE
from .model import DALLE
from .run import (
    RUN_FLAG,
    UsageError,
    autocast,
    has_stage,
    load_clip,
    load_dalle,
    load_tokenizer,
    load_vae,
    open_run,
    pick_device,
)
from .sampling import check_sampling, sample_image_tokens
from .tokenizer import CaptionTokenizer

SCORE_BATCH = 64  # images per CLIP forward when scoring


class GenerationResult(NamedTuple):
    """``images`` (keep, 3, H, W) best first and their CLIP ``scores`` (keep,); ``all_images``
    (num, 3, H, W) and ``all_scores`` (num,) in sampling order. Without a CLIP the kept images are
    the first ``keep`` and every score is NaN."""

    images: torch.Tensor
    scores: torch.Tensor
    all_images: torch.Tensor
    all_scores: torch.Tensor


class TextToImage:
    """Everything generation needs from a run directory: its config, tokenizer, dVAE and
    transformer, and its CLIP when the clip stage was trained (else ``clip`` is None and
    :meth:`generate` cannot rerank). Models are frozen, in eval mode, on ``device``."""

    def __init__(self, config: Config, tokenizer: CaptionTokenizer, vae: DiscreteVAE, dalle: DALLE,
                 clip: CLIP | None, device: torch.device) -> None:
        self.config, self.tokenizer, self.device = config, tokenizer, device
        self.vae, self.dalle = (m.to(device).eval().requires_grad_(False) for m in (vae, dalle))
        self.clip = None if clip is None else clip.to(device).eval().requires_grad_(False)

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None) -> TextToImage:
        """Load the run in ``run_dir`` onto ``device`` (default: the GPU if there is one). A
        missing directory, config, tokenizer, vae or dalle checkpoint raises ``UsageError``
        saying what to do."""
        run_dir, config = open_run(run_dir, RUN_FLAG)
        tokenizer = load_tokenizer(config, run_dir, RUN_FLAG)
        vae, dalle = load_vae(config, run_dir, RUN_FLAG), load_dalle(config, run_dir, RUN_FLAG)
        clip = load_clip(config, run_dir, RUN_FLAG) if has_stage(run_dir, "clip") else None
        return cls(config, tokenizer, vae, dalle, clip, pick_device() if device is None else torch.device(device))

    @property
    def image_size(self) -> int:
        """Side of the generated images in px."""
        return self.config.image_size

    def prime_tokens(self, prime_image: torch.Tensor | None, prime_rows: int) -> torch.Tensor | None:
        """The top ``prime_rows`` token rows of ``prime_image`` (3, H, W) in [0, 1], as the first
        (1, prime_rows * grid_size) image tokens; None when ``prime_rows`` is 0 and no image is given."""
        grid = self.config.grid_size
        check_int("prime_rows", prime_rows, 0, grid)
        if prime_image is None:
            if prime_rows:
                raise ValueError(f"prime_image: needed for prime_rows {prime_rows}")
            return None
        size = self.image_size
        if not isinstance(prime_image, torch.Tensor) or not prime_image.is_floating_point() \
                or prime_image.shape != (3, size, size):
            raise ValueError(f"prime_image: expected a float tensor (3, {size}, {size}) in [0, 1], got "
                             f"{getattr(prime_image, 'shape', type(prime_image).__name__)}")
        if not prime_rows:
            raise ValueError(f"prime_rows: the number of token rows of prime_image to keep, in [1, {grid}], got 0")
        tokens = self.vae.encode(prime_image[None].to(self.device))  # (1, grid, grid)
        return tokens[:, :prime_rows].reshape(1, -1)

    @torch.no_grad()
    def sample(self, prompt: str, num: int, *, temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
               prime_image: torch.Tensor | None = None, prime_rows: int = 0, batch_size: int = 64,
               progress: bool = False) -> torch.Tensor:
        """``num`` images (num, 3, H, W) in [0, 1] on the CPU for ``prompt``, sampled in batches of
        ``batch_size``. ``prime_image`` (3, H, W) and ``prime_rows``: every sample keeps the
        image's top ``prime_rows`` token rows and completes the rest."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
        check_int("num", num, 1)
        check_int("batch_size", batch_size, 1)
        check_sampling(temperature, top_k)
        prime = self.prime_tokens(prime_image, prime_rows)
        text = self.tokenizer.encode([prompt]).to(self.device)
        generator = torch.Generator(self.device).manual_seed(seed)
        grid, images = self.config.grid_size, []
        with autocast(self.config.train.precision, self.device):
            for start in range(0, num, batch_size):
                count = min(batch_size, num - start)
                tokens = sample_image_tokens(self.dalle, text.expand(count, -1), temperature=temperature, top_k=top_k,
                                             generator=generator, progress=progress,
                                             prime=None if prime is None else prime.expand(count, -1))
                images.append(self.vae.decode(tokens.view(count, grid, grid)).float().cpu())
        return torch.cat(images)

    @torch.no_grad()
    def score(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """CLIP scores (num,) float32 on the CPU of images (num, 3, H, W) in [0, 1] against
        ``prompt`` (higher = better match). ``UsageError`` when the run has no CLIP."""
        if self.clip is None:
            raise UsageError("the run has no clip checkpoint, so images cannot be scored: train that stage "
                             "first (--stage clip)")
        text = self.tokenizer.encode([prompt]).to(self.device)
        return torch.cat([self.clip.score(text, chunk.to(self.device)).float().cpu()
                          for chunk in images.split(SCORE_BATCH)])

    def generate(self, prompt: str, num: int, keep: int, **sample_kwargs: Any) -> GenerationResult:
        """Sample ``num`` images for ``prompt`` (``sample_kwargs`` as :meth:`sample`) and keep the
        ``keep`` best by CLIP score, best first; without a CLIP, the first ``keep`` (a warning is printed)."""
        check_int("num", num, 1)
        check_int("keep", keep, 1, num)
        images = self.sample(prompt, num, **sample_kwargs)
        if self.clip is None:
            print(f"warning: the run has no clip checkpoint: keeping the first {keep} of {num} samples without "
                  "reranking (train the clip stage to rerank)", file=sys.stderr)
            scores = torch.full((num,), math.nan)
            order = torch.arange(num)
        else:
            scores = self.score(prompt, images)
            order = scores.argsort(descending=True, stable=True)
        best = order[:keep]
        return GenerationResult(images[best], scores[best], images, scores)
