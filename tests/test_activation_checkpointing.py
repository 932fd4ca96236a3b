"""Activation checkpointing (``train.activation_checkpointing``, :mod:`dalle_fast.units`): each
model's units (the transformer blocks of DALL-E and of CLIP's towers, the dVAE's residual groups)
recompute their activations in the backward, with the same results:

- the same loss and gradients as without, for the three models (the transformer with dropout,
  whose masks the recomputation must draw again), and the global RNG left where it would be;
- autograd keeps less for the backward (fewer saved tensors: it is on), and nothing changes
  without gradients;
- a stage trainer switches it on for its model from the config.

The peak memory it saves at the ``gpu`` preset is measured by benchmarks/train_throughput.py
(tests/test_train_throughput.py rehearses it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from stage_runs import one_thread  # noqa: F401 - a fixture
from torch import nn

from dalle_fast.clip import CLIP
from dalle_fast.config import Config, preset
from dalle_fast.data.splits import load_data
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.model import DALLE
from dalle_fast.train.vae import VAETrainer
from dalle_fast.units import set_checkpointing, units

BATCH = 3


def tiny(dropout: float = 0.1, checkpointing: bool = False) -> Config:
    """tiny with transformer dropout (every residual branch draws a mask) and
    ``train.activation_checkpointing = checkpointing``."""
    config = preset("tiny")
    return dataclasses.replace(config, transformer=dataclasses.replace(config.transformer, dropout=dropout),
                               train=dataclasses.replace(config.train, activation_checkpointing=checkpointing))


def dalle_loss(config: Config) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = DALLE(config)
    text = torch.randint(config.transformer.text_vocab, (BATCH, config.transformer.text_len))
    image = torch.randint(config.image_vocab, (BATCH, config.image_seq_len))
    return model, lambda: model(text, image).loss


def vae_loss(config: Config) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = DiscreteVAE(config)
    images = torch.rand(BATCH, 3, config.image_size, config.image_size)
    return model, lambda: model(images, tau=0.9, kl_weight=1.0).loss  # draws Gumbel noise


def clip_loss(config: Config) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = CLIP(config)
    tokens = torch.randint(config.transformer.text_vocab, (BATCH, config.transformer.text_len))
    images = torch.rand(BATCH, 3, config.image_size, config.image_size)
    return model, lambda: model(tokens, images).loss


MODELS = {"dalle": dalle_loss, "vae": vae_loss, "clip": clip_loss}


def backward(build: Callable, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], torch.Tensor, int]:
    """Loss, gradients, the RNG state afterwards, and the number of tensors autograd saved for the
    backward, of one forward and backward of the model ``build`` makes (same seed every time),
    with its units checkpointed or not."""
    torch.manual_seed(0)
    model, loss_of = build(tiny())
    assert set_checkpointing(model, checkpointing) >= 2
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = loss_of()
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}, torch.get_rng_state(), len(saved)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointed_units_give_the_same_gradients(name: str) -> None:
    loss, gradients, rng, saved = backward(MODELS[name], checkpointing=False)
    got_loss, got_gradients, got_rng, got_saved = backward(MODELS[name], checkpointing=True)
    assert got_loss == loss
    assert got_gradients.keys() == gradients.keys()
    for key, want in gradients.items():
        assert want is not None and torch.allclose(got_gradients[key], want, rtol=1e-6, atol=1e-9), (name, key)
    assert torch.equal(got_rng, rng)  # the recomputation draws from a restored state, then restores ours
    assert got_saved < 0.6 * saved, (name, got_saved, saved)  # the units' activations are not kept


def test_dropout_masks_are_drawn_again_in_the_recomputation() -> None:
    """Without the RNG state restored around the recomputation, dropout would draw new masks
    there and the gradients would be wrong: the check above would see it (here: it does draw)."""
    torch.manual_seed(0)
    model, loss_of = dalle_loss(tiny(dropout=0.5))
    first, second = loss_of().item(), loss_of().item()
    assert first != second  # dropout draws from the global RNG, so a careless recomputation would differ


def test_without_gradients_nothing_is_checkpointed() -> None:
    torch.manual_seed(0)
    model, loss_of = dalle_loss(tiny(dropout=0.0))
    set_checkpointing(model, True)
    with torch.no_grad():
        checkpointed = loss_of()
    set_checkpointing(model, False)
    with torch.no_grad():
        plain = loss_of()
    assert torch.equal(checkpointed, plain)
    assert not checkpointed.requires_grad


def test_the_trainer_checkpoints_the_units_when_the_config_says(tmp_path: Path) -> None:
    for checkpointing in (False, True):
        config = tiny(checkpointing=checkpointing)
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, train_size=8, val_size=4))
        trainer = VAETrainer(config, tmp_path / str(checkpointing), load_data(config))
        found = units(trainer.model)
        assert len(found) == 2 * config.vae.num_groups  # the encoder's groups and the decoder's
        assert all(unit.checkpointed == checkpointing for unit in found)
