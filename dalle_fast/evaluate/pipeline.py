"""The evaluation of a run: load its trained stages, measure the dVAE and the transformer on the
eval split, sample images for the prompts, score and rerank them with the run's CLIP, and gather
every number of the report (:mod:`.report` documents its keys and writes it).

Sampling is deterministic: prompt ``p`` draws its samples from a generator seeded with
``(seed, p)``, so a prompt's samples do not depend on the other prompts (nor on
``--num-prompts``). The k-th point of the reranking curve keeps, for each prompt, the CLIP-best of
its first k samples (k = 1: the first sample, no reranking).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..config import with_dataset
from ..image_tokens import encode_split
from ..run import UsageError, autocast
from ..sampling import default_temperature, default_top_k
from ..text_to_image import TextToImage
from ..validation import transformer_losses, validate_vae
from .data import EvalData, PromptPool, Prompts, choose_prompts, eval_data
from .inception import inception_features, load_inception
from .metrics import (
    ALL,
    ATTRIBUTE_FIELDS,
    accuracy_intervals,
    attribute_accuracy,
    attribute_hits,
    frechet_distance_of_features,
    rerank_counts,
    rerank_curve,
    reranked,
    retrieval_ranks,
    share_intervals,
    top_k_hits,
)

GROUPS = {"held_in": False, "held_out": True}  # report group -> heldout flag of its prompts
RETRIEVAL_TOP = (1, 5)  # retrieval's hit counts: the own real image nearest, or among the 5 nearest
SEED_STREAM = 0xE7A1  # tells the evaluation's sampling seeds apart from other streams of a seed


@dataclass(frozen=True)
class EvalOptions:
    """The settings of one evaluation (the command line's flags). ``samples_per_prompt`` None:
    the run's ``clip.candidates``; ``temperature`` None: the run's ``transformer.sample_temperature``;
    ``top_k`` None: the dalle stage's sample-grid setting (the top quarter of the image codes);
    ``clip``, ``clip_weights`` None: the run's reranker
    (``clip.reranker`` of its config), else as :meth:`~dalle_fast.text_to_image.TextToImage.from_run`."""

    data: str | None = None
    images: str | None = None
    split: str = "val"
    num_prompts: int = 128  # 64 per group of prompts (held-in, held-out) on shapes
    samples_per_prompt: int | None = None
    seed: int = 0
    temperature: float | None = None
    top_k: int | None = None
    batch_size: int = 64
    inception_weights: str | None = None
    clip: str | None = None
    clip_weights: str | None = None


class Samples(NamedTuple):
    """``images`` (P, S, 3, H, W) in [0, 1] on the CPU, S per prompt; ``scores`` (P, S) their CLIP
    scores against their prompt."""

    images: torch.Tensor
    scores: torch.Tensor


def load_run(run_dir: Path, clip: str | None = None, clip_weights: str | None = None) -> TextToImage:
    """The trained stages of the run in ``run_dir`` (:class:`~dalle_fast.generate.TextToImage`, on
    the GPU if there is one) with the reranker ``clip`` (None: the run's); ``UsageError`` saying
    what to train when a stage is missing."""
    pipeline = TextToImage.from_run(run_dir, clip=clip, clip_weights=clip_weights)
    if pipeline.reranker is None:
        raise UsageError(f"--run {run_dir}: no checkpoint of stage clip, which scores and reranks the samples; "
                         f"train it first (python -m dalle_fast.train --stage clip --out {run_dir}), or rerank "
                         "with a pretrained CLIP (--clip open_clip:MODEL --clip-weights FILE)")
    return pipeline


def prompt_seed(seed: int, prompt: int) -> int:
    """The sampling seed of prompt number ``prompt`` under the evaluation ``seed``."""
    return int(np.random.SeedSequence([SEED_STREAM, seed, prompt]).generate_state(1)[0])


def generate(pipeline: TextToImage, captions: list[str], samples: int, options: EvalOptions,
             temperature: float, top_k: int) -> Samples:
    """``samples`` images for each caption and their CLIP scores (batches of
    ``options.batch_size``; prompt p draws from the seed :func:`prompt_seed` gives it)."""
    images, scores = [], []
    for p, text in enumerate(tqdm(captions, desc="sampling", unit="prompt", dynamic_ncols=True)):
        drawn = pipeline.sample(text, samples, temperature=temperature, top_k=top_k,
                                seed=prompt_seed(options.seed, p), batch_size=options.batch_size).clamp(0, 1)
        images.append(drawn)
        scores.append(pipeline.score(text, drawn))
    return Samples(torch.stack(images), torch.stack(scores))


def split_losses(pipeline: TextToImage, data: EvalData, batch_size: int,
                 precision: contextlib.AbstractContextManager) -> dict[str, float]:
    """Mean text and image cross-entropies (nats) of the transformer over the eval split (each
    item's first caption, its image tokens from the dVAE) and the image loss in bits per token."""
    codes = encode_split(pipeline.vae, data.dataset, batch_size, precision, 0, "eval image tokens")
    losses = transformer_losses(pipeline.dalle, pipeline.tokenizer, codes, [c[0] for c in data.captions],
                                batch_size, precision)
    return {key: losses[key] for key in ("text_loss", "image_loss", "image_bits_per_token")}


def best_and_first(samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
    """The first sample of each prompt and its CLIP-best sample: two (P, 3, H, W) tensors."""
    rows = torch.arange(len(samples.images))
    return samples.images[:, 0], samples.images[rows, reranked(samples.scores, samples.scores.shape[1])]


def fid_scores(real: torch.Tensor, first: torch.Tensor, best: torch.Tensor,
               embed: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float | None]:
    """Fréchet distances of the ``first`` and CLIP-``best`` samples to the ``real`` images, on
    the features ``embed(images)`` gives; None when there are fewer than 2 prompts."""
    if len(real) < 2:
        return {"first": None, "reranked": None}
    features = embed(real)
    return {"first": frechet_distance_of_features(embed(first), features),
            "reranked": frechet_distance_of_features(embed(best), features)}


def attribute_results(samples: Samples, prompts: Prompts, pool: PromptPool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Shapes data: the ``attributes`` part of the report (per group of prompts, held-in and
    held-out: the prompt count, the per-attribute accuracy of the first and the CLIP-best
    sample, and their 95% Wilson intervals) and the ``rerank_curve`` part (accuracy on all four
    attributes of the CLIP-best of the first k samples, per group and over all prompts)."""
    p, s = samples.scores.shape
    wanted = [pool.attributes[i] for i in prompts.indices for _ in range(s)]
    hits = attribute_hits(samples.images.flatten(0, 1), wanted).view(p, s, len(ATTRIBUTE_FIELDS) + 1)
    counts = rerank_counts(s)
    best = reranked(samples.scores, s)
    heldout = torch.tensor(prompts.heldout, dtype=torch.bool)
    attributes: dict[str, Any] = {}
    curve: dict[str, Any] = {"samples": counts}
    for group, flag in {**GROUPS, ALL: None}.items():
        chosen = torch.ones_like(heldout) if flag is None else heldout == flag
        if not chosen.any():
            part, line = {"prompts": 0, "first": None, "reranked": None, "intervals": None}, None
        else:
            group_hits = hits[chosen]
            picked = {"first": group_hits[:, 0], "reranked": group_hits[torch.arange(len(group_hits)), best[chosen]]}
            part = {"prompts": int(chosen.sum()), **{kind: attribute_accuracy(h) for kind, h in picked.items()},
                    "intervals": {kind: accuracy_intervals(h) for kind, h in picked.items()}}
            line = rerank_curve(group_hits[..., -1], samples.scores[chosen], counts)
        if flag is not None:
            attributes[group] = part
        curve[group] = line
    return attributes, curve


def group_results(samples: Samples, prompts: Prompts, pool: PromptPool, real: torch.Tensor,
                  real_scores: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any] | None:
    """The ``groups`` part of the report when the prompts have groups (shapes, emoji; else None):
    per group (held-in, held-out) its prompt count, the mean CLIP score of the first sample, the
    CLIP-best and the real image, the FID on CLIP features of the first and CLIP-best samples
    against the group's real images (``embed`` gives the features), and, when the pool has a
    gallery, retrieval: the share of prompts whose own real image is the nearest (top-1) or
    among the 5 nearest (top-5) of the whole gallery to the first / CLIP-best sample
    (:func:`~.metrics.retrieval_ranks`), with 95% Wilson intervals. A group without prompts is
    None."""
    if prompts.heldout is None:
        return None
    rows = torch.arange(len(samples.images))
    picked = {"first": samples.images[:, 0], "reranked": samples.images[rows, reranked(samples.scores,
                                                                                        samples.scores.shape[1])]}
    ranks = None
    if pool.gallery is not None:
        gallery = torch.stack([pool.gallery[i][0] for i in range(len(pool.gallery))])
        targets = torch.tensor([pool.gallery_index[i] for i in prompts.indices], dtype=torch.int64)
        ranks = {kind: retrieval_ranks(images, gallery, targets) for kind, images in picked.items()}
    keys = [f"top{k}" for k in RETRIEVAL_TOP]
    heldout = torch.tensor(prompts.heldout, dtype=torch.bool)
    groups: dict[str, Any] = {}
    for group, flag in GROUPS.items():
        chosen = heldout == flag
        if not chosen.any():
            groups[group] = None
            continue
        part = {"prompts": int(chosen.sum()),
                "clip_score": {"first": float(samples.scores[chosen, 0].mean()),
                               "reranked": float(samples.scores[chosen].amax(dim=1).mean()),
                               "real": float(real_scores[chosen].mean())},
                "fid_clip": fid_scores(real[chosen], picked["first"][chosen], picked["reranked"][chosen], embed),
                "retrieval": None}
        if ranks is not None:
            hits = {kind: top_k_hits(r[chosen], RETRIEVAL_TOP) for kind, r in ranks.items()}
            part["retrieval"] = {**{kind: dict(zip(keys, h.double().mean(dim=0).tolist())) for kind, h in hits.items()},
                                 "intervals": {kind: dict(zip(keys, map(list, share_intervals(h))))
                                               for kind, h in hits.items()}}
        groups[group] = part
    return groups


def evaluate(run_dir: Path, options: EvalOptions) -> tuple[dict[str, Any], Samples, torch.Tensor]:
    """Evaluate the run in ``run_dir``: the report (a dict of the keys :mod:`.report` documents),
    the samples, and the real images of the prompts (P, 3, H, W). Problems the user can fix
    raise ``UsageError``."""
    started = time.perf_counter()
    inception = load_inception(options.inception_weights) if options.inception_weights is not None else None
    pipeline = load_run(run_dir, options.clip, options.clip_weights)
    config = pipeline.config if options.data is None else with_dataset(pipeline.config, options.data)
    device = pipeline.device
    samples_per_prompt = options.samples_per_prompt or config.clip.candidates
    top_k = options.top_k or default_top_k(config)
    temperature = default_temperature(config) if options.temperature is None else options.temperature
    if top_k > config.image_vocab:
        raise UsageError(f"--top-k: must be at most the codebook size {config.image_vocab}, got {top_k}")
    data = eval_data(config, options.split, options.images)
    prompts = choose_prompts(data.pool, options.num_prompts)
    precision = autocast(config.train.precision, device)
    vae_metrics = validate_vae(pipeline.vae, data.dataset, data.attributes, options.batch_size, precision,
                               config.data.holdout).metrics
    losses = split_losses(pipeline, data, options.batch_size, precision)
    samples = generate(pipeline, prompts.captions, samples_per_prompt, options, temperature, top_k)
    real = torch.stack([data.pool.dataset[i][0] for i in prompts.indices])
    first, best = best_and_first(samples)
    reranker = pipeline.reranker
    with precision:
        real_scores = reranker.score(prompts.captions, real)
    clip_features = partial(reranker.features, batch_size=options.batch_size)
    fid_clip = fid_scores(real, first, best, clip_features)
    fid_inception = {"first": None, "reranked": None}
    if inception is not None:
        fid_inception = fid_scores(real, first, best, partial(inception_features, inception.to(device),
                                                              batch_size=options.batch_size))
    attributes, curve = (attribute_results(samples, prompts, data.pool) if data.pool.attributes is not None
                         else (None, None))
    groups = group_results(samples, prompts, data.pool, real, real_scores, clip_features)
    report = {
        "run": str(run_dir), "preset": config.name, "dataset": config.data.dataset, "split": options.split,
        "data": data.description,
        "settings": {"seed": options.seed, "num_prompts": len(prompts.indices),
                     "samples_per_prompt": samples_per_prompt, "temperature": temperature, "top_k": top_k,
                     "inception_weights": options.inception_weights, "device": device.type,
                     "reranker": reranker.name},
        "vae": {"psnr": vae_metrics["psnr"], "codes_used": vae_metrics["codes_used"],
                "perplexity": vae_metrics["perplexity"],
                "attribute_agreement": vae_metrics.get("attribute_agreement"),
                "attribute_agreement_heldout": vae_metrics.get("attribute_agreement_heldout")},
        "transformer": losses,
        "clip_score": {"first": float(samples.scores[:, 0].mean()),
                       "reranked": float(samples.scores.amax(dim=1).mean()), "real": float(real_scores.mean())},
        "fid": {"clip": fid_clip, "inception": fid_inception, "images": len(real)},
        "groups": groups,
        "attributes": attributes,
        "rerank_curve": curve,
        "prompts": [{"caption": c, "heldout": None if prompts.heldout is None else prompts.heldout[k]}
                    for k, c in enumerate(prompts.captions)],
        "seconds": time.perf_counter() - started,
    }
    return report, samples, real
