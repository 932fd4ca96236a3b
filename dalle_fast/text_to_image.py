"""Text to images with a trained run: sample image tokens with the transformer, decode them with
the dVAE, rerank the samples by CLIP score (Ramesh et al. 2021, section 2.5).

Sampling is repeatable: ``seed`` seeds one generator on the run's device that the batches draw
from in turn, so the same prompt, seed, settings and ``batch_size`` give the same images.

The reranker (:mod:`dalle_fast.rerankers`) is the run's CLIP, or a pretrained open_clip model:
the config's ``clip.reranker``, or the ``clip``/``clip_weights`` arguments of :meth:`TextToImage.from_run`.
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
from .rerankers import Reranker, RunCLIP
from .run import (
    RUN_FLAG,
    UsageError,
    autocast,
    load_dalle,
    load_reranker,
    load_tokenizer,
    load_vae,
    open_run,
    pick_device,
    reranker_config,
)
from .sampling import check_sampling, sample_image_tokens
from .tokenizer import CaptionTokenizer


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
    transformer, and its ``reranker`` (:class:`~dalle_fast.rerankers.Reranker`): the run's CLIP
    when the clip stage was trained, or a pretrained open_clip model; None when there is neither
    (:meth:`generate` then cannot rerank). ``clip`` may be given as a run's
    :class:`~dalle_fast.clip.CLIP` (scored over ``tokenizer``) or as any reranker. Models are
    frozen, in eval mode, on ``device``."""

    def __init__(self, config: Config, tokenizer: CaptionTokenizer, vae: DiscreteVAE, dalle: DALLE,
                 clip: CLIP | Reranker | None, device: torch.device) -> None:
        self.config, self.tokenizer, self.device = config, tokenizer, device
        self.vae, self.dalle = (m.to(device).eval().requires_grad_(False) for m in (vae, dalle))
        reranker = RunCLIP(clip, tokenizer) if isinstance(clip, CLIP) else clip
        self.reranker = None if reranker is None else reranker.to(device)

    @property
    def clip(self) -> Reranker | None:
        """The reranker (None without one); the name of earlier releases."""
        return self.reranker

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None, *,
                 clip: str | None = None, clip_weights: str | None = None) -> TextToImage:
        """Load the run in ``run_dir`` onto ``device`` (default: the GPU if there is one).
        ``clip``: the reranker instead of the config's ``clip.reranker``: ``"run"`` (the run's
        CLIP) or ``"open_clip:MODEL"`` with its local weights file ``clip_weights``. A missing
        directory, config, tokenizer, vae or dalle checkpoint, or an unusable reranker, raises
        ``UsageError`` saying what to do."""
        run_dir, config = open_run(run_dir, RUN_FLAG)
        config = reranker_config(config, clip, clip_weights)
        tokenizer = load_tokenizer(config, run_dir, RUN_FLAG)
        vae, dalle = load_vae(config, run_dir, RUN_FLAG), load_dalle(config, run_dir, RUN_FLAG)
        reranker = load_reranker(config, run_dir, tokenizer, RUN_FLAG)
        return cls(config, tokenizer, vae, dalle, reranker, pick_device() if device is None else torch.device(device))

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

    def score(self, prompt: str, images: torch.Tensor) -> torch.Tensor:
        """Reranker (CLIP) scores (num,) float32 on the CPU of images (num, 3, H, W) in [0, 1]
        against ``prompt`` (higher = better match). ``UsageError`` when the run has no reranker."""
        if self.reranker is None:
            raise UsageError("the run has no clip checkpoint, so images cannot be scored: train that stage "
                             "first (--stage clip), or rerank with a pretrained CLIP (--clip open_clip:MODEL "
                             "--clip-weights FILE)")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
        return self.reranker.score(prompt, images)

    def generate(self, prompt: str, num: int, keep: int, **sample_kwargs: Any) -> GenerationResult:
        """Sample ``num`` images for ``prompt`` (``sample_kwargs`` as :meth:`sample`) and keep the
        ``keep`` best by reranker score, best first; without one, the first ``keep`` (a warning is printed)."""
        check_int("num", num, 1)
        check_int("keep", keep, 1, num)
        images = self.sample(prompt, num, **sample_kwargs)
        if self.reranker is None:
            print(f"warning: the run has no clip checkpoint: keeping the first {keep} of {num} samples without "
                  "reranking (train the clip stage, or pass --clip open_clip:MODEL --clip-weights FILE, to rerank)",
                  file=sys.stderr)
            scores = torch.full((num,), math.nan)
            order = torch.arange(num)
        else:
            scores = self.score(prompt, images)
            order = scores.argsort(descending=True, stable=True)
        best = order[:keep]
        return GenerationResult(images[best], scores[best], images, scores)
