"""The paper's augmentation of real images (appendix A.2, B.2): the random square crop and the
horizontal flip of the dVAE's training images (``VAEConfig.augment_crop``, ``augment_flip``), and
the token cache's cropped copies of the transformer's images (``TransformerConfig.token_copies``,
``augment_crop``). Each test fails when its feature is taken out."""
from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from stage_runs import one_thread, records  # noqa: F401 - a fixture: run on one thread

from dalle_fast.config import preset
from dalle_fast.data.splits import load_data
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.image_tokens import encode_split
from dalle_fast.train.tokens import CroppedCopy, cache_key, token_cache, token_data
from dalle_fast.train.vae_augment import augment, random_crop, random_flip


def ramp(batch: int, size: int) -> torch.Tensor:
    """Images whose channel 0 is the column index / (size - 1), channel 1 the row's, channel 2 zero."""
    line = torch.linspace(0, 1, size)
    image = torch.stack([line.expand(size, size), line[:, None].expand(size, size), torch.zeros(size, size)])
    return image.expand(batch, 3, size, size).clone()


def test_random_crop_cuts_squares_of_the_drawn_sides_and_resizes_them_back() -> None:
    size, scale = 24, 0.5
    images = ramp(64, size)
    out = random_crop(images, scale, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    # the ramp's span across the output is the crop's side: (side - 1) / (size - 1), the same both ways
    spans_x = out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))
    spans_y = out[:, 1].amax(dim=(1, 2)) - out[:, 1].amin(dim=(1, 2))
    sides = spans_x * (size - 1) + 1
    assert torch.allclose(spans_x, spans_y, atol=1e-5)  # squares
    smallest = math.ceil(scale * size)
    assert sides.min() >= smallest - 0.51 and sides.max() <= size + 1e-4
    assert sides.min() < smallest + 3 and sides.max() > size - 3  # the whole range is drawn
    assert (sides < size - 0.5).float().mean() > 0.8  # most images are cropped
    left = out[:, 0, 0, 0] * (size - 1)  # the crop's first column
    assert left.max() > 3 and (left + sides <= size + 1e-3).all()  # positions vary and stay inside
    # each output is exactly its crop resized bilinearly
    for b in range(8):
        side, x, y = round(float(sides[b])), round(float(left[b])), round(float(out[b, 1, 0, 0] * (size - 1)))
        crop = images[b:b + 1, :, y:y + side, x:x + side]
        expected = crop if side == size else F.interpolate(crop, size=(size, size), mode="bilinear",
                                                          align_corners=False)
        assert torch.allclose(out[b:b + 1], expected, atol=1e-6)


def test_random_crop_off_draws_nothing_and_bad_values_are_refused() -> None:
    images = torch.rand(4, 3, 16, 16)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert random_crop(images, 1.0) is images and torch.equal(torch.get_rng_state(), state)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="min_scale"):
            random_crop(images, bad)
    with pytest.raises(ValueError, match="square"):
        random_crop(torch.rand(1, 3, 16, 8), 0.5)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(random_crop(images, 0.6, g1), random_crop(images, 0.6, g2))  # the generator decides


def test_random_flip_mirrors_the_chosen_images() -> None:
    images = torch.rand(200, 3, 8, 8)
    assert torch.equal(random_flip(images, 1.0), images.flip(-1)) and torch.equal(random_flip(images, 0.0), images)
    torch.manual_seed(0)
    out = random_flip(images)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert (flipped ^ kept).all() and 0.35 < flipped.float().mean() < 0.65


def test_augment_crops_and_flips_before_the_shift_and_composite() -> None:
    vae = dataclasses.replace(preset("tiny").vae, augment_crop=0.5, augment_flip=True, augment_shift=0)
    images = torch.rand(6, 3, 32, 32)
    torch.manual_seed(5)
    out = augment(images, vae)
    torch.manual_seed(5)
    expected = random_flip(random_crop(images, 0.5))
    assert torch.equal(out, expected) and not torch.equal(out, images)
    plain = dataclasses.replace(vae, augment_crop=1.0, augment_flip=False)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    assert torch.equal(augment(images, plain), images) and torch.equal(torch.get_rng_state(), state)


def test_config_checks_of_the_crop_settings() -> None:
    vae, transformer = preset("tiny").vae, preset("tiny").transformer
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="augment_crop"):
            dataclasses.replace(vae, augment_crop=bad)
        with pytest.raises(ValueError, match="augment_crop"):
            dataclasses.replace(transformer, augment_crop=bad)
    with pytest.raises(ValueError, match="token_copies"):
        dataclasses.replace(transformer, token_copies=0)
    with pytest.raises(ValueError, match="token_copies"):
        dataclasses.replace(transformer, token_copies=3)  # identical copies without a crop


def copies_config(copies: int, crop: float):
    config = preset("tiny")
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_size=20, val_size=6),
        transformer=dataclasses.replace(config.transformer, token_copies=copies, augment_crop=crop))


def test_the_token_cache_holds_the_images_then_their_cropped_copies(tmp_path: Path) -> None:
    for name in "abc":
        (tmp_path / name).mkdir()
    config = copies_config(3, 0.6)
    torch.manual_seed(0)
    vae = DiscreteVAE(config).eval()
    data = load_data(config)
    nothing = contextlib.nullcontext()
    cache = token_cache(config, tmp_path / "a", data, vae, 8, nothing)
    n = len(data.train)
    assert cache.built and cache.train.shape == (3 * n, config.vae.grid_size ** 2)
    plain = encode_split(vae, data.train, 8, nothing, 0, "plain")
    assert torch.equal(cache.train[:n], plain)  # copy 0: the images themselves
    for copy in (1, 2):
        cropped = encode_split(vae, CroppedCopy(data.train, 0.6, config.train.seed, copy), 8, nothing, 0, "crop")
        assert torch.equal(cache.train[copy * n:(copy + 1) * n], cropped)
    assert not torch.equal(cache.train[n:2 * n], plain) and not torch.equal(cache.train[n:2 * n], cache.train[2 * n:])
    again = token_cache(config, tmp_path / "b", data, vae, 5, nothing)  # rebuilt elsewhere, other batches
    assert again.built and torch.equal(again.train, cache.train)  # the crops are seeded per (seed, copy, image)
    tokens = token_data(data, cache)
    assert len(tokens.train) == 3 * n and tokens.train.captions[n + 4] == tokens.train.captions[4]
    assert torch.equal(tokens.train[2 * n + 1][0], cache.train[2 * n + 1].long())
    one = copies_config(1, 1.0)
    assert cache_key(one, data, vae) != cache.key != cache_key(copies_config(3, 0.5), data, vae)
    single = token_cache(one, tmp_path / "c", load_data(one), vae, 8, nothing)
    assert torch.equal(single.train, plain)
    with pytest.raises(ValueError, match="copies"):
        token_data(data, cache._replace(train=cache.train[:-1]))
