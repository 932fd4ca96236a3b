"""TensorBoard events of training (:mod:`dalle_fast.train.tensorboard`), read back with
tensorboard's ``EventAccumulator``:

- a vae stage, crashed after its step-2 checkpoint and resumed, leaves under ``RUN/tb/vae/`` every
  number of every record of ``metrics.jsonl`` as a scalar at its step, once (the crashed
  session's later events are purged), and each eval's sample grid as an image;
- without tensorboard, training writes no events and says so once per process; importing the
  package never imports tensorboard.
"""
from __future__ import annotations

import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stage_runs import crashing_at, one_thread, records  # noqa: F401 - a fixture
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dalle_fast.train.tensorboard as tensorboard
import dalle_fast.train.vae
from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.train import train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(steps: int = 4) -> Config:
    """tiny, ``steps`` vae steps and 1 clip step in batches of 8, records every step, an
    evaluation and a checkpoint every 2 steps."""
    config = preset("tiny")
    vae, clip = config.vae, config.clip
    return dataclasses.replace(
        config, vae=dataclasses.replace(vae, optim=dataclasses.replace(vae.optim, steps=steps, batch_size=8)),
        clip=dataclasses.replace(clip, optim=dataclasses.replace(clip.optim, steps=1, batch_size=8)),
        data=dataclasses.replace(config.data, train_size=16, val_size=8),
        train=dataclasses.replace(config.train, log_every=1, eval_every=2, checkpoint_every=2))


def events(run_dir: Path, stage: str) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb" / stage), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_the_events_hold_the_records_and_sample_grids_of_a_resumed_stage(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config, run_dir = tiny_config(), tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(dalle_fast.train.vae, "vae_schedule", crashing_at(3, dalle_fast.train.vae.vae_schedule))
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config, run_dir, "vae")
    assert load_checkpoint(run_dir, "vae").step == 2 and records(run_dir, "vae")[-1]["step"] == 3
    train(config, run_dir, "vae", resume=True)

    board = events(run_dir, "vae")
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records(run_dir, "vae"):
        for key, value in record.items():
            if key not in ("stage", "split", "step", "seconds") and not isinstance(value, (bool, str)):
                if math.isfinite(value):
                    expected.setdefault(f"{record['split']}/{key}", []).append((record["step"], value))
    assert set(board.Tags()["scalars"]) == set(expected)
    assert {"train/loss", "train/tau", "train/lr", "val/psnr"} <= set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in board.Scalars(tag)]
        assert [step for step, _ in got] == [step for step, _ in points], tag  # each step once: step 3 purged
        assert np.allclose([v for _, v in got], [v for _, v in points], rtol=1e-6), tag  # float32 in the events
    assert [r["step"] for r in records(run_dir, "vae") if r["split"] == "train"] == [1, 2, 3, 4]

    images = board.Images("samples")
    assert [image.step for image in images] == [2, 4]
    with Image.open(run_dir / "vae_samples_00000004.png") as png:
        want = np.asarray(png.convert("RGB"))
    got = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(got, want)


def test_without_tensorboard_training_writes_no_events_and_says_so_once(tmp_path: Path, capsys,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorboard, "available", lambda: False)
    monkeypatch.setattr(tensorboard, "_said_missing", False)
    config, run_dir = tiny_config(steps=2), tmp_path / "run"
    for stage in ("tokenizer", "vae", "clip"):
        train(config, run_dir, stage)
    assert not (run_dir / "tb").exists()
    assert [r["step"] for r in records(run_dir, "vae")] == [1, 2, 2]  # train 1, 2 and val 2: as ever
    assert capsys.readouterr().err.count(f"tensorboard is not installed, so no TensorBoard events are written "
                                         f"(metrics.jsonl has every record); to get them: {tensorboard.INSTALL}") == 1


def test_importing_the_package_does_not_import_tensorboard() -> None:
    code = ("import sys, dalle_fast, dalle_fast.train, dalle_fast.train.loop, dalle_fast.generate, "
            "dalle_fast.evaluate\n"
            "print(sorted(m for m in sys.modules if 'tensorboard' in m and not m.startswith('dalle_fast')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "[]"
