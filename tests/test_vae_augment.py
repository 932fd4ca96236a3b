"""The dVAE's training augmentation (dalle_fast.train.vae_augment): whole-batch shifts against an
index-clamping reference, min-blend composites, and the trainer applying them with exact resume."""
from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
from stage_runs import check_exact_resume, one_thread, records, resume_config  # noqa: F401 - a fixture

import dalle_fast.train.vae
from dalle_fast.config import preset
from dalle_fast.train import train
from dalle_fast.train.vae_augment import augment, composite, shift_batch


def shifted_reference(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``images`` moved down by ``dy`` and right by ``dx`` px, edge pixels repeated: every output
    pixel reads the input at its own coordinates minus the offset, clamped into the image."""
    height, width = images.shape[-2:]
    rows = (torch.arange(height) - dy).clamp(0, height - 1)
    columns = (torch.arange(width) - dx).clamp(0, width - 1)
    return images[..., rows[:, None], columns[None, :]]


@pytest.mark.parametrize("max_shift, size", [(1, (5, 3, 7, 9)), (3, (2, 1, 6, 5))])
def test_shift_moves_the_whole_batch_by_one_offset_and_reaches_every_offset(max_shift, size) -> None:
    torch.manual_seed(0)
    images = torch.rand(size)
    offsets = list(itertools.product(range(-max_shift, max_shift + 1), repeat=2))
    seen = set()
    for _ in range(40 * len(offsets)):
        out = shift_batch(images, max_shift)
        matching = [o for o in offsets if torch.equal(out, shifted_reference(images, *o))]
        assert len(matching) == 1  # one offset explains every image of the batch
        seen.add(matching[0])
    assert seen == set(offsets)


def test_zero_shift_and_zero_probability_leave_images_and_the_rng_alone() -> None:
    images = torch.rand(4, 3, 8, 8)
    state = torch.get_rng_state()
    assert shift_batch(images, 0) is images and composite(images, images.flip(0), 0.0) is images
    assert augment(images, preset("tiny").vae) is images  # tiny augments nothing
    assert torch.equal(torch.get_rng_state(), state)


def test_composite_takes_the_minimum_with_the_partner_for_the_chosen_ones() -> None:
    torch.manual_seed(1)
    images, partners = torch.rand(2, 2_000, 3, 2, 2)
    blended = torch.minimum(images, partners)
    assert torch.equal(composite(images, partners, 1.0), blended)
    out = composite(images, partners, 0.3)
    is_blended = (out == blended).flatten(1).all(1)
    is_original = (out == images).flatten(1).all(1)
    assert bool((is_blended | is_original).all())
    strictly_blended = is_blended & ~is_original
    assert 0.25 < float(strictly_blended.float().mean()) < 0.35


def test_augment_shifts_then_composites_with_the_next_image_unshifted() -> None:
    vae = dataclasses.replace(preset("tiny").vae, augment_shift=2, augment_composite=1.0)
    images = torch.rand(3, 3, 32, 32)
    torch.manual_seed(5)
    out = augment(images, vae)
    torch.manual_seed(5)
    shifted = shift_batch(images, 2)
    assert not torch.equal(shifted, images)  # seed 5 draws a nonzero offset
    expected = torch.minimum(shifted, torch.cat([images[1:], images[:1]]))
    assert torch.equal(out, expected)


def augmented(config, shift: int, probability: float):
    vae = dataclasses.replace(config.vae, augment_shift=shift, augment_composite=probability)
    return dataclasses.replace(config, vae=vae)


def test_the_trainer_trains_on_augmented_images(tmp_path: Path) -> None:
    """The same seeded one-step run, plain and with each augmentation (composites, the paper's
    crop and flip): every first loss differs from the others."""
    config = preset("tiny")
    config = dataclasses.replace(config, vae=dataclasses.replace(
        config.vae, optim=dataclasses.replace(config.vae.optim, steps=1), augment_shift=0, augment_composite=0.0),
        train=dataclasses.replace(config.train, log_every=1))
    variants = {"plain": {}, "composited": {"augment_composite": 1.0}, "cropped": {"augment_crop": 0.5},
                "flipped": {"augment_flip": True}}
    losses = []
    for name, changes in variants.items():
        train(dataclasses.replace(config, vae=dataclasses.replace(config.vae, **changes)), tmp_path / name, "vae")
        losses.append([r["loss"] for r in records(tmp_path / name, "vae") if r["split"] == "train"])
    assert all(len(loss) == 1 for loss in losses) and len({loss[0] for loss in losses}) == len(variants)


def test_resume_with_augmentation_reproduces_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    check_exact_resume(augmented(resume_config("vae"), 2, 0.5), "vae", tmp_path, monkeypatch,
                       dalle_fast.train.vae, "vae_schedule")
