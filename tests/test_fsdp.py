"""Training with ``train.parallel = "fsdp"`` (FSDP2) on the CPU, with gloo, under torchrun:

- two processes train every stage under torchrun and give the single-process losses and weights
  of the dalle stage (to 1e-6), with activation checkpointing and gradient accumulation on;
- the vae and clip stages, whose batch-wide loss terms and random draws differ from a single
  process's by design, get the gradients of DDP with two processes: the vae's decoder fine-tuning
  (the encoder gets no gradient) and the 0-dimensional logit scale of CLIP (which FSDP2 cannot
  shard, so every process holds it whole) included; with ``precision = "bf16"`` (a GPU's
  ``"auto"``) the units compute with bf16 parameters, the gradients are reduced and kept in
  float32, and the optimizer's weights stay float32;
- a two-process run killed in the middle of the dalle stage resumes, under torchrun, to the very
  weights and records of the uninterrupted run;
- the sharded state is committed atomically: a crash while it is written, or after it is
  committed but before the checkpoint's pointer moves, leaves the previous checkpoint loadable,
  and the resumed run ends as the uninterrupted one;
- the EMA is refused under FSDP, naming the config fields.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from stage_runs import (  # noqa: F401 - one_thread is a fixture
    free_port,
    one_thread,
    records,
    relative_error,
    run_main,
    without_seconds,
)
from torch.distributed.tensor import DTensor

import dalle_fast.train.loop
from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.data.splits import load_data
from dalle_fast.device import process_group
from dalle_fast.run import UsageError, load_tokenizer
from dalle_fast.train import train
from dalle_fast.train.clip import CLIPTrainer
from dalle_fast.train.loader import train_loader
from dalle_fast.train.loop import StageTrainer
from dalle_fast.train.vae import VAETrainer
from dalle_fast.units import Unit

ROOT = Path(__file__).resolve().parents[1]
BATCH = 8  # global: 4 per process, in 2 micro-batches of 2 for the dalle stage
DALLE_STEPS = 4
STAGES = ("vae", "dalle", "clip")


def fsdp_config() -> Config:
    """tiny with a 48-item train split; 2 vae steps (the second fine-tunes the decoder alone),
    ``DALLE_STEPS`` dalle steps in 2 micro-batches, 2 clip steps, all in batches of ``BATCH`` with
    gradient clipping; FSDP with activation checkpointing; records every step, a checkpoint every
    2 steps."""
    config = preset("tiny")
    vae, transformer, clip = config.vae, config.transformer, config.clip
    return dataclasses.replace(
        config,
        vae=dataclasses.replace(vae, decoder_finetune_fraction=0.5, optim=dataclasses.replace(
            vae.optim, steps=2, batch_size=BATCH, grad_clip=0.5)),
        transformer=dataclasses.replace(transformer, optim=dataclasses.replace(
            transformer.optim, steps=DALLE_STEPS, batch_size=BATCH, accumulation=2, grad_clip=0.5, weight_decay=0.1)),
        clip=dataclasses.replace(clip, optim=dataclasses.replace(clip.optim, steps=2, batch_size=BATCH,
                                                                 grad_clip=0.5)),
        data=dataclasses.replace(config.data, train_size=48, val_size=16),
        train=dataclasses.replace(config.train, log_every=1, eval_every=DALLE_STEPS, checkpoint_every=2,
                                  parallel="fsdp", activation_checkpointing=True))


def torchrun(*arguments: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGUMENTS`` on one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *arguments], capture_output=True, text=True, timeout=240, env=env, check=False)


def train_all_under_torchrun(run_dir: Path) -> None:
    """Every stage of the run in ``run_dir`` (its tokenizer trained) with two processes."""
    result = torchrun("-m", "dalle_fast.train", "--resume", "--out", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of :func:`fsdp_config` with its tokenizer."""
    run_dir = tmp_path_factory.mktemp("fsdp") / "tokenized"
    train(fsdp_config(), run_dir, "tokenizer")
    return run_dir


@pytest.fixture(scope="module")
def fsdp_run(tokenized: Path) -> Path:
    """The run of every stage with two FSDP processes."""
    run_dir = shutil.copytree(tokenized, tokenized.parent / "fsdp")
    train_all_under_torchrun(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def without_dalle(fsdp_run: Path) -> Path:
    """:func:`fsdp_run` before its dalle stage: the dVAE and token cache of the two processes."""
    run_dir = shutil.copytree(fsdp_run, fsdp_run.parent / "without_dalle")
    for path in run_dir.glob("dalle-*"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return run_dir


@pytest.fixture(scope="module")
def single_dalle(without_dalle: Path) -> Path:
    """The dalle stage of :func:`fsdp_run` trained by this process alone."""
    run_dir = shutil.copytree(without_dalle, without_dalle.parent / "single_dalle")
    train(Config.load(run_dir), run_dir, "dalle", resume=True)
    return run_dir


def first_update(run_dir: Path, stage: str, step: int, **train: str) -> StageTrainer:
    """The trainer of ``stage`` (vae or clip) of the run in ``run_dir``, with the ``train``
    settings changed, after its update ``step`` on the run's first batch, in this process's group."""
    config = Config.load(run_dir)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    data = load_data(config)
    trainer = (VAETrainer(config, run_dir, data) if stage == "vae" else
               CLIPTrainer(config, run_dir, data, load_tokenizer(config, run_dir)))
    batch = next(iter(train_loader(trainer.data.train, BATCH, config.train.seed, 0, 0, trainer.world.rank,
                                   trainer.world.size)))
    trainer.update(batch, trainer.settings(step))
    return trainer


def first_gradients(run_dir: Path, stage: str, parallel: str, step: int) -> dict[str, torch.Tensor | None]:
    """Every parameter's whole gradient (after averaging and clipping; None for a parameter
    without one) in :func:`first_update` under ``train.parallel = parallel``."""
    trainer = first_update(run_dir, stage, step, parallel=parallel)
    return {name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
            for name, p in trainer.model.named_parameters()}


def bf16_dtypes(run_dir: Path) -> dict[str, set[torch.dtype]]:
    """The dtypes of a clip update under FSDP with ``train.precision = "bf16"``: of the units'
    parameters in the forward, and of the weights and gradients the optimizer steps."""
    seen: set[torch.dtype] = set()
    original = Unit.run

    def run(unit: Unit, compute, *args):
        seen.update(p.dtype for p in unit.parameters())
        return original(unit, compute, *args)

    Unit.run = run
    try:
        trainer = first_update(run_dir, "clip", 0, parallel="fsdp", precision="bf16")
    finally:
        Unit.run = original
    params = list(trainer.model.parameters())
    return {"forward": seen, "weights": {p.dtype for p in params}, "gradients": {p.grad.dtype for p in params}}


UPDATES = (("vae", 0), ("vae", 1), ("clip", 0))  # vae update 1 fine-tunes the decoder alone


def _gradients_worker(rank: int, run_dir: Path, port: int) -> None:
    """Process ``rank`` of 2: :func:`first_gradients` of each of ``UPDATES`` under DDP and FSDP,
    and :func:`bf16_dtypes`, saved by rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    with process_group():
        gradients = {(parallel, stage, step): first_gradients(run_dir, stage, parallel, step)
                     for parallel in ("ddp", "fsdp") for stage, step in UPDATES}
        gradients["bf16"] = bf16_dtypes(run_dir)
    if rank == 0:
        torch.save(gradients, run_dir / "gradients.pt")


def assert_same_run(got: Path, want: Path, stage: str, tolerance: float) -> None:
    """The ``stage`` records of two runs agree to ``tolerance`` (relative), and so do their final
    weights: all of them together, and each tensor to 10x ``tolerance`` (Adam turns the rounding
    noise of a gradient that is zero in exact arithmetic, such as that of the attention's key
    bias, into updates of its own)."""
    a, b = records(want, stage), records(got, stage)
    assert [(r["split"], r["step"]) for r in b] == [(r["split"], r["step"]) for r in a]
    for x, y in zip(a, b, strict=True):
        for key, value in x.items():
            if key != "seconds" and isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=tolerance, abs=1e-7), (stage, x["split"], x["step"], key)
    final, reference = load_checkpoint(got, stage), load_checkpoint(want, stage)
    assert final.step == reference.step and final.meta["samples_seen"] == reference.meta["samples_seen"]
    assert final.weights.keys() == reference.weights.keys()
    for name, tensor in reference.weights.items():
        assert relative_error(final.weights[name], tensor) < 10 * tolerance, (stage, name)
    names = sorted(reference.weights)
    whole = relative_error(torch.cat([final.weights[n].flatten() for n in names]),
                           torch.cat([reference.weights[n].flatten() for n in names]))
    assert whole < tolerance, (stage, whole)


def test_two_fsdp_processes_train_the_dalle_stage_as_one_process(fsdp_run: Path, single_dalle: Path) -> None:
    assert_same_run(fsdp_run, single_dalle, "dalle", 1e-6)
    assert load_checkpoint(fsdp_run, "dalle").meta["samples_seen"] == DALLE_STEPS * BATCH
    # the same files: weights, state and sharded state of the two newest checkpoints of each stage
    assert sorted(p.name for p in fsdp_run.iterdir()) == sorted(p.name for p in single_dalle.iterdir())
    assert {p.name for p in fsdp_run.glob("*.dcp")} == {
        "vae-00000002.dcp", "dalle-00000002.dcp", "dalle-00000004.dcp", "clip-00000002.dcp"}
    shards = sorted(p.name for p in (fsdp_run / "dalle-00000004.dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file of shards per process
    pointer = json.loads((fsdp_run / "dalle-latest.json").read_text())
    assert pointer["sharded"] == "dalle-00000004.dcp"
    # the state file holds no optimizer moments: they are in the sharded state
    assert not [name for name in load_checkpoint(fsdp_run, "dalle").state if name.startswith("optimizer.")]


def test_fsdp_gives_the_gradients_of_ddp_in_the_vae_and_clip_stages(tokenized: Path, tmp_path: Path) -> None:
    """vae and clip updates (their losses see each process's slice: compared with DDP): every
    gradient, the decoder-only update's missing ones of the encoder and the 0-dimensional logit
    scale that each process holds whole included; the clipping applies to their global norm."""
    run_dir = shutil.copytree(tokenized, tmp_path / "run")
    mp.spawn(_gradients_worker, args=(run_dir, free_port()), nprocs=2, join=True)
    gradients = torch.load(run_dir / "gradients.pt")
    for update in UPDATES:
        ddp, fsdp = gradients[("ddp", *update)], gradients[("fsdp", *update)]
        assert ddp.keys() == fsdp.keys(), update
        for name, want in ddp.items():
            if want is None:
                assert fsdp[name] is None, (update, name)
            else:
                assert relative_error(fsdp[name], want) < 1e-6, (update, name)
        given = [g for g in fsdp.values() if g is not None]
        assert torch.cat([g.flatten() for g in given]).norm() == pytest.approx(0.5, rel=1e-4), update  # clipped
    decoder_only = gradients[("fsdp", "vae", 1)]
    assert all(g is None for name, g in decoder_only.items() if name.startswith("encoder."))
    assert all(g is not None for name, g in decoder_only.items() if name.startswith("decoder."))
    assert gradients[("fsdp", "clip", 0)]["logit_scale"].abs() > 0
    # bf16 compute: the units gathered in bf16 for the forward; float32 weights and gradients
    assert gradients["bf16"] == {"forward": {torch.bfloat16}, "weights": {torch.float32},
                                 "gradients": {torch.float32}}


def test_a_killed_fsdp_run_resumes_to_the_uninterrupted_run(tokenized: Path, fsdp_run: Path) -> None:
    run_dir = shutil.copytree(tokenized, tokenized.parent / "killed")
    killed = torchrun(str(ROOT / "tests" / "train_killed.py"), "dalle", "3", "1", "--out", str(run_dir))
    assert killed.returncode != 0
    assert "SIGKILL" in killed.stderr, killed.stderr[-3000:]  # torchrun reports the killed process
    assert load_checkpoint(run_dir, "dalle").step == 2
    assert load_checkpoint(run_dir, "clip") is None
    train_all_under_torchrun(run_dir)
    for stage in STAGES:
        a, b = load_checkpoint(fsdp_run, stage), load_checkpoint(run_dir, stage)
        assert a.step == b.step and a.weights.keys() == b.weights.keys()
        for name, tensor in a.weights.items():
            assert torch.equal(b.weights[name], tensor), (stage, name)
        assert without_seconds(records(run_dir, stage)) == without_seconds(records(fsdp_run, stage))


@pytest.mark.parametrize("crash", ["writing the sharded state", "before the pointer moves"])
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint(crash: str, without_dalle: Path,
                                                                     single_dalle: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = shutil.copytree(without_dalle, tmp_path / "run")
    config = Config.load(run_dir)
    loop = dalle_fast.train.loop
    save_sharded, save_checkpoint = loop.save_sharded, loop.save_checkpoint

    def torn_save_sharded(model, optimizer, directory: Path) -> None:
        if directory.name.startswith(".dalle-00000004"):
            directory.mkdir()
            (directory / ".metadata").write_bytes(b"torn")
            raise RuntimeError("simulated crash")
        save_sharded(model, optimizer, directory)

    def late_save_checkpoint(run_dir_: Path, stage: str, checkpoint) -> Path:
        if checkpoint.step == 4:
            raise RuntimeError("simulated crash")
        return save_checkpoint(run_dir_, stage, checkpoint)

    with monkeypatch.context() as patch:
        if crash == "writing the sharded state":
            patch.setattr(loop, "save_sharded", torn_save_sharded)
        else:
            patch.setattr(loop, "save_checkpoint", late_save_checkpoint)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config, run_dir, "dalle", resume=True)
    previous = load_checkpoint(run_dir, "dalle")
    assert previous.step == 2 and previous.sharded == "dalle-00000002.dcp"
    left = {p.name for p in run_dir.glob("*dalle-00000004*")}
    assert left == ({".dalle-00000004.dcp.tmp"} if crash == "writing the sharded state" else {"dalle-00000004.dcp"})
    train(config, run_dir, "dalle", resume=True)  # from step 2, through the sharded state of step 2
    a, b = load_checkpoint(single_dalle, "dalle"), load_checkpoint(run_dir, "dalle")
    assert b.step == DALLE_STEPS
    for name, tensor in a.weights.items():
        assert torch.equal(b.weights[name], tensor), name
    assert without_seconds(records(run_dir, "dalle")) == without_seconds(records(single_dalle, "dalle"))
    assert not list(run_dir.glob(".*.tmp"))  # what the crash left is gone


def test_the_ema_is_refused_under_fsdp(tokenized: Path, tmp_path: Path, capsys) -> None:
    run_dir = shutil.copytree(tokenized, tmp_path / "run")
    config = Config.load(run_dir)
    vae = config.vae
    config = dataclasses.replace(config, vae=dataclasses.replace(vae, optim=dataclasses.replace(vae.optim,
                                                                                                ema_decay=0.9)))
    with pytest.raises(UsageError, match=r"vae\.optim\.ema_decay 0\.9 of the vae stage: .* train\.parallel 'fsdp'"):
        train(config, run_dir, "vae")
    config.save(run_dir)
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--stage", "vae", "--out", str(run_dir)])
    assert exit_info.value.code == 2
    assert "set ema_decay to 0 or train.parallel to 'ddp'" in capsys.readouterr().err
    assert not list(run_dir.glob("vae-*"))
