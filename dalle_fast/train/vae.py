"""Stage ``vae``: train the discrete VAE (DESIGN section 4) in a run directory.

Every step takes its temperature, KL weight and learning rate from
:func:`dalle_fast.schedules.vae_schedule`; every ``log_every`` steps a train record goes to
``metrics.jsonl``; every ``eval_every`` steps (and at the end) the val split is reconstructed
through tokens (:mod:`.vae_eval`), its metrics logged and a grid of originals above their
reconstructions saved as ``vae_samples_<step>.png`` and ``vae_samples_latest.png``; every
``checkpoint_every`` steps (and at the end) a checkpoint is saved.

A checkpoint holds everything the rest of the run depends on: weights (EMA weights under
``ema.`` when enabled), AdamW moments, the RNG states, and the data position (samples consumed
from the :class:`~.data.IndexStream`), so that resuming from it reproduces the uninterrupted run
bit for bit, metrics included (except wall-clock seconds).
"""
from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..config import Config
from ..dvae import DiscreteVAE, VAEOutput
from ..ema import EMA
from ..grid import save_grid
from ..metrics import codebook_usage
from ..schedules import VAESchedule, vae_schedule
from .data import TrainData, train_loader
from .device import autocast, pick_device
from .log import MetricsLog
from .optim import load_optimizer_state, make_optimizer, optimizer_state, set_lr
from .rng import rng_state, set_rng_state
from .vae_eval import summary, validate_vae

STAGE = "vae"
EMA_PREFIX = "ema."


def train_vae(config: Config, run_dir: Path, data: TrainData, resume: bool) -> str:
    """Train the dVAE of ``config`` on ``data`` to ``config.vae.optim.steps`` steps, in
    ``run_dir`` (which holds ``config``). ``resume``: continue from the stage's latest checkpoint
    there, if any. Returns a summary line of the final val metrics."""
    trainer = VAETrainer(config, run_dir, data)
    trainer.run(resume)
    final = [r for r in trainer.log.records() if r["stage"] == STAGE and r["split"] == "val"][-1]
    return f"{trainer.step}/{config.vae.optim.steps} steps, {final['seconds']:.1f} s of training; {summary(final)}"


class VAETrainer:
    """The model, optimizer, optional EMA and counters of one stage-vae run."""

    def __init__(self, config: Config, run_dir: Path, data: TrainData) -> None:
        self.config, self.run_dir, self.data = config, run_dir, data
        self.optim = config.vae.optim
        self.device = pick_device()
        _seed_everything(config.train.seed)
        self.model = DiscreteVAE(config).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), self.optim)
        self.ema = EMA(self.model, self.optim.ema_decay) if self.optim.ema_decay else None
        self.log = MetricsLog(run_dir)
        self.step, self.samples_seen = 0, 0  # optimizer steps done; position in the train data stream
        self.seconds_before = 0.0  # training seconds of earlier sessions of the run
        self.started = time.perf_counter()

    def run(self, resume: bool) -> None:
        """Train from the latest checkpoint (``resume``) or from scratch to the last step."""
        checkpoint = load_checkpoint(self.run_dir, STAGE) if resume else None
        if checkpoint is not None:
            self.restore(checkpoint)
        self.log.rewind(STAGE, self.step)
        if self.step >= self.optim.steps:
            return
        batches = iter(train_loader(self.data.train, self.optim.batch_size, self.config.train.seed,
                                    start=self.samples_seen, num_workers=self.config.train.num_workers))
        with tqdm(total=self.optim.steps, initial=self.step, desc=STAGE, unit="step", dynamic_ncols=True) as progress:
            while self.step < self.optim.steps:
                images, _ = next(batches)
                schedule = vae_schedule(self.config.vae, self.step)
                output = self.update(images.to(self.device, non_blocking=True), schedule)
                self.step += 1
                self.samples_seen += len(images)
                progress.update()
                self.after_step(output, schedule, progress)

    def after_step(self, output: VAEOutput, schedule: VAESchedule, progress: tqdm) -> None:
        """Log, validate and checkpoint when the step just done calls for it (the last step does all three)."""
        train, last = self.config.train, self.step == self.optim.steps
        if self.step % train.log_every == 0 or last:
            record = self.train_record(output, schedule)
            progress.set_postfix({k: f"{record[k]:.4g}" for k in ("loss", "recon", "kl", "tau")})
        if self.step % train.eval_every == 0 or last:
            self.validate()
        if self.step % train.checkpoint_every == 0 or last:
            save_checkpoint(self.run_dir, STAGE, self.checkpoint())

    def update(self, images: torch.Tensor, schedule: VAESchedule) -> VAEOutput:
        """One optimizer step on ``images`` (B, 3, H, W) with ``schedule``'s tau, KL weight and lr."""
        set_lr(self.optimizer, schedule.lr)
        with autocast(self.config.train.precision, self.device):
            output = self.model(images, schedule.tau, schedule.kl_weight)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return output

    def seconds(self) -> float:
        """Wall-clock seconds of training so far, over all sessions of the run."""
        return self.seconds_before + time.perf_counter() - self.started

    def train_record(self, output: VAEOutput, schedule: VAESchedule) -> dict[str, Any]:
        """Log the train metrics of the step just done (its batch's loss terms and token usage)."""
        usage = codebook_usage(output.logits.detach().argmax(dim=1), self.config.vae.codebook_size)
        record = {"stage": STAGE, "split": "train", "step": self.step, "loss": output.loss.item(),
                  "recon": output.recon_loss.item(), "kl": output.kl.item(), **schedule._asdict(),
                  "perplexity": float(usage.perplexity), "codes_used": float(usage.fraction_used),
                  "seconds": self.seconds()}
        self.log.append(record)
        return record

    def validate(self) -> None:
        """Log the val metrics of the current weights (the EMA's when enabled) and save the grid."""
        model = self.ema.model if self.ema is not None else self.model
        result = validate_vae(model, self.data.val, self.data.val_attributes, self.optim.batch_size,
                              autocast(self.config.train.precision, self.device))
        self.log.append({"stage": STAGE, "split": "val", "step": self.step, **result.metrics,
                         "seconds": self.seconds()})
        rows = (result.originals, result.reconstructions)
        save_grid(rows, self.run_dir / f"{STAGE}_samples_{self.step:08d}.png")
        save_grid(rows, self.run_dir / f"{STAGE}_samples_latest.png")

    def checkpoint(self) -> Checkpoint:
        """The state after ``self.step`` steps."""
        weights = dict(self.model.state_dict())
        if self.ema is not None:
            weights.update({EMA_PREFIX + name: t for name, t in self.ema.model.state_dict().items()})
        optimizer_tensors, param_groups = optimizer_state(self.optimizer)
        rng_tensors, rng_meta = rng_state()
        meta = {"samples_seen": self.samples_seen, "dataset_size": len(self.data.train),
                "seconds": self.seconds(), "param_groups": param_groups, "rng": rng_meta}
        return Checkpoint(self.step, weights, {**optimizer_tensors, **rng_tensors}, meta)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (saved by :meth:`checkpoint` under the same config)."""
        weights = checkpoint.weights
        self.model.load_state_dict({name: t for name, t in weights.items() if not name.startswith(EMA_PREFIX)})
        if self.ema is not None:
            self.ema.model.load_state_dict({name.removeprefix(EMA_PREFIX): t for name, t in weights.items()
                                            if name.startswith(EMA_PREFIX)})
        meta = checkpoint.meta
        load_optimizer_state(self.optimizer, checkpoint.state, meta["param_groups"])
        set_rng_state(checkpoint.state, meta["rng"])
        if meta["dataset_size"] != len(self.data.train):
            warnings.warn(f"the train data had {meta['dataset_size']} items at step {checkpoint.step} and has "
                          f"{len(self.data.train)} now: the data order will differ from the original run's",
                          stacklevel=2)
        self.step, self.samples_seen, self.seconds_before = checkpoint.step, meta["samples_seen"], meta["seconds"]
        self.started = time.perf_counter()


def _seed_everything(seed: int) -> None:
    """Seed torch (CPU and GPUs), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
