"""Helpers of the training-stage tests: the command run in-process, the metrics it logged, the
crash-then-resume check every stage must pass, and what the multi-process tests share."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from dalle_fast.checkpoint import Checkpoint, load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.data.splits import load_data
from dalle_fast.run import load_tokenizer, load_vae
from dalle_fast.train import main, train
from dalle_fast.train.dalle import DALLETrainer
from dalle_fast.train.tokens import token_cache


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Import into a test module to run it on one thread: the tiny models run faster on one
    than on two that compete with other jobs for a shared CI machine's cores (these tests check
    behaviour, not speed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(argv: list[str]) -> str:
    """``main(argv)``, which must succeed; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def records(run_dir: Path, stage: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (of ``stage`` only, if given)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if stage is None or r["stage"] == stage]


def prepare_dalle_stage(config: Config, run_dir: Path) -> Path:
    """``run_dir`` with the tokenizer, dVAE and token cache of ``config``: ready for its dalle stage."""
    train(config, run_dir, "tokenizer")
    train(config, run_dir, "vae")
    token_cache(config, run_dir, load_data(config), load_vae(config, run_dir), config.transformer.optim.batch_size,
                contextlib.nullcontext())
    return run_dir


def dalle_trainer(config: Config, run_dir: Path) -> DALLETrainer:
    """The dalle stage's trainer of ``config`` in ``run_dir`` (a :func:`prepare_dalle_stage`)."""
    data = load_data(config)
    vae = load_vae(config, run_dir)
    cache = token_cache(config, run_dir, data, vae, config.transformer.optim.batch_size, contextlib.nullcontext())
    return DALLETrainer(config, run_dir, data, load_tokenizer(config, run_dir), vae, cache)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the rendezvous of spawned process groups)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` over the whole tensors, in float64."""
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def resume_config(section: str) -> Config:
    """tiny, with 8 steps of ``section`` (``"vae"``, ``"clip"``, ...) in batches of 32, the EMA and
    gradient clipping on; a train split of 40 samples so the batches straddle epochs; a
    checkpoint at step 4."""
    config = preset("tiny")
    part = getattr(config, section)
    optim = dataclasses.replace(part.optim, steps=8, batch_size=32, ema_decay=0.9, grad_clip=1.0)
    return dataclasses.replace(
        config, **{section: dataclasses.replace(part, optim=optim)},
        data=dataclasses.replace(config.data, train_size=40, val_size=16),
        train=dataclasses.replace(config.train, log_every=2, eval_every=4, checkpoint_every=4))


def crashing_at(step: int, schedule: Callable[..., Any]) -> Callable[..., Any]:
    """``schedule`` (called as ``schedule(settings, step, ...)``), but raising ``RuntimeError("simulated
    crash")`` for ``step``: a stage that crashes in that update."""
    def crashing(settings: Any, at: int, *rest: Any) -> Any:
        if at == step:
            raise RuntimeError("simulated crash")
        return schedule(settings, at, *rest)
    return crashing


def check_exact_resume(config: Config, stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       module: ModuleType, schedule: str, before: tuple[str, ...] = ()) -> Checkpoint:
    """Train ``stage`` of ``config`` (a :func:`resume_config`) straight through; then again in
    another run directory, crashing in update 6 (``module.schedule(settings, step, ...)`` raises for
    step 6, after the step-4 checkpoint and the step-6 log line), and resume it. Asserts that
    the resumed run ends with the same checkpoint, bit for bit, and the same metrics. The stages
    ``before`` are run first in both directories. Returns the final checkpoint."""
    for run_dir in (tmp_path / "straight", tmp_path / "resumed"):
        for name in before:
            train(config, run_dir, name)
    train(config, tmp_path / "straight", stage)

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(module, schedule, crashing_at(6, getattr(module, schedule)))
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config, resumed, stage)
    assert load_checkpoint(resumed, stage).step == 4
    assert records(resumed, stage)[-1]["step"] == 6
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts in
    train(config, resumed, stage, resume=True)

    a, b = load_checkpoint(tmp_path / "straight", stage), load_checkpoint(resumed, stage)
    assert a.step == b.step == 8
    assert any(name.startswith("ema.") for name in a.weights)
    for got, want in ((b.weights, a.weights), (b.state, a.state)):
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), name
    assert b.meta["samples_seen"] == a.meta["samples_seen"] == 8 * 32
    assert without_seconds(records(resumed, stage)) == without_seconds(records(tmp_path / "straight", stage))
    assert [(r["split"], r["step"]) for r in records(resumed, stage)] == [
        ("train", 2), ("train", 4), ("val", 4), ("train", 6), ("train", 8), ("val", 8)]
    return a
