"""Sampling image tokens: the KV-cached path equals recomputing the sequence, seeds repeat,
temperature and top-k draw from the right distribution, priming, bad arguments."""
from __future__ import annotations

import pytest
import torch
from test_model import random_tokens, tiny, with_random_biases

from dalle_fast.model import DALLE
from dalle_fast.sampling import pick, sample_image_tokens


def model_of(attention: str = "sparse", device: str = "cpu", **changes) -> DALLE:
    """A random tiny model with every sparse kind (4 layers: row, column, row, conv)."""
    return with_random_biases(DALLE(tiny(attention=attention, **changes))).to(device).eval()


@pytest.mark.parametrize("attention", ["sparse", "full"])
@pytest.mark.parametrize("primed", [0, 5])
def test_cached_logits_equal_the_full_forward(attention, primed, device):
    """Teacher forcing: prefill with text + `primed` image tokens, then decode the rest one by
    one; every step's logits equal the full forward's at that position."""
    model = model_of(attention, device)
    text, image = random_tokens(model, 3, device)
    expected = model.logits(text, image)[1]
    cache = model.new_cache(3)
    got = [model.prefill(text, image[:, :primed], cache)]
    got += [model.decode(image[:, i], i, cache) for i in range(primed, model.image_seq_len - 1)]
    torch.testing.assert_close(torch.stack(got, 1), expected[:, primed:], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sparse", "full"])
@pytest.mark.parametrize("primed", [0, 6])
def test_cached_greedy_equals_uncached_greedy(attention, primed, device):
    model = model_of(attention, device)
    text, image = random_tokens(model, 4, device)
    prime = image[:, :primed]
    cached = sample_image_tokens(model, text, temperature=0, prime=prime)
    uncached = sample_image_tokens(model, text, temperature=0, prime=prime, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :primed], prime)
    # greedy means each token is the argmax of the model's logits given the tokens before it
    assert torch.equal(model.logits(text, cached)[1][:, primed:].argmax(-1), cached[:, primed:])


def test_dropout_and_train_mode_do_not_leak_into_sampling():
    model = model_of(dropout=0.5).train()
    text, _ = random_tokens(model, 3)
    first = sample_image_tokens(model, text, temperature=0)
    assert model.training, "sampling must put the model back in train mode"
    assert torch.equal(first, sample_image_tokens(model, text, temperature=0, use_cache=False))


@pytest.mark.parametrize("use_cache", [True, False])
def test_seeded_sampling_repeats(use_cache):
    model = model_of()
    text, _ = random_tokens(model, 4)

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sample_image_tokens(model, text, generator=generator, use_cache=use_cache)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    torch.manual_seed(7)
    with_default = sample_image_tokens(model, text, use_cache=use_cache)
    torch.manual_seed(7)
    assert torch.equal(with_default, sample_image_tokens(model, text, use_cache=use_cache))


def test_cached_and_uncached_draw_the_same_samples():
    model = model_of()
    text, _ = random_tokens(model, 3)
    samples = [sample_image_tokens(model, text, top_k=10, generator=torch.Generator().manual_seed(5),
                                   use_cache=use_cache) for use_cache in (True, False)]
    assert torch.equal(*samples)


def test_top_k_one_is_greedy():
    model = model_of()
    text, _ = random_tokens(model, 4)
    greedy = sample_image_tokens(model, text, temperature=0)
    assert torch.equal(sample_image_tokens(model, text, temperature=1.7, top_k=1), greedy)


def test_top_k_draws_only_among_the_k_best():
    model = model_of()
    text, _ = random_tokens(model, 6)
    tokens = sample_image_tokens(model, text, temperature=5.0, top_k=3)
    logits = model.logits(text, tokens)[1]
    third = logits.topk(3, dim=-1).values[..., -1]
    chosen = logits.gather(-1, tokens[..., None])[..., 0]
    assert (chosen >= third).all()


def test_pick_follows_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]).repeat(40_000, 1)
    generator = torch.Generator().manual_seed(0)
    for temperature, top_k in ((1.0, None), (0.5, None), (2.0, 2)):
        drawn = pick(logits, temperature, top_k, generator)
        frequency = torch.bincount(drawn, minlength=5).double() / len(drawn)
        expected = logits[0].double() / temperature
        if top_k is not None:
            expected[expected < expected.topk(top_k).values[-1]] = float("-inf")
        torch.testing.assert_close(frequency, torch.softmax(expected, 0), rtol=0, atol=0.01)
    assert torch.equal(pick(logits[:3], 0, None, None), torch.zeros(3, dtype=torch.long))


def test_a_full_prime_is_returned_unchanged():
    model = model_of()
    text, image = random_tokens(model, 2)
    assert torch.equal(sample_image_tokens(model, text, prime=image), image)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"prime": torch.zeros(2, 17, dtype=torch.long)}, "prime: 17 tokens"),
    ({"prime": torch.zeros(16, dtype=torch.long)}, r"prime: expected shape \(B, P\)"),
    ({"prime": torch.full((2, 3), 64)}, "prime: ids must lie in"),
    ({"prime": torch.full((2, 3), -1)}, "prime: ids must lie in"),
    ({"prime": torch.zeros(3, 3, dtype=torch.long)}, "prime: batch of 3"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    model = model_of()
    text, _ = random_tokens(model, 2)
    with pytest.raises(ValueError, match=match):
        sample_image_tokens(model, text, **kwargs)


def test_bad_text_and_model():
    model = model_of()
    with pytest.raises(ValueError, match="text: expected shape"):
        sample_image_tokens(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="prime: expected an integer tensor"):
        sample_image_tokens(model, torch.zeros(2, 16, dtype=torch.long), prime=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="model"):
        sample_image_tokens(torch.nn.Linear(2, 2), torch.zeros(2, 16, dtype=torch.long))


def test_sampling_under_autocast_keeps_a_bf16_cache():
    """Training samples its grids under bf16 autocast: the cache then holds bf16 keys and values."""
    model = model_of()
    text, _ = random_tokens(model, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.new_cache(2).dtype == torch.bfloat16
        tokens = sample_image_tokens(model, text, top_k=5, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 16) and tokens.dtype == torch.long
    assert model.new_cache(2).dtype == torch.float32


def test_cache_layout_and_prefix_only_multi_token_feeds():
    model = model_of()
    cache = model.new_cache(3)
    assert cache.shape == (4, 2, 3, 2, 32, 16) and cache.dtype == torch.float32
    x = torch.randn(3, 2, model.config.transformer.d_model)
    with pytest.raises(ValueError, match="start"):
        model.blocks[0].cached(x, model.layer_masks[0], cache[0], 3)
