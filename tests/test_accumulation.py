"""Gradient accumulation (``optim.accumulation``): A micro-batches of B / A samples give the
gradients and the update of one batch of B, on the dalle stage (whose loss is a mean over
samples, and whose captions and BPE dropout are drawn per position in the train stream):

- one update: the same loss, gradients and updated weights for A = 1, 2 and 4 (without gradient
  clipping, which would hide a wrong scale);
- a run of a few steps: the same records and final weights;
- :func:`micro_batches` cuts batches in order and refuses what it cannot cut evenly.

Accumulation with two DDP processes, and the refusal of a batch the micro-batches and processes
cannot share, are in tests/test_ddp.py; with FSDP in tests/test_fsdp.py.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from stage_runs import (  # noqa: F401 - one_thread is a fixture
    dalle_trainer,
    one_thread,
    prepare_dalle_stage,
    records,
    relative_error,
    run_main,
)

from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.train import train
from dalle_fast.train.loader import train_loader
from dalle_fast.train.loop import micro_batches

BATCH = 8
STEPS = 3


def accumulation_config(accumulation: int = 1) -> Config:
    """tiny with a 40-item train split (batches straddle epochs), 1 vae step and ``STEPS`` dalle
    steps of ``BATCH`` samples in ``accumulation`` micro-batches, BPE dropout on, no clipping."""
    config = preset("tiny")
    vae, transformer = config.vae, config.transformer
    return dataclasses.replace(
        config, vae=dataclasses.replace(vae, optim=dataclasses.replace(vae.optim, steps=1, batch_size=BATCH)),
        transformer=dataclasses.replace(transformer, optim=dataclasses.replace(
            transformer.optim, steps=STEPS, batch_size=BATCH, accumulation=accumulation, weight_decay=0.1)),
        data=dataclasses.replace(config.data, train_size=40, val_size=16),
        train=dataclasses.replace(config.train, log_every=1, eval_every=STEPS, checkpoint_every=STEPS))


def with_accumulation(run_dir: Path, accumulation: int) -> Path:
    """``run_dir``'s config, saved there with ``accumulation`` micro-batches in the dalle stage."""
    accumulation_config(accumulation).save(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of :func:`accumulation_config` with its tokenizer, dVAE and token cache."""
    return prepare_dalle_stage(accumulation_config(), tmp_path_factory.mktemp("accumulation") / "run")


def second_update(run_dir: Path, accumulation: int) -> tuple[dict[str, float], dict[str, torch.Tensor],
                                                               dict[str, torch.Tensor]]:
    """The metrics, gradients and weights of update 2 of the dalle stage in ``run_dir`` (its
    batch at stream position ``BATCH``, straddling the first epoch's end) after a first one, in
    ``accumulation`` micro-batches."""
    trainer = dalle_trainer(accumulation_config(accumulation), run_dir)
    batches = iter(train_loader(trainer.data.train, BATCH, trainer.config.train.seed, 0, 0))
    trainer.update(next(batches), trainer.settings(0), record=False)
    trainer.samples_seen += BATCH
    metrics = trainer.update(next(batches), trainer.settings(1))
    model = trainer.model
    return (metrics, {name: p.grad.clone() for name, p in model.named_parameters()},
            {name: p.detach().clone() for name, p in model.named_parameters()})


def test_micro_batches_give_the_gradients_and_update_of_the_whole_batch(prepared: Path) -> None:
    metrics, gradients, weights = second_update(prepared, 1)
    for accumulation in (2, 4):
        got_metrics, got_gradients, got_weights = second_update(prepared, accumulation)
        assert got_metrics.keys() == metrics.keys()
        for key, value in metrics.items():  # equal micro-batches: the mean of their means
            assert got_metrics[key] == pytest.approx(value, rel=1e-6), (accumulation, key)
        for name, want in gradients.items():
            assert relative_error(got_gradients[name], want) < 1e-6, (accumulation, name)
        names = sorted(weights)
        whole = relative_error(torch.cat([got_weights[n].flatten() for n in names]),
                               torch.cat([weights[n].flatten() for n in names]))
        assert whole < 1e-6, accumulation


def test_a_run_in_micro_batches_equals_the_run_in_whole_batches(prepared: Path, tmp_path: Path) -> None:
    whole, micro = (shutil.copytree(prepared, tmp_path / name) for name in ("whole", "micro"))
    train(accumulation_config(1), whole, "dalle", resume=True)
    train(accumulation_config(2), with_accumulation(micro, 2), "dalle", resume=True)
    want, got = records(whole, "dalle"), records(micro, "dalle")
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    for a, b in zip(want, got, strict=True):
        for key in ("loss", "text_loss", "image_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["split"], a["step"], key)
    a, b = load_checkpoint(whole, "dalle"), load_checkpoint(micro, "dalle")
    assert a.meta["samples_seen"] == b.meta["samples_seen"] == STEPS * BATCH
    names = sorted(a.weights)
    assert relative_error(torch.cat([b.weights[n].flatten() for n in names]),
                          torch.cat([a.weights[n].flatten() for n in names])) < 1e-6


def test_micro_batches_cut_every_field_in_order() -> None:
    images, captions = torch.arange(12.0).view(6, 2), [f"caption {i}" for i in range(6)]
    parts = micro_batches((images, captions), 3)
    assert [len(part) for part in parts] == [2, 2, 2]
    assert torch.equal(torch.cat([part[0] for part in parts]), images)
    assert sum((list(part[1]) for part in parts), []) == captions
    batch = (images, captions)
    assert micro_batches(batch, 1) == [batch]
    with pytest.raises(ValueError, match="parts: 4 must divide the batch of 6 samples"):
        micro_batches(batch, 4)
