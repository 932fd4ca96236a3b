"""Autoregressive sampling of image tokens from a :class:`~dalle_fast.model.DALLE` given text.

With ``use_cache=True`` (the default) the text and any prime tokens go through the model once
(:meth:`DALLE.prefill`), then each new image token goes through every layer alone, attending to
the cached keys and values of the earlier positions (:meth:`DALLE.decode`, which uses
``dalle_kernels.sparse_attention_decode``). ``use_cache=False`` recomputes the whole sequence
for every token (the future image positions hold placeholder id 0, which causality hides); it
gives the same tokens and serves as the reference.

Each token is drawn from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
likely codes; ``temperature=0`` takes the argmax (greedy).
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from tqdm import tqdm

from .checks import check_int
from .config import Config
from .eval_mode import eval_mode
from .model import DALLE, check_ids

TOP_K_FRACTION = 0.25  # by default, samples draw from the top quarter of the image codes


def default_top_k(config: Config) -> int:
    """Image codes sampled among by default (training grids, generate, evaluate): the top
    ``TOP_K_FRACTION`` of the codebook, at least 1."""
    return max(1, round(TOP_K_FRACTION * config.image_vocab))


def default_temperature(config: Config) -> float:
    """The sampling temperature used unless one is given (training grids, generate, evaluate, the
    page): the run's ``transformer.sample_temperature``."""
    return config.transformer.sample_temperature


def check_sampling(temperature: float, top_k: int | None) -> None:
    """``ValueError`` naming the argument unless temperature >= 0 is finite and top_k is None or >= 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature: must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None:
        check_int("top_k", top_k, 1)


def _check_prime(model: DALLE, text: torch.Tensor, prime: torch.Tensor | None) -> torch.Tensor:
    """The prime tokens (B, P) long on text's device, P in [0, N]; an empty (B, 0) tensor for None."""
    if prime is None:
        return text.new_zeros(len(text), 0)
    prime = check_ids("prime", prime, None, model.image_vocab)
    if prime.shape[1] > model.image_seq_len:
        raise ValueError(f"prime: {prime.shape[1]} tokens, but an image has only {model.image_seq_len}")
    if len(prime) != len(text):
        raise ValueError(f"prime: batch of {len(prime)} does not match the {len(text)} texts")
    return prime.to(text.device)


def pick(logits: torch.Tensor, temperature: float, top_k: int | None,
         generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,) long: argmax for temperature 0, else a draw
    from softmax(logits / temperature) over the top_k largest logits (all when None)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def sample_image_tokens(model: DALLE, text: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                        generator: torch.Generator | None = None, prime: torch.Tensor | None = None,
                        use_cache: bool = True, progress: bool = False) -> torch.Tensor:
    """Image tokens (B, N) long for text (B, T) ids, on the model's device.

    ``prime`` (B, P) long: the first P image tokens in raster order, kept as given (P <= N).
    ``generator``: the source of randomness (the default generator when None, else one on the
    model's device); the same seed gives the same tokens. ``progress``: a tqdm bar over the
    tokens sampled. The model runs in eval mode (no dropout) and is put back in its mode after.
    """
    if not isinstance(model, DALLE):
        raise TypeError(f"model: expected a DALLE, got {type(model).__name__}")
    check_sampling(temperature, top_k)
    device = model.text_position.device
    text = check_ids("text", text, model.text_len, model.num_text_tokens).to(device)
    prime = _check_prime(model, text, prime)
    with eval_mode(model):
        return _sample(model, text, prime, temperature, top_k, generator, use_cache, progress)


def _sample(model: DALLE, text: torch.Tensor, prime: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator | None, use_cache: bool, progress: bool) -> torch.Tensor:
    """:func:`sample_image_tokens` on checked arguments and a model in eval mode."""
    image = text.new_zeros(len(text), model.image_seq_len)
    image[:, :prime.shape[1]] = prime
    steps = range(prime.shape[1], model.image_seq_len)
    if not steps:
        return image
    if use_cache:
        cache = model.new_cache(len(text))
        logits = model.prefill(text, prime, cache)
    for index in tqdm(steps, desc="sampling image tokens", unit="token", disable=not progress):
        if not use_cache:
            logits = model.image_logits(text, image)[:, index]
        image[:, index] = pick(logits, temperature, top_k, generator)
        if use_cache and index + 1 < model.image_seq_len:
            logits = model.decode(image[:, index], index, cache)
    return image
