"""CLIP: shapes, unit embeddings, the symmetric contrastive loss, padding-awareness, learning a
tiny batch, scoring, gradients to both towers, and bad inputs."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dalle_fast.clip import CLIP, MAX_LOGIT_SCALE
from dalle_fast.config import preset
from dalle_fast.data import ShapesDataset
from dalle_fast.tokenizer import CaptionTokenizer

CONFIG = preset("tiny")
TEXT_LEN, VOCAB, SIZE = CONFIG.transformer.text_len, CONFIG.transformer.text_vocab, CONFIG.image_size
EMBED = CONFIG.clip.embed_dim


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight shapes samples of eight different colors: (tokens (8, text_len), images (8, 3, 32, 32))."""
    train = ShapesDataset("train", SIZE, size=400)
    tokenizer = CaptionTokenizer.train([train.captions(i)[0] for i in range(len(train))], VOCAB, TEXT_LEN)
    picked, colors = [], set()
    for i in range(len(train)):
        if train.attributes(i).color not in colors:
            colors.add(train.attributes(i).color)
            picked.append(train[i])
    images, captions = zip(*picked)
    return tokenizer.encode(list(captions)), torch.stack(images)


def random_tokens(batch: int, real: int) -> torch.Tensor:
    """``real`` random BPE ids then the padding ids of their positions."""
    tokens = VOCAB + torch.arange(TEXT_LEN).repeat(batch, 1)
    tokens[:, :real] = torch.randint(0, VOCAB, (batch, real))
    return tokens


def test_shapes_and_unit_embeddings() -> None:
    model = CLIP(CONFIG)
    tokens, images = random_tokens(5, 7), torch.rand(5, 3, SIZE, SIZE)
    text, image = model.encode_text(tokens), model.encode_image(images)
    assert text.shape == image.shape == (5, EMBED) and text.dtype == image.dtype == torch.float32
    assert torch.allclose(text.norm(dim=1), torch.ones(5)) and torch.allclose(image.norm(dim=1), torch.ones(5))
    output = model(tokens, images)
    assert output.loss.shape == output.text_to_image.shape == output.image_to_text.shape == ()
    assert output.logits.shape == (5, 5)
    assert model.num_text_tokens == VOCAB + TEXT_LEN == model.text.token_embedding.num_embeddings


def test_loss_is_symmetric_infonce_with_the_learned_scale() -> None:
    model = CLIP(CONFIG)
    assert model.scale().item() == pytest.approx(1 / 0.07)
    tokens, images = random_tokens(6, 5), torch.rand(6, 3, SIZE, SIZE)
    output = model(tokens, images)
    sims = model.encode_text(tokens) @ model.encode_image(images).T / 0.07  # (text, image)
    expected = -(sims.log_softmax(dim=1).diagonal().mean() + sims.log_softmax(dim=0).diagonal().mean()) / 2
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert output.text_to_image.item() == pytest.approx((sims.argmax(1) == torch.arange(6)).float().mean().item())
    assert output.image_to_text.item() == pytest.approx((sims.argmax(0) == torch.arange(6)).float().mean().item())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1_000))
    assert model.scale().item() == pytest.approx(MAX_LOGIT_SCALE)


def test_logits_stay_float32_under_bf16_autocast() -> None:
    model = CLIP(CONFIG)
    tokens, images = random_tokens(6, 5), torch.rand(6, 3, SIZE, SIZE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(tokens, images)
        text, image = model.encode_text(tokens), model.encode_image(images)
    assert output.logits.dtype == torch.float32
    assert torch.allclose(output.logits, model.scale() * text @ image.T, rtol=1e-6, atol=1e-5)


def test_text_after_the_last_real_token_is_ignored() -> None:
    model = CLIP(CONFIG)
    tokens = random_tokens(4, 6)
    changed = tokens.clone()
    changed[:, 6:] = VOCAB + torch.randint(0, TEXT_LEN, (4, TEXT_LEN - 6))  # any padding ids
    assert torch.allclose(model.encode_text(tokens), model.encode_text(changed), atol=1e-6)
    earlier = tokens.clone()
    earlier[:, 2] = (earlier[:, 2] + 1) % VOCAB  # a real token: the embedding must change
    assert not torch.allclose(model.encode_text(tokens), model.encode_text(earlier), atol=1e-4)


def test_gradients_reach_both_towers_and_the_scale() -> None:
    model = CLIP(CONFIG)
    model(random_tokens(4, 5), torch.rand(4, 3, SIZE, SIZE)).loss.backward()
    for name, parameter in model.named_parameters():
        if name == "text.token_embedding.weight":  # only the rows of ids in the batch
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.text.token_embedding.weight.grad.abs().sum() > 0


def test_learns_a_small_batch_and_scores_its_pairs_highest(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    tokens, images = batch
    model = CLIP(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model(tokens, images).loss.item()
    for _ in range(150):
        output = model(tokens, images)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert output.loss.item() < first / 4
    assert output.text_to_image.item() == output.image_to_text.item() == 1.0
    with torch.no_grad():
        for i in range(len(tokens)):
            scores = model.score(tokens[i:i + 1], images)  # one caption against every image
            assert scores.shape == (len(images),) and scores.argmax().item() == i
        pairs = model.score(tokens, images)
        assert torch.allclose(pairs, F.cosine_similarity(model.encode_text(tokens), model.encode_image(images)),
                              atol=1e-6)
        one_by_one = torch.cat([model.score(tokens[i:i + 1], images[i:i + 1]) for i in range(len(tokens))])
        assert torch.allclose(pairs, one_by_one, atol=1e-6)


def test_bad_inputs_are_named() -> None:
    model = CLIP(CONFIG)
    tokens, images = random_tokens(2, 3), torch.rand(2, 3, SIZE, SIZE)
    cases = [
        (lambda: CLIP(CONFIG.clip), TypeError, "config"),
        (lambda: model.encode_text(tokens.float()), TypeError, "tokens"),
        (lambda: model.encode_text(tokens[:, :-1]), ValueError, "tokens"),
        (lambda: model.encode_text(tokens[0]), ValueError, "tokens"),
        (lambda: model.encode_text(tokens + VOCAB + TEXT_LEN), ValueError, "tokens"),
        (lambda: model.encode_text(tokens - VOCAB - TEXT_LEN), ValueError, "tokens"),
        (lambda: model.encode_image((images * 255).to(torch.uint8)), TypeError, "images"),
        (lambda: model.encode_image(images[:, :, :-1]), ValueError, "images"),
        (lambda: model.encode_image(torch.rand(2, 1, SIZE, SIZE)), ValueError, "images"),
        (lambda: model(tokens, torch.rand(3, 3, SIZE, SIZE)), ValueError, "tokens"),
        (lambda: model.score(random_tokens(2, 3), torch.rand(3, 3, SIZE, SIZE)), ValueError, "tokens"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("field, value", [("augment_blur", 1.5), ("augment_blur", -0.1), ("augment_noise", -0.1)])
def test_bad_augmentation_settings_are_named(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"CLIPConfig.{field}"):
        dataclasses.replace(CONFIG.clip, **{field: value})
