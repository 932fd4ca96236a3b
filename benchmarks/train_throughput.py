"""Training throughput at the ``gpu`` preset: optimizer steps per second of each stage's model
(dalle, vae, clip; the tokenizer has no steps), and the memory a step needs with and without
activation checkpointing (``train.activation_checkpointing``).

Run from the repository root on a CUDA machine (``benchmarks/gpu_check.sh`` does):
``python benchmarks/train_throughput.py [--out DIR] [--warmup 2] [--steps 5]``. For each stage it
builds the preset's model on the GPU and times ``--steps`` optimizer steps after ``--warmup``
untimed ones, each step as the stage's training takes it: ``optim.accumulation`` forward and
backward passes of a micro-batch of the preset's size under the run's autocast (bf16), gradient
clipping when the preset clips, the AdamW step. The batches are synthetic and already on the GPU
(uniform images, uniform token ids), so data loading, tokenization and augmentation are not
measured: this is the model's side of a training step. Per stage and checkpointing setting it
records:

- ``steps_per_second`` (and samples per second, milliseconds per step), from
  ``torch.cuda.synchronize`` around the timed steps;
- ``peak_memory_bytes``: ``torch.cuda.max_memory_allocated`` over the timed steps, and
  ``at_rest_bytes``, what was allocated before them (weights, AdamW moments);
- ``kept_for_backward_bytes``: what autograd keeps from one forward for its backward, counted in
  a separate, untimed forward through ``torch.autograd.graph.saved_tensors_hooks`` (each storage
  once, parameters not counted) plus the inputs that checkpointed units keep for their
  recomputation.

Results go to ``DIR`` (default ``benchmarks/results``) as ``throughput-<gpu>-<date>.json`` and
``.md``, rewritten after every stage, so a run cut short keeps the stages it finished. A stage that
fails is recorded with its error, the others still run; the exit status is 1 then, and when
checkpointing keeps no less for the backward than without (a bug on any device).

``--rehearse`` runs the same code on the CPU at the ``tiny`` preset with micro-batches of 2 (one
warmup and one timed step): no time and no peak memory is claimed (they are null), but the
counting of what is kept for the backward, the files and their checks run as on the GPU. It
exits 1 when a stage fails, checkpointing keeps no less for the backward than without, or the
files do not read back; the results go to a temporary folder unless ``--out`` says otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from dalle_fast.clip import CLIP
from dalle_fast.config import Config, OptimConfig, preset
from dalle_fast.device import autocast
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.model import DALLE
from dalle_fast.schedules import vae_schedule
from dalle_fast.train.optim import decay_matrices_only, make_optimizer
from dalle_fast.units import set_checkpointing, units

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STAGES = ("dalle", "vae", "clip")  # the transformer first: the headline under a short lease
REHEARSAL_MICRO_BATCH = 2
MiB = 1 << 20


class StageModel(NamedTuple):
    """A stage's model, what its optimizer trains, its optimizer settings and ``loss()``: the
    training loss of one synthetic micro-batch (a scalar tensor)."""

    model: nn.Module
    params: Iterable[nn.Parameter] | list[dict[str, Any]]
    optim: OptimConfig
    micro_batch: int
    loss: Callable[[], torch.Tensor]


def build_stage(stage: str, config: Config, device: torch.device, micro_batch: int | None) -> StageModel:
    """The model of ``stage`` at ``config`` on ``device`` with a synthetic micro-batch of
    ``micro_batch`` samples (default: the preset's, ``optim.micro_batch(1)``), drawn once."""
    generator = torch.Generator(device).manual_seed(0)
    section = {"vae": config.vae, "dalle": config.transformer, "clip": config.clip}[stage]
    optim = section.optim
    b = micro_batch or optim.micro_batch(1)
    side, text_len, vocab = config.image_size, config.transformer.text_len, config.transformer.text_vocab

    def images() -> torch.Tensor:  # (b, 3, side, side) in [0, 1]
        return torch.rand(b, 3, side, side, device=device, generator=generator)

    def text() -> torch.Tensor:  # (b, text_len) ids
        return torch.randint(vocab, (b, text_len), device=device, generator=generator)

    torch.manual_seed(0)
    if stage == "vae":
        model = DiscreteVAE(config).to(device)
        pixels, settings = images(), vae_schedule(config.vae, 0)
        return StageModel(model, model.parameters(), optim, b,
                          lambda: model(pixels, settings.tau, settings.kl_weight).loss)
    if stage == "dalle":
        model = DALLE(config).to(device)
        ids = text()
        tokens = torch.randint(config.image_vocab, (b, config.image_seq_len), device=device, generator=generator)
        return StageModel(model, decay_matrices_only(model), optim, b, lambda: model(ids, tokens).loss)
    if stage == "clip":
        model = CLIP(config).to(device)
        ids, pixels = text(), images()
        return StageModel(model, decay_matrices_only(model), optim, b, lambda: model(ids, pixels).loss)
    raise ValueError(f"stage: one of {list(STAGES)}, got {stage!r}")


def train_step(setup: StageModel, optimizer: torch.optim.Optimizer, precision: Callable[[], Any]) -> torch.Tensor:
    """One optimizer step of ``setup``: ``optim.accumulation`` forward and backward passes of its
    micro-batch under ``precision()``, clipping, the AdamW step; returns the last loss."""
    optimizer.zero_grad(set_to_none=True)
    parts = setup.optim.accumulation
    for _ in range(parts):
        with precision():
            loss = setup.loss()
        (loss / parts).backward()
    if setup.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.optim.grad_clip)
    optimizer.step()
    return loss.detach()


def kept_for_backward(setup: StageModel, precision: Callable[[], Any]) -> int:
    """Bytes autograd keeps from one forward of ``setup`` for its backward (see the module doc:
    saved tensors outside checkpointed units and the inputs those units keep, each storage once,
    parameters not counted). Runs the backward too, and leaves no gradients."""
    params = {p.untyped_storage().data_ptr() for p in setup.model.parameters()}
    kept: dict[int, int] = {}  # storage address -> bytes

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    def keep_inputs(unit: nn.Module, args: tuple) -> None:
        if unit.checkpointed:
            for arg in args:
                if isinstance(arg, torch.Tensor):
                    keep(arg)

    hooks = [unit.register_forward_pre_hook(keep_inputs) for unit in units(setup.model)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), precision():
            loss = setup.loss()
    finally:
        for hook in hooks:
            hook.remove()
    loss.backward()
    setup.model.zero_grad(set_to_none=True)
    return sum(kept.values())


class Clock:
    """Times and peak memory on a CUDA device; on the CPU (the rehearsal) neither is measured."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> tuple[float, int | None]:
        """Synchronize, reset the peak; the start time and the bytes allocated now."""
        if not self.cuda:
            return time.perf_counter(), None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return time.perf_counter(), torch.cuda.memory_allocated()

    def stop(self, started: float) -> tuple[float | None, int | None]:
        """Synchronize; seconds since ``started`` and the peak bytes since :meth:`start`."""
        if not self.cuda:
            return None, None
        torch.cuda.synchronize()
        return time.perf_counter() - started, torch.cuda.max_memory_allocated()


def measure_stage(stage: str, config: Config, device: torch.device, warmup: int, steps: int,
                  micro_batch: int | None) -> dict[str, Any]:
    """The record of one stage (see the module doc), checkpointing off then on."""
    setup = build_stage(stage, config, device, micro_batch)
    optimizer = make_optimizer(setup.params, setup.optim)
    clock = Clock(device)

    def precision() -> contextlib.AbstractContextManager:
        return autocast(config.train.precision, device)

    record: dict[str, Any] = {"parameters": sum(p.numel() for p in setup.model.parameters()),
                              "micro_batch": setup.micro_batch, "accumulation": setup.optim.accumulation,
                              "units": len(units(setup.model)), "runs": {}}
    samples_per_step = setup.micro_batch * setup.optim.accumulation
    for checkpointing in (False, True):
        set_checkpointing(setup.model, checkpointing)
        kept = kept_for_backward(setup, precision)
        for _ in range(warmup):
            train_step(setup, optimizer, precision)
        started, at_rest = clock.start()
        for _ in range(steps):
            loss = train_step(setup, optimizer, precision)
        seconds, peak = clock.stop(started)
        record["runs"]["on" if checkpointing else "off"] = {
            "activation_checkpointing": checkpointing,
            "steps_per_second": steps / seconds if seconds else None,
            "samples_per_second": steps * samples_per_step / seconds if seconds else None,
            "step_ms": 1e3 * seconds / steps if seconds else None,
            "peak_memory_bytes": peak, "at_rest_bytes": at_rest, "kept_for_backward_bytes": kept,
            "loss": loss.float().item()}
    off, on = record["runs"]["off"], record["runs"]["on"]
    record["checkpointing_ratio"] = {key: on[key] / off[key] if on[key] and off[key] else None
                                     for key in ("kept_for_backward_bytes", "peak_memory_bytes", "steps_per_second")}
    return record


def _fmt(value: float | None, scale: float = 1.0, spec: str = ".2f") -> str:
    return "—" if value is None else format(value / scale, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, a row per stage and checkpointing setting."""
    lines = [f"# Training throughput on {report['device']} ({report['date']})", "", report["what"], "",
             "| stage | micro-batch x accumulation | checkpointing | steps/s | samples/s | ms/step | "
             "peak memory (MiB) | at rest (MiB) | kept for backward (MiB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for stage, record in report["stages"].items():
        if "error" in record:
            lines.append(f"| {stage} | error: {record['error']} | | | | | | | |")
            continue
        for name, run in record["runs"].items():
            lines.append(f"| {stage} | {record['micro_batch']} x {record['accumulation']} | {name} | "
                         f"{_fmt(run['steps_per_second'])} | {_fmt(run['samples_per_second'], spec='.1f')} | "
                         f"{_fmt(run['step_ms'], spec='.1f')} | {_fmt(run['peak_memory_bytes'], MiB, '.0f')} | "
                         f"{_fmt(run['at_rest_bytes'], MiB, '.0f')} | "
                         f"{_fmt(run['kept_for_backward_bytes'], MiB, '.1f')} |")
    return "\n".join(lines) + "\n"


def save(report: dict[str, Any], stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))


def problems(stem: Path, stages: tuple[str, ...]) -> list[str]:
    """What is wrong with the results files at ``stem``: unreadable files, stages missing or
    failed, a loss that is not finite, checkpointing that keeps no less for the backward."""
    try:
        report = json.loads(stem.with_suffix(".json").read_text())
        table = stem.with_suffix(".md").read_text()
    except (OSError, ValueError) as error:
        return [f"results files: {error}"]
    found = []
    for stage in stages:
        record = report["stages"].get(stage)
        if record is None or f"| {stage} |" not in table:
            found.append(f"{stage}: missing from the results files")
        elif "error" in record:
            found.append(f"{stage}: {record['error']}")
        else:
            off, on = record["runs"]["off"], record["runs"]["on"]
            found += [f"{stage}: loss {run['loss']} with checkpointing {name}" for name, run in record["runs"].items()
                      if not math.isfinite(run["loss"])]
            if not on["kept_for_backward_bytes"] < off["kept_for_backward_bytes"]:
                found.append(f"{stage}: activation checkpointing keeps no less for the backward "
                             f"({on['kept_for_backward_bytes']} bytes vs {off['kept_for_backward_bytes']} without)")
    return found


def run(config: Config, device: torch.device, device_name: str, stem: Path, warmup: int, steps: int,
        micro_batch: int | None, stages: tuple[str, ...]) -> list[str]:
    """Measure ``stages`` into the results files at ``stem`` (saved after each); their problems."""
    report: dict[str, Any] = {
        "benchmark": "train_throughput", "device": device_name, "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "preset": config.name,
        "precision": config.train.precision, "warmup_steps": warmup, "timed_steps": steps,
        "what": (f"One optimizer step of each stage's model at the {config.name} preset on synthetic batches "
                 "already on the device (no data loading, tokenization or augmentation), checkpointing off and "
                 "on; times and peak memory from torch.cuda, what autograd keeps for the backward counted "
                 "through saved_tensors_hooks."),
        "stages": {}}
    for stage in stages:
        print(f"{stage}: measuring", flush=True)
        try:
            report["stages"][stage] = measure_stage(stage, config, device, warmup, steps, micro_batch)
        except Exception as error:  # noqa: BLE001 - recorded, and the other stages still run
            report["stages"][stage] = {"error": f"{type(error).__name__}: {error}"[:300]}
        save(report, stem)
        print(markdown(report).splitlines()[-1], flush=True)
    print(markdown(report))
    return problems(stem, stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Training throughput at the gpu preset (see the module doc).")
    parser.add_argument("--out", type=Path, help="folder of the results files (default benchmarks/results)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per stage and setting (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per stage and setting (default 5)")
    parser.add_argument("--stage", choices=STAGES, action="append", help="only this stage (repeatable)")
    parser.add_argument("--rehearse", action="store_true",
                        help="the tiny preset on the CPU, no timings, to a temporary folder")
    args = parser.parse_args(argv)
    stages = tuple(args.stage or STAGES)
    if args.rehearse:
        folder = args.out or Path(tempfile.mkdtemp(prefix="throughput-rehearsal-"))
        folder.mkdir(parents=True, exist_ok=True)
        found = run(preset("tiny"), torch.device("cpu"), "rehearsal on CPU (tiny preset; no times measured)",
                    folder / "throughput-rehearsal-cpu", 1, 1, REHEARSAL_MICRO_BATCH, stages)
        for problem in found:
            print(f"REHEARSAL FAIL {problem}", file=sys.stderr)
        print(f"rehearsal: {len(stages)} stages, {len(found)} problem(s): {'FAIL' if found else 'PASS'} ({folder})")
        return 1 if found else 0
    if not torch.cuda.is_available():
        print("benchmarks/train_throughput.py needs a CUDA GPU (torch.cuda.is_available() is False); rehearse it "
              "on the CPU with: python benchmarks/train_throughput.py --rehearse", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name()
    folder = args.out or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    found = run(preset("gpu"), torch.device("cuda"), name,
                folder / f"throughput-{slug}-{datetime.date.today().isoformat()}", args.warmup, args.steps, None,
                stages)
    for problem in found:
        print(f"PROBLEM {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
