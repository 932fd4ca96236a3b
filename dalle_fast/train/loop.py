"""The training loop every stage shares: seeding, AdamW with its schedule, an optional EMA of the
weights, the train/val records of ``metrics.jsonl`` (and TensorBoard), a tqdm bar, and the log /
eval / checkpoint cadence of ``config.train``, with checkpoints that resume exactly.

A stage subclasses :class:`StageTrainer` and says what is particular to it: its model
(:meth:`~StageTrainer.build_model`), the loss of one batch (:meth:`~StageTrainer.forward`), the
scheduled values of a step (:meth:`~StageTrainer.settings`, by default just the learning rate),
what a train record holds (:meth:`~StageTrainer.train_metrics`) and how the weights are
validated (:meth:`~StageTrainer.evaluate`).

Every ``log_every`` steps a train record goes to ``metrics.jsonl``; every ``eval_every`` steps
(and at the end) a val record; every ``checkpoint_every`` steps (and at the end) a checkpoint.
A checkpoint holds everything the rest of the run depends on: weights (EMA weights under
``ema.`` when enabled), AdamW moments, the RNG states, the plateau schedule's state
(``optim.lr_schedule = "plateau"``: the logged training losses after the warmup decide its
halvings, :class:`~dalle_fast.schedules.PlateauHalving`), and the data position (samples consumed
from the :class:`~.loader.IndexStream`), so that resuming from it reproduces the uninterrupted run
bit for bit, metrics included (except wall-clock seconds). Records and sample grids also go to
TensorBoard when it is installed (:mod:`.tensorboard`); ``metrics.jsonl`` stays the record.

**Several processes.** Under ``torchrun`` (:mod:`dalle_fast.device`) every process runs the same
loop on its slice of each global batch of ``optim.batch_size`` (:func:`~.loader.train_loader`),
through ``DistributedDataParallel`` (``train.parallel = "ddp"``) or FSDP2 (``"fsdp"``), see
:mod:`.parallel`; both average the gradients, so the update is the single-process update on the
whole batch. Train records average the processes' values; only rank 0 evaluates, writes records
and checkpoints and shows the progress bar. All processes share one seed, so their RNG states
stay equal and rank 0's checkpoint restores every process. Under ``"fsdp"`` (with any number of
processes, one included) the weights and AdamW moments are checkpointed sharded, in a
``<stage>-<step>.dcp/`` directory that every process writes into a staging directory and rank 0
then renames into place (:mod:`dalle_fast.checkpoint`); the whole weights are gathered to rank 0
for the weights file and for evaluation (on a whole copy of the model that rank 0 keeps on the
``meta`` device in between). The EMA is refused under ``"fsdp"``.

**Gradient accumulation** (``optim.accumulation`` = A). Each process cuts its slice into A
micro-batches (``batch_size = micro-batch x A x processes``) and runs forward and backward on each
with the loss divided by A, so the gradients add up to those of the whole slice; DDP all-reduces
only after the last (``no_sync``), FSDP reduce-scatters each micro-batch's gradients (they stay
sharded). A train record is the mean of its micro-batches' :meth:`~StageTrainer.train_metrics`,
each taken right after its backward, before the optimizer step. Terms computed over a whole batch
(CLIP's in-batch negatives, the dVAE's code usage term) see one micro-batch, as they see one
process's slice under DDP; every other loss term gives the gradients of the whole batch.

**Activation checkpointing** (``train.activation_checkpointing``) recomputes every unit of the
model (:mod:`dalle_fast.units`) in the backward, with the same results.
"""
from __future__ import annotations

import contextlib
import copy
import random
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import (
    EMA_PREFIX,
    Checkpoint,
    commit_directory,
    load_checkpoint,
    save_checkpoint,
    sharded_name,
    staging_directory,
)
from ..config import Config, OptimConfig
from ..data.splits import TrainData
from ..device import autocast, barrier, is_main, mean_over_ranks, pick_device, uses_bf16, world
from ..ema import EMA
from ..errors import UsageError
from ..schedules import PlateauHalving, learning_rate, warmup_steps
from ..units import set_checkpointing
from .loader import train_loader
from .log import MetricsLog
from .optim import load_optimizer_state, make_optimizer, optimizer_state, set_lr
from .parallel import (
    average_replicated_gradients,
    load_sharded,
    precision_policy,
    replicate,
    replicated_parameters,
    save_sharded,
    shard,
    whole_weights,
)
from .rng import rng_state, set_rng_state
from .tensorboard import Board

OPTIM_SECTIONS = ("vae", "transformer", "clip")  # the config sections that hold a stage's OptimConfig


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
        self.micro_batch_size = self.check_settings()
        self.local_batch_size = self.micro_batch_size * optim.accumulation  # this process's slice of a batch
        self.fsdp = config.train.parallel == "fsdp"  # sharded checkpoints, and sharding under torchrun
        self.sharded = self.fsdp and self.world.size > 1
        self.plateau = PlateauHalving(optim) if optim.lr_schedule == "plateau" else None  # before settings()
        seed_everything(config.train.seed)
        model = self.build_model()
        self.whole_copy = copy.deepcopy(model).to("meta") if self.sharded and is_main() else None  # for evaluation
        self.model = model.to(self.device)
        set_checkpointing(self.model, config.train.activation_checkpointing)
        self.replicated = replicated_parameters(self.model) if self.sharded else []
        self.distributed = self.wrap_distributed() if self.world.size > 1 else None
        self.optimizer = make_optimizer(self.parameters(), optim)
        self.ema = EMA(self.model, optim.ema_decay) if optim.ema_decay else None
        self.log = MetricsLog(run_dir)
        self.board: Board | None = None  # while training
        self.step, self.samples_seen = 0, 0  # optimizer steps done; position in the train data stream
        self.batch_start = 0  # stream position of the first sample of the micro-batch in the forward
        self.seconds_before = 0.0  # training seconds of earlier sessions of the run
        self.started = time.perf_counter()

    def check_settings(self) -> int:
        """Check the settings of the stage against the processes; returns the micro-batch. Raises
        ``UsageError`` naming the config field: a batch the processes and micro-batches cannot
        share evenly, the EMA under ``train.parallel = "fsdp"``."""
        key = optim_key(self.config, self.optim)
        try:
            micro = self.optim.micro_batch(self.world.size)
        except ValueError as e:
            raise UsageError(f"{key} of the {self.stage} stage: {e} (processes: torchrun's --nproc_per_node "
                             f"{self.world.size})") from None
        if self.config.train.parallel == "fsdp" and self.optim.ema_decay:
            raise UsageError(f"{key}.ema_decay {self.optim.ema_decay} of the {self.stage} stage: the EMA of the "
                             "weights is not supported with train.parallel 'fsdp'; set ema_decay to 0 or "
                             "train.parallel to 'ddp'")
        return micro

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The freshly initialized model (called once, right after seeding)."""

    @abstractmethod
    def forward(self, batch: Any, settings: NamedTuple) -> NamedTuple:
        """The training forward pass on one micro-batch of the train loader (tensors still on the
        CPU; its first sample is at ``self.batch_start`` of the train stream) under ``settings``:
        an output whose ``loss`` is the scalar to minimize."""

    @abstractmethod
    def train_metrics(self, output: NamedTuple) -> dict[str, float]:
        """The values a train record holds for the micro-batch that produced ``output`` (called
        after its backward, before the optimizer step)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Val metrics of ``model`` (the EMA's copy when enabled); must not draw from torch's
        global RNG. May write files (sample grids) named after ``self.step``."""

    def settings(self, step: int) -> NamedTuple:
        """The scheduled values of update ``step`` (0-based); must have ``lr``. Default: the
        warmup + cosine (or plateau) learning rate of ``self.optim``."""
        return LearningRate(learning_rate(self.optim, step, self.halvings()))

    def halvings(self) -> int:
        """How many times the plateau schedule has halved the learning rate so far (0 unless
        ``optim.lr_schedule = "plateau"``)."""
        return 0 if self.plateau is None else self.plateau.halvings

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
        self.board = Board(self.run_dir, self.stage, self.step) if is_main() else None
        try:
            self.train_steps()
        finally:
            if self.board is not None:
                self.board.close()
                self.board = None
        barrier()  # rank 0's last records and checkpoint are on disk for every process

    def train_steps(self) -> None:
        """The updates from ``self.step`` to the last, each followed by :meth:`after_step`."""
        batches = iter(train_loader(self.data.train, self.optim.batch_size, self.config.train.seed,
                                    start=self.samples_seen, num_workers=self.config.train.num_workers,
                                    rank=self.world.rank, size=self.world.size))
        with tqdm(total=self.optim.steps, initial=self.step, desc=self.stage, unit="step",
                  dynamic_ncols=True, disable=not is_main()) as progress:
            while self.step < self.optim.steps:
                batch = next(batches)
                settings = self.settings(self.step)
                metrics = self.update(batch, settings, record=self.logs_at(self.step + 1))
                self.step += 1
                self.samples_seen += self.optim.batch_size
                progress.update()
                self.after_step(metrics, settings, progress)

    def logs_at(self, step: int) -> bool:
        """Whether a train record is written after ``step`` updates."""
        return step % self.config.train.log_every == 0 or step == self.optim.steps

    def update(self, batch: Any, settings: NamedTuple, record: bool = True) -> dict[str, float] | None:
        """One optimizer step on ``batch`` (this process's slice of the global batch at
        ``self.samples_seen``) with ``settings`` (its ``lr`` among them): forward and backward on
        each of its ``optim.accumulation`` micro-batches, then the clipped AdamW step and the
        EMA. Returns the step's train metrics when ``record`` (the mean over the micro-batches of
        :meth:`train_metrics`), else None."""
        set_lr(self.optimizer, settings.lr)
        self.optimizer.zero_grad(set_to_none=True)
        parts = self.optim.accumulation
        values = []
        for i, micro in enumerate(micro_batches(batch, parts)):
            self.batch_start = self.samples_seen + self.world.rank * self.local_batch_size + i * self.micro_batch_size
            with self.gradient_sync(last=i == parts - 1):
                with self.precision():
                    output = (self.forward if self.distributed is None else self.distributed)(micro, settings)
                (output.loss / parts if parts > 1 else output.loss).backward()
            if record:
                values.append(self.train_metrics(output))
        average_replicated_gradients(self.replicated, self.world.size)
        if self.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        if not record:
            return None
        return {key: float(np.mean([v[key] for v in values])) for key in values[0]}

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-batch's forward and backward: under DDP no all-reduce but
        after the ``last`` micro-batch of the step."""
        if last or self.sharded or self.distributed is None:
            return contextlib.nullcontext()
        return self.distributed.no_sync()

    def after_step(self, metrics: dict[str, float] | None, settings: NamedTuple, progress: tqdm) -> None:
        """Log (the ``metrics`` of :meth:`update`, when it recorded them), validate and checkpoint
        when the step just done calls for it (the last step does all three). Every process
        calls this: under FSDP all of them gather the weights and write the sharded state."""
        train, last = self.config.train, self.step == self.optim.steps
        if metrics is not None:
            record = {**mean_over_ranks(metrics, self.device), **settings._asdict()}
            self.append("train", record)
            if self.plateau is not None and self.step > warmup_steps(self.optim):
                self.plateau.observe(record["loss"])  # the same mean on every process; judged after the warmup
            progress.set_postfix({key: f"{record[key]:.4g}" for key in self.shown})
        evaluating = self.step % train.eval_every == 0 or last
        saving = self.step % train.checkpoint_every == 0 or last
        if not (evaluating or saving):
            return
        weights = whole_weights(self.model) if self.sharded else None  # rank 0's, gathered from every process
        if evaluating and is_main():
            self.append("val", self.evaluate(self.evaluated_model(weights)))
            if self.whole_copy is not None:
                self.whole_copy.to("meta")  # free it until the next evaluation
            if self.board is not None:
                self.board.image(self.run_dir / f"{self.stage}_samples_{self.step:08d}.png", self.step)
        if saving:
            sharded = self.save_sharded_state() if self.fsdp else None
            if is_main():
                save_checkpoint(self.run_dir, self.stage, self.checkpoint(weights, sharded))

    def evaluated_model(self, weights: dict[str, torch.Tensor] | None) -> nn.Module:
        """The model to validate: the EMA's copy when enabled; under sharding rank 0's whole copy,
        loaded with the gathered ``weights``; else the model itself."""
        if self.ema is not None:
            return self.ema.model
        if self.whole_copy is None:
            return self.model
        self.whole_copy.to_empty(device=self.device)
        self.whole_copy.load_state_dict(weights)
        return self.whole_copy

    def save_sharded_state(self) -> str:
        """Write the sharded state of this step (every process calls this) into a staging
        directory that rank 0 then commits; returns the committed directory's name."""
        name = sharded_name(self.stage, self.step)
        staging = staging_directory(self.run_dir, name, clear=is_main())
        barrier()  # the staging directory is empty before anyone writes into it
        save_sharded(self.model, self.optimizer, staging)
        barrier()  # every process's shards are written
        if is_main():
            commit_directory(self.run_dir, name)
        return name

    def wrap_distributed(self) -> nn.Module:
        """:meth:`forward` as a module over ``self.model``, wrapped for ``train.parallel``
        (:mod:`.parallel`): calling it runs the stage's forward on this process's micro-batch,
        and the backward averages the gradients of every process."""
        if self.sharded:
            return shard(self.model, self.forward, precision_policy(uses_bf16(self.config.train.precision,
                                                                              self.device)))
        return replicate(self.model, self.forward, self.device, self.updates_skip_parameters())

    def append(self, split: str, metrics: dict[str, Any]) -> None:
        """Add a ``split`` record of ``metrics`` at the current step to ``metrics.jsonl`` and
        TensorBoard (rank 0 only)."""
        if not is_main():
            return
        self.log.append({"stage": self.stage, "split": split, "step": self.step, **metrics,
                         "seconds": self.seconds()})
        if self.board is not None:
            self.board.record(split, self.step, metrics)

    def last_record(self, split: str) -> dict[str, Any]:
        """The stage's newest ``split`` record in ``metrics.jsonl``."""
        return [r for r in self.log.records() if r["stage"] == self.stage and r["split"] == split][-1]

    def seconds(self) -> float:
        """Wall-clock seconds of training so far, over all sessions of the run."""
        return self.seconds_before + time.perf_counter() - self.started

    def checkpoint(self, weights: dict[str, torch.Tensor] | None = None, sharded: str | None = None) -> Checkpoint:
        """The state after ``self.step`` steps: the model's weights (or the gathered ``weights``
        of a sharded model), and the optimizer's unless ``sharded`` names the committed sharded
        state of this step, which holds it."""
        weights = dict(self.model.state_dict()) if weights is None else dict(weights)
        if self.ema is not None:
            weights.update({EMA_PREFIX + name: t for name, t in self.ema.model.state_dict().items()})
        optimizer_tensors, param_groups = optimizer_state(self.optimizer) if sharded is None else ({}, None)
        rng_tensors, rng_meta = rng_state()
        meta = {"samples_seen": self.samples_seen, "dataset_size": len(self.data.train),
                "seconds": self.seconds(), "param_groups": param_groups, "rng": rng_meta,
                "plateau": None if self.plateau is None else self.plateau.state()}
        return Checkpoint(self.step, weights, {**optimizer_tensors, **rng_tensors}, meta, sharded)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (saved by :meth:`checkpoint` under the same config; every
        process calls this)."""
        weights, meta = checkpoint.weights, checkpoint.meta
        if checkpoint.sharded is not None:
            load_sharded(self.model, self.optimizer, self.run_dir / checkpoint.sharded)
        else:
            self.model.load_state_dict({name: t for name, t in weights.items() if not name.startswith(EMA_PREFIX)})
            load_optimizer_state(self.optimizer, checkpoint.state, meta["param_groups"])
        if self.ema is not None:
            self.ema.model.load_state_dict({name.removeprefix(EMA_PREFIX): t for name, t in weights.items()
                                            if name.startswith(EMA_PREFIX)})
        set_rng_state(checkpoint.state, meta["rng"])
        if self.plateau is not None:
            self.plateau.restore(meta["plateau"])
        if meta["dataset_size"] != len(self.data.train):
            warnings.warn(f"the train data had {meta['dataset_size']} items at step {checkpoint.step} and has "
                          f"{len(self.data.train)} now: the data order will differ from the original run's",
                          stacklevel=2)
        self.step, self.samples_seen, self.seconds_before = checkpoint.step, meta["samples_seen"], meta["seconds"]
        self.started = time.perf_counter()


def optim_key(config: Config, optim: OptimConfig) -> str:
    """The key of ``optim`` in ``config`` (``"transformer.optim"``), for messages; ``"optim"``
    when it is none of the config's own."""
    return next((f"{name}.optim" for name in OPTIM_SECTIONS if getattr(config, name).optim is optim), "optim")


def micro_batches(batch: Sequence[Any], parts: int) -> list[Sequence[Any]]:
    """A collated ``batch`` (a tuple or list of fields, each a tensor or a list with one entry per
    sample, e.g. ``(images (B, 3, H, W), captions)``) cut into ``parts`` equal micro-batches in
    order, each a tuple of the fields' slices of B / parts samples; the batch itself when
    ``parts`` is 1. ``ValueError`` unless ``parts`` divides B."""
    if parts == 1:
        return [batch]
    size = len(batch[0])
    if size % parts:
        raise ValueError(f"parts: {parts} must divide the batch of {size} samples")
    step = size // parts
    return [tuple(field[i * step:(i + 1) * step] for field in batch) for i in range(parts)]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and GPUs), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
