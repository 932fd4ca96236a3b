"""Stage ``dalle``: train the DALL-E transformer (:mod:`dalle_fast.model`) on the run's captions
and the image tokens of its frozen dVAE, on the shared loop of :mod:`.loop` (AdamW with warmup +
cosine, gradient clipping, bf16 autocast on a GPU, cadence, checkpoints, exact resume and DDP
are described there).

The images are encoded once into the token cache (:mod:`.tokens`; the vae stage must have run).
Each training sample's caption (one of its item's captions) and BPE dropout
(``transformer.bpe_dropout``) are drawn from a torch generator seeded by the run seed and the
sample's position in the train data stream: a resumed run draws the same, and so does every
slice of a batch split over torchrun processes or into accumulation micro-batches. Weight decay
spares vectors (biases, norms).

Train records hold loss, text_loss and image_loss; val records the same over the val split
(first caption, no dropout), ``image_bits_per_token`` (image_loss / ln 2) and, for the shapes
data, the share of sampled images whose four attributes the shapes reader finds as the prompt
says (``samples_correct``; ``samples_correct_heldout`` for held-out (color, shape) pairs).
Every eval samples ``SAMPLES_PER_PROMPT`` images for each of a fixed list of val captions
(shapes: ``HELD_IN_PROMPTS`` of held-in pairs and ``HELD_OUT_PROMPTS`` of held-out ones; user
data: the first ``HELD_IN_PROMPTS + HELD_OUT_PROMPTS`` val items) with top-k sampling from a
fixed seed, decodes them with the dVAE and saves ``dalle_samples_<step>.png`` and
``dalle_samples_latest.png``: a row per prompt, its val image first, then its samples.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..config import Config
from ..data.shapes_spec import Attributes
from ..data.splits import TrainData
from ..dvae import DiscreteVAE
from ..grid import save_grid
from ..metrics import attribute_agreement
from ..model import DALLE, DALLEOutput
from ..run import autocast, load_tokenizer, load_vae, pick_device
from ..sampling import default_temperature, default_top_k, sample_image_tokens
from ..tokenizer import CaptionTokenizer
from ..validation import transformer_losses
from .loop import StageTrainer
from .optim import decay_matrices_only
from .tokens import CaptionedTokens, TokenCache, token_cache, token_data

STAGE = "dalle"
HELD_IN_PROMPTS, HELD_OUT_PROMPTS = 6, 2  # prompts of the sample grid (user data: all 8 from the first val items)
SAMPLES_PER_PROMPT = 4
CAPTION_STREAM = 0x5EED_CA9  # tells the caption generators' seeds apart from other streams of the run seed


def train_dalle_stage(config: Config, run_dir: Path, data: TrainData, resume: bool) -> str:
    """Train the transformer of ``config`` on ``data`` to ``config.transformer.optim.steps``
    steps in ``run_dir`` (which holds ``config``, the tokenizer and a vae checkpoint). ``resume``:
    continue from the stage's latest checkpoint there, if any. Returns a summary line."""
    tokenizer = load_tokenizer(config, run_dir)
    device = pick_device()
    vae = load_vae(config, run_dir).to(device).requires_grad_(False)
    cache = token_cache(config, run_dir, data, vae, config.transformer.optim.batch_size,
                        autocast(config.train.precision, device))
    trainer = DALLETrainer(config, run_dir, data, tokenizer, vae, cache)
    trainer.run(resume)
    final = trainer.last_record("val")
    tokens = f"token cache {'built' if cache.built else 'reused'} in {cache.seconds:.1f} s"
    line = (f"{trainer.step}/{config.transformer.optim.steps} steps, {final['seconds']:.1f} s of training "
            f"({tokens}); val loss {final['loss']:.3f}, image {final['image_bits_per_token']:.3f} bits/token")
    shown = {"samples_correct": "samples right on all four attributes", "samples_correct_heldout": "held-out pairs"}
    return ", ".join([line, *(f"{label} {100 * final[key]:.1f}%" for key, label in shown.items() if key in final)])


class Prompts(NamedTuple):
    """The fixed prompts of the sample grid: val ``indices``, their ``captions``, and which of
    them show a held-out (color, shape) pair (``heldout``; shapes data only, else None)."""

    indices: list[int]
    captions: list[str]
    heldout: list[bool] | None


class DALLETrainer(StageTrainer):
    """The stage-dalle run: a :class:`~dalle_fast.model.DALLE` on (caption, image tokens) batches."""

    stage = STAGE
    shown = ("loss", "text_loss", "image_loss")

    def __init__(self, config: Config, run_dir: Path, data: TrainData, tokenizer: CaptionTokenizer,
                 vae: DiscreteVAE, cache: TokenCache) -> None:
        self.tokenizer, self.vae, self.images = tokenizer, vae, data.val
        super().__init__(config, run_dir, token_data(data, cache), config.transformer.optim)
        self.prompts = sample_prompts(self.data.val.captions, self.data.val_attributes, config.data.holdout)

    def build_model(self) -> DALLE:
        return DALLE(self.config)

    def parameters(self) -> list[dict[str, Any]]:
        return decay_matrices_only(self.model)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor], settings: NamedTuple) -> DALLEOutput:
        image, indices = batch
        captions = [self.data.train.captions[i] for i in indices.tolist()]
        text = training_text(self.tokenizer, captions, self.batch_start, self.config.train.seed,
                             self.config.transformer.bpe_dropout)
        return self.model(text.to(self.device, non_blocking=True), image.to(self.device, non_blocking=True))

    def train_metrics(self, output: DALLEOutput) -> dict[str, float]:
        return {"loss": output.loss.item(), "text_loss": output.text_loss.item(),
                "image_loss": output.image_loss.item()}

    @torch.no_grad()
    def evaluate(self, model: DALLE) -> dict[str, Any]:
        """Val losses (each item's first caption, no dropout) and the sample grid (with its
        attribute accuracy on the shapes data)."""
        val: CaptionedTokens = self.data.val
        metrics = transformer_losses(model, self.tokenizer, val.tokens, [c[0] for c in val.captions],
                                     self.optim.batch_size, self.precision())
        metrics.update(self.sample_grid(model))
        return metrics

    def sample_grid(self, model: DALLE) -> dict[str, float]:
        """Sample ``SAMPLES_PER_PROMPT`` images per prompt from a fixed seed, save the grid, and
        return (shapes data) the shares of samples whose attributes all match their prompt."""
        prompts, side = self.prompts, self.config.grid_size
        text = self.tokenizer.encode(prompts.captions).repeat_interleave(SAMPLES_PER_PROMPT, dim=0)
        generator = torch.Generator(self.device).manual_seed(self.config.train.seed)
        top_k = default_top_k(self.config)
        with self.precision():
            tokens = sample_image_tokens(model, text.to(self.device), temperature=default_temperature(self.config),
                                         top_k=top_k, generator=generator)
            images = self.vae.decode(tokens.view(-1, side, side)).float().cpu()
        samples = images.view(len(prompts.indices), SAMPLES_PER_PROMPT, *images.shape[1:])
        rows = [torch.cat([self.images[i][0][None], row]) for i, row in zip(prompts.indices, samples, strict=True)]
        save_grid(rows, self.run_dir / f"{STAGE}_samples_{self.step:08d}.png")
        save_grid(rows, self.run_dir / f"{STAGE}_samples_latest.png")
        if prompts.heldout is None:
            return {}
        attributes = self.data.val_attributes
        correct: dict[str, list[float]] = {"samples_correct": [], "samples_correct_heldout": []}
        for i, held, row in zip(prompts.indices, prompts.heldout, samples, strict=True):
            key = "samples_correct_heldout" if held else "samples_correct"
            correct[key].append(attribute_agreement(row, [attributes[i]] * SAMPLES_PER_PROMPT))
        return {key: float(np.mean(shares)) for key, shares in correct.items() if shares}


def training_text(tokenizer: CaptionTokenizer, captions: list[tuple[str, ...]], first: int, seed: int,
                  dropout: float) -> torch.Tensor:
    """Text tokens (B, text_len) of the B samples at train stream positions ``first``,
    ``first + 1``, ... whose items have ``captions`` (a tuple each): for each sample one of its
    captions, tokenized with BPE ``dropout``, both drawn from a generator seeded by (``seed``,
    position), so a sample's text depends on nothing else (not on the batch it is part of)."""
    rows = []
    for position, choices in enumerate(captions, start=first):
        state = np.random.SeedSequence([CAPTION_STREAM, seed, position]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        text = choices[int(torch.randint(len(choices), (), generator=generator))]
        rows.append(tokenizer.encode([text], dropout, generator))
    return torch.cat(rows)


def sample_prompts(captions: list[tuple[str, ...]], attributes: list[Attributes] | None,
                   holdout: tuple[tuple[str, str], ...]) -> Prompts:
    """The sample grid's prompts among val items of ``captions`` (each item's first): with
    ``attributes`` (shapes data) the first ``HELD_IN_PROMPTS`` items of held-in (color, shape)
    pairs and the first ``HELD_OUT_PROMPTS`` of pairs in ``holdout`` (fewer when the split has
    fewer); without, the first ``HELD_IN_PROMPTS + HELD_OUT_PROMPTS`` items."""
    if attributes is None:
        indices, heldout = list(range(min(HELD_IN_PROMPTS + HELD_OUT_PROMPTS, len(captions)))), None
    else:
        held = [(a.color, a.shape) in holdout for a in attributes]
        indices = ([i for i, h in enumerate(held) if not h][:HELD_IN_PROMPTS]
                   + [i for i, h in enumerate(held) if h][:HELD_OUT_PROMPTS])
        heldout = [held[i] for i in indices]
    return Prompts(indices, [captions[i][0] for i in indices], heldout)
