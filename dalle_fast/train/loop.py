"""The training loop every stage shares: seeding, AdamW with its schedule, an optional EMA of the
weights, the train/val records of ``metrics.jsonl``, a tqdm bar, and the log / eval / checkpoint
cadence of ``config.train``, with checkpoints that resume exactly.

A stage subclasses :class:`StageTrainer` and says what is particular to it: its model
(:meth:`~StageTrainer.build_model`), the loss of one batch (:meth:`~StageTrainer.forward`), the
scheduled values of a step (:meth:`~StageTrainer.settings`, by default just the learning rate),
what a train record holds (:meth:`~StageTrainer.train_metrics`) and how the weights are
validated (:meth:`~StageTrainer.evaluate`).

Every ``log_every`` steps a train record goes to ``metrics.jsonl``; every ``eval_every`` steps
(and at the end) a val record; every ``checkpoint_every`` steps (and at the end) a checkpoint.
A checkpoint holds everything the rest of the run depends on: weights (EMA weights under
``ema.`` when enabled), AdamW moments, the RNG states, and the data position (samples consumed
from the :class:`~.loader.IndexStream`), so that resuming from it reproduces the uninterrupted run
bit for bit, metrics included (except wall-clock seconds).

Under ``torchrun`` (:mod:`dalle_fast.device`) every process runs the same loop on its slice of each global
batch of ``optim.batch_size`` (:func:`~.loader.train_loader`), through ``DistributedDataParallel``,
which averages the gradients: the update equals the single-process update on the whole batch.
Train records average the processes' values; only rank 0 evaluates, writes records and
checkpoints and shows the progress bar. All processes share one seed, so their RNG states stay
equal and rank 0's checkpoint restores every process.
"""
from __future__ import annotations

import random
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import EMA_PREFIX, Checkpoint, load_checkpoint, save_checkpoint
from ..config import Config, OptimConfig
from ..data.splits import TrainData
from ..device import autocast, barrier, is_main, local_batch_size, mean_over_ranks, pick_device, world
from ..ema import EMA
from ..schedules import learning_rate
from .loader import train_loader
from .log import MetricsLog
from .optim import load_optimizer_state, make_optimizer, optimizer_state, set_lr
from .rng import rng_state, set_rng_state


class LearningRate(NamedTuple):
    """The scheduled values of a stage that schedules only its learning rate."""

    lr: float


class StageTrainer(ABC):
    """The model, optimizer, optional EMA and counters of one stage's run in ``run_dir``.

    Subclasses set ``stage`` (the name of its checkpoints and records) and ``shown`` (train
    record keys on the progress bar), and implement the abstract methods.
    """

    stage: str
    shown: tuple[str, ...] = ("loss",)

    def __init__(self, config: Config, run_dir: Path, data: TrainData, optim: OptimConfig) -> None:
        self.config, self.run_dir, self.data, self.optim = config, run_dir, data, optim
        self.device, self.world = pick_device(), world()
        self.local_batch_size = local_batch_size(optim.batch_size, self.world.size)
        seed_everything(config.train.seed)
        self.model = self.build_model().to(self.device)
        self.distributed = self.wrap_distributed() if self.world.size > 1 else None
        self.optimizer = make_optimizer(self.parameters(), optim)
        self.ema = EMA(self.model, optim.ema_decay) if optim.ema_decay else None
        self.log = MetricsLog(run_dir)
        self.step, self.samples_seen = 0, 0  # optimizer steps done; position in the train data stream
        self.seconds_before = 0.0  # training seconds of earlier sessions of the run
        self.started = time.perf_counter()

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The freshly initialized model (called once, right after seeding)."""

    @abstractmethod
    def forward(self, batch: Any, settings: NamedTuple) -> NamedTuple:
        """The training forward pass on one ``batch`` of the train loader (tensors still on the
        CPU) under ``settings``: an output whose ``loss`` is the scalar to minimize."""

    @abstractmethod
    def train_metrics(self, output: NamedTuple) -> dict[str, float]:
        """The values a train record holds for the step that produced ``output``."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Val metrics of ``model`` (the EMA's copy when enabled); must not draw from torch's
        global RNG. May write files (sample grids) named after ``self.step``."""

    def settings(self, step: int) -> NamedTuple:
        """The scheduled values of update ``step`` (0-based); must have ``lr``. Default: the
        warmup + cosine learning rate of ``self.optim``."""
        return LearningRate(learning_rate(self.optim, step))

    def parameters(self) -> Iterable[nn.Parameter] | Iterable[dict[str, Any]]:
        """What the optimizer trains (parameters or parameter groups). Default: every parameter."""
        return self.model.parameters()

    def updates_skip_parameters(self) -> bool:
        """Whether some updates leave some parameters without a gradient (frozen for a phase), so
        that ``DistributedDataParallel`` must look for them every step. Default: no."""
        return False

    def precision(self) -> Any:
        """The forward pass's precision context (``config.train.precision`` on this device)."""
        return autocast(self.config.train.precision, self.device)

    def run(self, resume: bool) -> None:
        """Train from the latest checkpoint (``resume``) or from scratch to the last step."""
        checkpoint = load_checkpoint(self.run_dir, self.stage) if resume else None
        if checkpoint is not None:
            self.restore(checkpoint)
        if is_main():
            self.log.rewind(self.stage, self.step)
        if self.step >= self.optim.steps:
            return
        batches = iter(train_loader(self.data.train, self.optim.batch_size, self.config.train.seed,
                                    start=self.samples_seen, num_workers=self.config.train.num_workers,
                                    rank=self.world.rank, size=self.world.size))
        with tqdm(total=self.optim.steps, initial=self.step, desc=self.stage, unit="step",
                  dynamic_ncols=True, disable=not is_main()) as progress:
            while self.step < self.optim.steps:
                batch = next(batches)
                settings = self.settings(self.step)
                output = self.update(batch, settings)
                self.step += 1
                self.samples_seen += self.optim.batch_size
                progress.update()
                self.after_step(output, settings, progress)
        barrier()  # rank 0's last records and checkpoint are on disk for every process

    def update(self, batch: Any, settings: NamedTuple) -> NamedTuple:
        """One optimizer step on ``batch`` with ``settings`` (its ``lr`` among them)."""
        set_lr(self.optimizer, settings.lr)
        with self.precision():
            output = (self.forward if self.distributed is None else self.distributed)(batch, settings)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return output

    def after_step(self, output: NamedTuple, settings: NamedTuple, progress: tqdm) -> None:
        """Log, validate and checkpoint when the step just done calls for it (the last step does all three)."""
        train, last = self.config.train, self.step == self.optim.steps
        if self.step % train.log_every == 0 or last:
            record = {**mean_over_ranks(self.train_metrics(output), self.device), **settings._asdict()}
            self.append("train", record)
            progress.set_postfix({key: f"{record[key]:.4g}" for key in self.shown})
        if not is_main():
            return
        if self.step % train.eval_every == 0 or last:
            self.append("val", self.evaluate(self.ema.model if self.ema is not None else self.model))
        if self.step % train.checkpoint_every == 0 or last:
            save_checkpoint(self.run_dir, self.stage, self.checkpoint())

    def wrap_distributed(self) -> DistributedDataParallel:
        """:meth:`forward` as a module over ``self.model``, wrapped in ``DistributedDataParallel``:
        calling it runs the stage's forward on this process's slice, and the backward pass then
        averages the gradients of every process."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(_StageForward(self.model, self.forward), device_ids=device_ids,
                                       find_unused_parameters=self.updates_skip_parameters())

    def append(self, split: str, metrics: dict[str, Any]) -> None:
        """Add a ``split`` record of ``metrics`` at the current step to ``metrics.jsonl`` (rank 0 only)."""
        if not is_main():
            return
        self.log.append({"stage": self.stage, "split": split, "step": self.step, **metrics,
                         "seconds": self.seconds()})

    def last_record(self, split: str) -> dict[str, Any]:
        """The stage's newest ``split`` record in ``metrics.jsonl``."""
        return [r for r in self.log.records() if r["stage"] == self.stage and r["split"] == split][-1]

    def seconds(self) -> float:
        """Wall-clock seconds of training so far, over all sessions of the run."""
        return self.seconds_before + time.perf_counter() - self.started

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


class _StageForward(nn.Module):
    """A stage's forward pass (``forward(batch, settings)``, which runs ``model``) as a module
    owning ``model``'s parameters, for ``DistributedDataParallel`` to wrap."""

    def __init__(self, model: nn.Module, forward: Callable[[Any, NamedTuple], NamedTuple]) -> None:
        super().__init__()
        self.model, self.stage_forward = model, forward

    def forward(self, batch: Any, settings: NamedTuple) -> NamedTuple:
        return self.stage_forward(batch, settings)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and GPUs), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
