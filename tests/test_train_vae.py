"""Training stage vae: the command line, the run directory it writes, exact resume after a crash,
atomic checkpoints, and the guard rails (existing runs, changed configs, bad arguments, bad data).

Runs are the tiny preset shortened to a few steps, on the CPU, in-process through
``dalle_fast.train.main`` (one subprocess proves the module entry point).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from stage_runs import check_exact_resume, one_thread, records, resume_config, run_main  # noqa: F401 - a fixture

import dalle_fast.atomic
import dalle_fast.train.vae
from dalle_fast.checkpoint import KEEP, Checkpoint, load_checkpoint, save_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.data import ShapesDataset
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.ema import EMA
from dalle_fast.grid import PADDING
from dalle_fast.run import load_vae
from dalle_fast.train import main
from dalle_fast.train.loader import IndexStream
from dalle_fast.train.vae_augment import augment
from dalle_fast.validation import GRID_IMAGES

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_KEYS = {"stage", "split", "step", "loss", "recon", "kl", "marginal_kl", "tau", "kl_weight", "lr", "decoder_only",
              "perplexity", "codes_used", "seconds"}
VAL_KEYS = {"stage", "split", "step", "psnr", "codes_used", "perplexity", "attribute_agreement",
            "attribute_agreement_heldout", "seconds"}
STEPS = 4  # of the shared CLI run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished ``--preset tiny --steps 4`` run (default ``--stage all``: tokenizer, vae, dalle
    and clip, 4 steps each) and what it printed."""
    run_dir = tmp_path_factory.mktemp("train") / "tiny"
    return run_dir, run_main(["--preset", "tiny", "--steps", str(STEPS), "--out", str(run_dir)])


def test_cli_run_writes_config_metrics_grid_and_checkpoint(tiny_run: tuple[Path, str]) -> None:
    run_dir, printed = tiny_run
    config = Config.load(run_dir)
    expected = preset("tiny")
    assert config == dataclasses.replace(expected, **{name: dataclasses.replace(
        getattr(expected, name), optim=dataclasses.replace(getattr(expected, name).optim, steps=STEPS))
        for name in ("vae", "transformer", "clip")})

    # log_every and eval_every exceed 4: both records come from the last step
    train_row, val_row = [r for r in records(run_dir) if r["stage"] == "vae"]
    assert set(train_row) == TRAIN_KEYS and set(val_row) == VAL_KEYS
    assert [(r["stage"], r["split"], r["step"]) for r in (train_row, val_row)] == [("vae", "train", 4),
                                                                                   ("vae", "val", 4)]
    # The 4th update (index 3): tau annealed over round(0.5 * 4) = 2 steps is at its end, the KL
    # warmup of round(0.1 * 4) = 0 steps is done, the lr is on its cosine from 2e-3 to 1e-4.
    assert train_row["tau"] == 1 / 16 and train_row["kl_weight"] == config.vae.kl_weight
    assert train_row["lr"] == pytest.approx(1e-4 + (2e-3 - 1e-4) * (1 + math.cos(math.pi * 3 / 4)) / 2, rel=1e-12)
    kl_per_pixel = train_row["kl"] * 4 * 4 / (3 * 32 * 32)  # the mean KL per latent, per pixel-channel
    assert train_row["loss"] == pytest.approx(train_row["recon"] + train_row["kl_weight"] * kl_per_pixel
                                              + config.vae.usage_weight * train_row["marginal_kl"], rel=1e-5)
    assert 0 < train_row["codes_used"] <= 1 and 1 <= train_row["perplexity"] <= 64
    assert 0 <= val_row["attribute_agreement"] <= 1 and 0 <= val_row["attribute_agreement_heldout"] <= 1

    pointer = json.loads((run_dir / "vae-latest.json").read_text())
    assert pointer == {"step": 4, "weights": "vae-00000004.safetensors", "state": "vae-00000004.state.safetensors"}
    weights = load_file(run_dir / pointer["weights"])
    model = DiscreteVAE(config)
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(weights)
    loaded = load_vae(config, run_dir)  # no EMA in this run: the model's weights
    assert not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())

    # The val metrics, recomputed independently from the checkpoint: PSNR of decode(encode(x)).
    val = ShapesDataset.from_config(config, "val")
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        tokens = model.encode(images)
        recon = model.decode(tokens)
    mse = ((recon.double() - images.double()) ** 2).flatten(1).mean(1)
    assert val_row["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)
    counts = torch.bincount(tokens.flatten(), minlength=64)
    assert val_row["codes_used"] == pytest.approx(float((counts > 0).double().mean()))

    # The grid: originals (row 0) above reconstructions (row 1), GRID_IMAGES columns.
    side = config.image_size
    for name in ("vae_samples_00000004.png", "vae_samples_latest.png"):
        with Image.open(run_dir / name) as png:
            assert png.size == (GRID_IMAGES * (side + PADDING) + PADDING, 2 * (side + PADDING) + PADDING)
            grid = torch.from_numpy(np.array(png.convert("RGB"))).permute(2, 0, 1).float() / 255
    for column in (0, GRID_IMAGES - 1):
        left = PADDING + column * (side + PADDING)
        top_tile = grid[:, PADDING:PADDING + side, left:left + side]
        bottom_tile = grid[:, 2 * PADDING + side:2 * (PADDING + side), left:left + side]
        assert torch.allclose(top_tile, images[column], atol=0.5 / 255 + 1e-6)
        assert torch.allclose(bottom_tile, recon[column], atol=0.5 / 255 + 1e-6)

    assert all(f"{stage}: " in printed for stage in ("tokenizer", "vae", "dalle", "clip"))
    assert f"val PSNR {val_row['psnr']:.2f} dB" in printed


def test_existing_run_needs_resume_and_the_same_config(tiny_run: tuple[Path, str], capsys) -> None:
    run_dir, _ = tiny_run
    before = (run_dir / "metrics.jsonl").read_text()
    cases = [
        (["--stage", "vae", "--preset", "tiny", "--steps", "4"], "pass --resume"),
        (["--stage", "vae", "--preset", "demo", "--resume"], "name: saved 'tiny', given 'demo'"),
        (["--stage", "vae", "--resume", "--steps", "5"], "vae.optim.steps: saved 4, given 5"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out", str(run_dir)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    # Resuming the finished run with its saved config has nothing left to do.
    assert "4/4 steps" in run_main(["--stage", "vae", "--resume", "--out", str(run_dir)])
    assert (run_dir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--stage", "dalle"], "tokenizer.json is missing: run the tokenizer stage first"),
    (["--stage", "clip"], "tokenizer.json is missing: run the tokenizer stage first"),
    (["--steps", "0"], "--steps: must be a positive integer, got '0'"),
    (["--data", "{tmp}/missing"], "--data: no such file or folder"),
    (["--data", str(FIXTURES / "coco" / "captions.json")], "--images: required with the captions JSON"),
    (["--images", str(FIXTURES / "coco" / "images")], "--images: only used with a COCO-style captions JSON"),
])
def test_bad_arguments_exit_with_a_clear_message(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--out", str(out), *(a.format(tmp=tmp_path) for a in argv)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_help_runs_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dalle_fast.train", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert all(flag in result.stdout for flag in ("--stage", "--preset", "--data", "--images", "--out", "--resume",
                                                  "--steps"))


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    check_exact_resume(resume_config("vae"), "vae", tmp_path, monkeypatch, dalle_fast.train.vae, "vae_schedule")


def test_decoder_finetuning_freezes_the_encoder_skips_augmentation_and_resumes_exactly(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """8 steps, the last 4 fine-tuning the decoder, with augmentation on; the run crashes in
    update 6 and resumes from the step-4 checkpoint (see ``check_exact_resume``)."""
    config = resume_config("vae")
    config = dataclasses.replace(config, vae=dataclasses.replace(
        config.vae, decoder_finetune_fraction=0.5, augment_shift=2, augment_composite=0.5))
    augmented_batches = []

    def counting(images, vae):
        augmented_batches.append(len(images))
        return augment(images, vae)

    monkeypatch.setattr(dalle_fast.train.vae, "augment", counting)
    final = check_exact_resume(config, "vae", tmp_path, monkeypatch, dalle_fast.train.vae, "vae_schedule")
    # steps 0-3 of the straight run and of the crashed run; no fine-tuning step augments
    assert augmented_batches == [32] * 8
    at_4 = load_file(tmp_path / "straight" / "vae-00000004.safetensors")
    for name, weight in final.weights.items():
        if name.startswith("encoder."):
            assert torch.equal(weight, at_4[name]), name
        elif name.startswith("decoder.") and name.endswith(".weight"):
            assert not torch.equal(weight, at_4[name]), name
    train_records = [r for r in records(tmp_path / "straight", "vae") if r["split"] == "train"]
    assert [r["decoder_only"] for r in train_records] == [False, False, True, True]  # steps 2, 4, 6, 8
    assert all(r["loss"] == r["recon"] for r in train_records[2:])


def fake_checkpoint(step: int) -> Checkpoint:
    return Checkpoint(step, {"w": torch.randn(3, 4)}, {"m": torch.randn(5), "s": torch.tensor(float(step))},
                      {"step": step, "note": "x"})


@pytest.mark.parametrize("failing_replace", [0, 1, 2])  # weights file, state file, pointer
def test_a_checkpoint_write_that_fails_leaves_the_previous_one_loadable(tmp_path: Path, monkeypatch,
                                                                        failing_replace: int) -> None:
    first = fake_checkpoint(1)
    save_checkpoint(tmp_path, "vae", first)
    replace, calls = os.replace, []

    def flaky_replace(src, dst):
        assert Path(src).stat().st_size > 0  # the temp file was written
        calls.append(dst)
        if len(calls) - 1 == failing_replace:
            raise OSError("disk gone")
        replace(src, dst)

    monkeypatch.setattr(dalle_fast.atomic.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(tmp_path, "vae", fake_checkpoint(2))
    monkeypatch.setattr(dalle_fast.atomic.os, "replace", replace)

    loaded = load_checkpoint(tmp_path, "vae")
    assert loaded.step == 1 and loaded.meta == first.meta
    for got, want in ((loaded.weights, first.weights), (loaded.state, first.state)):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not list(tmp_path.glob(".*.tmp"))
    # The next successful save moves on and prunes to the newest KEEP pairs, orphans included.
    for step in (3, 4, 5):
        save_checkpoint(tmp_path, "vae", fake_checkpoint(step))
    assert load_checkpoint(tmp_path, "vae").step == 5
    kept = sorted(p.name for p in tmp_path.glob("vae-0*"))
    assert kept == sorted(f"vae-{s:08d}{kind}.safetensors" for s in range(6 - KEEP, 6) for kind in ("", ".state"))


def test_a_pointer_to_a_mismatched_file_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "vae", fake_checkpoint(1))
    save_checkpoint(tmp_path, "vae", fake_checkpoint(2))
    shutil.copy(tmp_path / "vae-00000001.state.safetensors", tmp_path / "vae-00000002.state.safetensors")
    with pytest.raises(ValueError, match="step 1"):
        load_checkpoint(tmp_path, "vae")


def test_load_vae_without_a_checkpoint_says_to_train_it(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--stage vae"):
        load_vae(preset("tiny"), tmp_path)


def test_user_folder_with_broken_images_trains(tmp_path: Path) -> None:
    folder = shutil.copytree(FIXTURES / "folder", tmp_path / "data")
    # A JPEG cut short passes the header check and fails only when decoded, during training.
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(encoded, "JPEG")
    (folder / "cut.jpg").write_bytes(encoded.getvalue()[:-300])
    (folder / "cut.txt").write_text("a photo of a blue sky\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        printed = run_main(["--stage", "vae", "--preset", "tiny", "--steps", "2", "--data", str(folder),
                            "--out", str(out)])
    assert "kept 4/7 images" in printed and "1 unreadable" in printed  # the report, printed before training
    val_row = records(out)[-1]
    assert val_row["split"] == "val" and "attribute_agreement" not in val_row and math.isfinite(val_row["psnr"])
    assert Config.load(out).data.dataset == str(folder.resolve())


def test_coco_captions_train(tmp_path: Path) -> None:
    printed = run_main(["--stage", "vae", "--preset", "tiny", "--steps", "1", "--data",
                        str(FIXTURES / "coco" / "captions.json"), "--images", str(FIXTURES / "coco" / "images"),
                        "--out", str(tmp_path / "run")])
    assert "kept 2/4 images" in printed
    assert load_checkpoint(tmp_path / "run", "vae").step == 1


def test_index_stream_is_seeded_epochs_of_permutations_resumable_anywhere() -> None:
    def take(stream: IndexStream, n: int) -> list[int]:
        it = iter(stream)
        return [next(it) for _ in range(n)]

    full = take(IndexStream(7, seed=3), 30)
    epochs = [full[i:i + 7] for i in range(0, 28, 7)]
    assert all(sorted(e) == list(range(7)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 4
    for start in (0, 5, 7, 19):
        assert take(IndexStream(7, seed=3, start=start), 30 - start) == full[start:]
    assert take(IndexStream(7, seed=4), 30) != full


def test_ema_follows_the_running_average() -> None:
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.75)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.75 * start["weight"] + 0.25 * model.weight)
    assert torch.equal(ema.model.bias, model.bias) and not ema.model.weight.requires_grad
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)
