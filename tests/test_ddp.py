"""Training under torchrun / DDP on the CPU (gloo): two processes on slices of each global batch
equal one process on the whole batch.

- the gradients of one update of the dalle stage, two processes spawned with
  ``torch.multiprocessing`` vs this process alone, also with the processes' slices cut into 2
  accumulated micro-batches each (``optim.accumulation``);
- ``torchrun --nproc_per_node 2 -m dalle_fast.train --stage dalle`` vs the same stage run here:
  the logged losses, the weights after the run, one summary line printed;
- the rank slices of the train stream, and the error of a global batch the processes cannot share.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from stage_runs import (  # noqa: F401 - one_thread is a fixture
    dalle_trainer,
    free_port,
    one_thread,
    prepare_dalle_stage,
    records,
    relative_error,
    run_main,
)

import dalle_fast.train.loop
from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.device import World, process_group
from dalle_fast.train import train
from dalle_fast.train.loader import IndexStream, RankSlice, train_loader

STEPS = 3
BATCH = 8  # global: 4 per process


def ddp_config() -> Config:
    """tiny with a 48-item train split, 1 vae step, and ``STEPS`` dalle steps of ``BATCH``
    samples, logged every step, with gradient clipping and BPE dropout on."""
    config = preset("tiny")
    vae, transformer = config.vae, config.transformer
    return dataclasses.replace(
        config, vae=dataclasses.replace(vae, optim=dataclasses.replace(vae.optim, steps=1)),
        transformer=dataclasses.replace(transformer, optim=dataclasses.replace(
            transformer.optim, steps=STEPS, batch_size=BATCH, grad_clip=0.5, weight_decay=0.1)),
        data=dataclasses.replace(config.data, train_size=48, val_size=16),
        train=dataclasses.replace(config.train, log_every=1, eval_every=STEPS, checkpoint_every=STEPS))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory of :func:`ddp_config` with its tokenizer, dVAE and token cache."""
    return prepare_dalle_stage(ddp_config(), tmp_path_factory.mktemp("ddp") / "run")


def first_update(run_dir: Path, accumulation: int = 1) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of this process's slice and every parameter's gradient (after the all-reduce
    and clipping) in the first update of the dalle stage in ``run_dir``, in ``accumulation``
    micro-batches."""
    config = Config.load(run_dir)
    transformer = config.transformer
    config = dataclasses.replace(config, transformer=dataclasses.replace(
        transformer, optim=dataclasses.replace(transformer.optim, accumulation=accumulation)))
    trainer = dalle_trainer(config, run_dir)
    batch = next(iter(train_loader(trainer.data.train, BATCH, config.train.seed, 0, 0, trainer.world.rank,
                                   trainer.world.size)))
    metrics = trainer.update(batch, trainer.settings(0))
    return metrics["loss"], {name: p.grad.clone() for name, p in trainer.model.named_parameters()}


def _update_worker(rank: int, run_dir: Path, port: int) -> None:
    """Process ``rank`` of 2: :func:`first_update` in a gloo group, without and with accumulation,
    saved to ``run_dir``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    with process_group() as world:
        assert world == World(rank, 2, rank)
        results = {accumulation: first_update(run_dir, accumulation) for accumulation in (1, 2)}
    torch.save(results, run_dir / f"update{rank}.pt")


def test_two_processes_compute_the_gradients_of_the_whole_batch(prepared: Path) -> None:
    loss, grads = first_update(prepared)  # one process, the whole batch
    mp.spawn(_update_worker, args=(prepared, free_port()), nprocs=2, join=True)
    results = [torch.load(prepared / f"update{r}.pt") for r in (0, 1)]
    for accumulation in (1, 2):
        (loss0, grads0), (loss1, grads1) = (result[accumulation] for result in results)
        assert (loss0 + loss1) / 2 == pytest.approx(loss, rel=1e-6)  # equal slices: mean of means
        assert loss0 != pytest.approx(loss1, rel=1e-3)  # the processes did see different samples
        assert grads0.keys() == grads.keys()
        for name, want in grads.items():
            assert torch.equal(grads0[name], grads1[name]), (accumulation, name)  # all-reduced
            assert relative_error(grads0[name], want) < 1e-6, (accumulation, name)
    clipped = torch.cat([g.flatten() for g in grads.values()]).norm()
    assert clipped == pytest.approx(0.5, rel=1e-4)  # clipped, after averaging


def test_torchrun_dalle_stage_equals_the_single_process_run(prepared: Path, tmp_path: Path) -> None:
    single, distributed = (shutil.copytree(prepared, tmp_path / name) for name in ("single", "ddp"))
    config = Config.load(single)
    train(config, single, "dalle", resume=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dalle_fast.train", "--stage", "dalle", "--resume", "--out", str(distributed)],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("dalle: 3/3 steps") == 1  # rank 0 alone prints

    want, got = records(single, "dalle"), records(distributed, "dalle")
    assert [(r["split"], r["step"]) for r in got] == [(r["split"], r["step"]) for r in want]
    for a, b in zip(want, got, strict=True):
        for key in ("loss", "text_loss", "image_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)
    a, b = load_checkpoint(single, "dalle"), load_checkpoint(distributed, "dalle")
    assert a.meta["samples_seen"] == b.meta["samples_seen"] == STEPS * BATCH
    # Adam divides by the root of the squared gradients, which magnifies rounding where they are
    # tiny: the weights agree less tightly than the losses and gradients.
    for name, tensor in a.weights.items():
        assert relative_error(b.weights[name], tensor) < 1e-3, name
    assert sorted(p.name for p in distributed.iterdir()) == sorted(p.name for p in single.iterdir())


def test_rank_slices_share_out_each_global_batch() -> None:
    stream = IndexStream(11, seed=2, start=5)
    whole = list(itertools.islice(iter(stream), 36))
    slices = [list(itertools.islice(iter(RankSlice(stream, 12, rank, 3)), 12)) for rank in range(3)]
    for batch in range(3):
        parts = [s[4 * batch:4 * (batch + 1)] for s in slices]
        assert sum(parts, []) == whole[12 * batch:12 * (batch + 1)]
    assert list(itertools.islice(iter(RankSlice(stream, 12, 0, 1)), 36)) == whole
    with pytest.raises(ValueError, match="rank"):
        RankSlice(stream, 12, 3, 3)
    with pytest.raises(ValueError, match="batch_size"):
        RankSlice(stream, 10, 0, 3)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_global_batch_the_processes_cannot_share_is_refused(accumulation: int, prepared: Path, tmp_path: Path,
                                                              capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = shutil.copytree(prepared, tmp_path / "run")
    config = Config.load(run_dir)
    transformer = config.transformer
    dataclasses.replace(config, transformer=dataclasses.replace(transformer, optim=dataclasses.replace(
        transformer.optim, accumulation=accumulation))).save(run_dir)
    monkeypatch.setattr(dalle_fast.train.loop, "world", lambda: World(0, 3, 0))
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--stage", "dalle", "--resume", "--out", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert ("transformer.optim of the dalle stage: OptimConfig.batch_size: must be a multiple of accumulation x "
            f"processes = {accumulation} x 3 = {3 * accumulation} (the global batch is micro-batch x accumulation x "
            f"processes), got batch_size {BATCH}") in err
    assert "optim.accumulation" in err and "--nproc_per_node 3" in err
    assert not list(run_dir.glob("dalle-*"))


def test_torchrun_vae_stage_fine_tunes_the_decoder_with_the_encoder_frozen(tmp_path: Path) -> None:
    """The encoder gets no gradient in the decoder fine-tuning steps: DDP must expect that
    (``find_unused_parameters``) or its second such step fails."""
    config = preset("tiny")
    vae = dataclasses.replace(config.vae, decoder_finetune_fraction=0.5,
                              optim=dataclasses.replace(config.vae.optim, steps=4, batch_size=BATCH))
    config = dataclasses.replace(config, vae=vae, data=dataclasses.replace(config.data, train_size=48, val_size=16),
                                 train=dataclasses.replace(config.train, log_every=1, eval_every=4,
                                                           checkpoint_every=2))
    run_dir = tmp_path / "run"
    config.save(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dalle_fast.train", "--stage", "vae", "--resume", "--out", str(run_dir)],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["decoder_only"] for r in records(run_dir, "vae") if r["split"] == "train"] == [False, False, True, True]
    at_2 = load_file(run_dir / "vae-00000002.safetensors")
    final = load_checkpoint(run_dir, "vae").weights
    assert all(torch.equal(final[name], at_2[name]) for name in final if name.startswith("encoder."))
    assert not torch.equal(final["decoder.codebook_conv.weight"], at_2["decoder.codebook_conv.weight"])
