"""Stage dalle: the command line run after the tokenizer and vae stages, what it writes (metrics,
sample grids, checkpoints, the token cache), values recomputed from the saved weights, exact
resume after a crash, the token cache reused and rebuilt, the per-sample caption draws, user
data, and the error of a run without a trained dVAE.

Runs are the tiny preset shortened to a few steps and a small train split, on the CPU,
in-process through ``dalle_fast.train.main`` on the config saved in the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stage_runs import check_exact_resume, one_thread, records, resume_config, run_main  # noqa: F401 - a fixture

import dalle_fast.train.loop
import dalle_fast.train.tokens
from dalle_fast.checkpoint import load_checkpoint, save_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.data import ShapesDataset
from dalle_fast.data.splits import load_data
from dalle_fast.grid import PADDING
from dalle_fast.model import DALLE
from dalle_fast.run import UsageError, load_dalle, load_vae
from dalle_fast.tokenizer import CaptionTokenizer
from dalle_fast.train import main
from dalle_fast.train.dalle import (
    HELD_IN_PROMPTS,
    HELD_OUT_PROMPTS,
    SAMPLES_PER_PROMPT,
    sample_prompts,
    training_text,
)
from dalle_fast.train.tokens import CACHE_FILE, cache_key, read_cache, token_cache

FIXTURES = Path(__file__).parent / "fixtures"
STEPS = 4
TRAIN_KEYS = {"stage", "split", "step", "loss", "text_loss", "image_loss", "lr", "seconds"}
VAL_KEYS = {"stage", "split", "step", "loss", "text_loss", "image_loss", "image_bits_per_token", "samples_correct",
            "samples_correct_heldout", "seconds"}


def small_config(dataset: str = "shapes") -> Config:
    """tiny with a 64-item train split, a 32-item val split, 2 vae steps and ``STEPS`` dalle
    steps in batches of 16, logging, validating and checkpointing every 2 steps."""
    config = preset("tiny")
    vae, transformer = config.vae, config.transformer
    return dataclasses.replace(
        config, vae=dataclasses.replace(vae, optim=dataclasses.replace(vae.optim, steps=2)),
        transformer=dataclasses.replace(transformer, optim=dataclasses.replace(transformer.optim, steps=STEPS,
                                                                               batch_size=16)),
        data=dataclasses.replace(config.data, dataset=dataset, train_size=64, val_size=32),
        train=dataclasses.replace(config.train, log_every=2, eval_every=2, checkpoint_every=2))


def run_stages(config: Config, run_dir: Path, stages: tuple[str, ...]) -> str:
    """Save ``config`` in ``run_dir``, then run each of ``stages`` through the command line on
    that saved config (``--stage S --resume``); returns what they printed."""
    config.save(run_dir)
    return "".join(run_main(["--stage", stage, "--resume", "--out", str(run_dir)]) for stage in stages)


@pytest.fixture(scope="module")
def dalle_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Stages tokenizer, vae and dalle, one command each, in a run directory holding the
    config of :func:`small_config` but 300 vae and dalle steps, cut short by ``--steps``; and
    what the dalle stage printed."""
    run_dir = tmp_path_factory.mktemp("train") / "tiny"
    config = small_config()
    dataclasses.replace(config, vae=preset("tiny").vae, transformer=preset("tiny").transformer).save(run_dir)
    run_main(["--stage", "tokenizer", "--out", str(run_dir)])
    run_main(["--stage", "vae", "--steps", "2", "--out", str(run_dir)])
    printed = run_main(["--stage", "dalle", "--steps", str(STEPS), "--out", str(run_dir)])
    saved = Config.load(run_dir)
    assert saved.transformer == dataclasses.replace(preset("tiny").transformer, optim=dataclasses.replace(
        preset("tiny").transformer.optim, steps=STEPS))
    assert saved.vae.optim.steps == 2 and saved.data == config.data
    return run_dir, printed


@pytest.mark.parametrize("argv, message", [
    (["--stage", "dalle", "--steps", "5"], "already holds a run with checkpoints (dalle); pass --resume"),
    (["--stage", "dalle", "--steps", "5", "--resume"], "transformer.optim.steps: saved 4, given 5"),
    (["--stage", "dalle", "--preset", "tiny", "--resume"], "data.train_size: saved 64, given 4096"),
    (["--stage", "clip", "--data", str(FIXTURES / "folder")], "data.dataset: saved 'shapes'"),
])
def test_a_run_with_checkpoints_keeps_its_config(dalle_run: tuple[Path, str], capsys, argv: list[str],
                                                 message: str) -> None:
    run_dir, _ = dalle_run
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(run_dir)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_dalle_stage_writes_metrics_checkpoints_and_the_token_cache(dalle_run: tuple[Path, str]) -> None:
    run_dir, printed = dalle_run
    config = Config.load(run_dir)
    rows = records(run_dir, "dalle")
    assert [(r["split"], r["step"]) for r in rows] == [("train", 2), ("val", 2), ("train", 4), ("val", 4)]
    assert all(set(r) == (TRAIN_KEYS if r["split"] == "train" else VAL_KEYS) for r in rows)
    assert load_checkpoint(run_dir, "dalle").step == STEPS
    assert sorted(p.name for p in run_dir.glob("dalle-*")) == [
        "dalle-00000002.safetensors", "dalle-00000002.state.safetensors", "dalle-00000004.safetensors",
        "dalle-00000004.state.safetensors", "dalle-latest.json"]
    assert f"dalle: {STEPS}/{STEPS} steps" in printed and "token cache built" in printed

    # The cache holds the dVAE's argmax tokens of every train and val image, in order.
    vae = load_vae(config, run_dir)
    cache = read_cache(run_dir, cache_key(config, load_data(config), vae))
    assert cache is not None and cache["train"].dtype == torch.int16
    for split in ("train", "val"):
        dataset = ShapesDataset.from_config(config, split)
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        expected = vae.encode(images).flatten(1)
        assert cache[split].shape == (len(dataset), config.image_seq_len)
        assert torch.equal(cache[split].long(), expected)


def test_val_record_is_recomputed_from_the_saved_weights(dalle_run: tuple[Path, str]) -> None:
    run_dir, printed = dalle_run
    config = Config.load(run_dir)
    model = load_dalle(config, run_dir)
    assert isinstance(model, DALLE) and not model.training
    weights = load_checkpoint(run_dir, "dalle").weights  # no EMA in this run: the model's weights
    assert all(torch.equal(t, weights[name]) for name, t in model.state_dict().items())
    val = ShapesDataset.from_config(config, "val")
    tokenizer = CaptionTokenizer.load(run_dir)
    tokens = read_cache(run_dir, cache_key(config, load_data(config), load_vae(config, run_dir)))["val"].long()
    with torch.no_grad():
        output = model(tokenizer.encode([val.captions(i)[0] for i in range(len(val))]), tokens)
    final = records(run_dir, "dalle")[-1]
    assert final["loss"] == pytest.approx(output.loss.item(), rel=1e-5)
    assert final["text_loss"] == pytest.approx(output.text_loss.item(), rel=1e-5)
    assert final["image_loss"] == pytest.approx(output.image_loss.item(), rel=1e-5)
    assert final["image_bits_per_token"] == pytest.approx(output.image_loss.item() / math.log(2), rel=1e-5)
    assert 0 <= final["samples_correct"] <= 1 and 0 <= final["samples_correct_heldout"] <= 1
    assert f"val loss {final['loss']:.3f}, image {final['image_bits_per_token']:.3f} bits/token" in printed


def test_sample_grid_shows_each_prompt_s_val_image_then_its_samples(dalle_run: tuple[Path, str]) -> None:
    run_dir, _ = dalle_run
    config = Config.load(run_dir)
    val = ShapesDataset.from_config(config, "val")
    prompts = sample_prompts([val.captions(i) for i in range(len(val))], [val.attributes(i) for i in range(len(val))],
                             config.data.holdout)
    assert prompts.heldout == [False] * HELD_IN_PROMPTS + [True] * HELD_OUT_PROMPTS
    side = config.image_size
    for name in ("dalle_samples_00000002.png", "dalle_samples_00000004.png", "dalle_samples_latest.png"):
        with Image.open(run_dir / name) as png:
            assert png.size == ((1 + SAMPLES_PER_PROMPT) * (side + PADDING) + PADDING,
                                len(prompts.indices) * (side + PADDING) + PADDING)
    with Image.open(run_dir / "dalle_samples_latest.png") as png:
        grid = torch.from_numpy(np.array(png.convert("RGB"))).permute(2, 0, 1).float() / 255
    for row, index in enumerate(prompts.indices):
        top = PADDING + row * (side + PADDING)
        first_tile = grid[:, top:top + side, PADDING:PADDING + side]
        assert torch.allclose(first_tile, val[index][0], atol=0.5 / 255 + 1e-6)
    assert (run_dir / "dalle_samples_latest.png").read_bytes() == (run_dir / "dalle_samples_00000004.png").read_bytes()


def test_sample_prompts_pick_held_in_then_held_out_pairs_or_the_first_items() -> None:
    config = preset("tiny")
    val = ShapesDataset.from_config(config, "val")
    captions, attributes = [val.captions(i) for i in range(100)], [val.attributes(i) for i in range(100)]
    prompts = sample_prompts(captions, attributes, config.data.holdout)
    held = [(a.color, a.shape) in config.data.holdout for a in attributes]
    assert prompts.indices == ([i for i in range(100) if not held[i]][:HELD_IN_PROMPTS]
                               + [i for i in range(100) if held[i]][:HELD_OUT_PROMPTS])
    assert prompts.captions == [captions[i][0] for i in prompts.indices]
    assert sample_prompts(captions, attributes, ()).heldout == [False] * HELD_IN_PROMPTS  # nothing held out
    user = sample_prompts([("one", "uno"), ("two",), ("three",)], None, config.data.holdout)
    assert user.indices == [0, 1, 2] and user.captions == ["one", "two", "three"] and user.heldout is None


def test_training_text_depends_only_on_seed_and_stream_position(dalle_run: tuple[Path, str]) -> None:
    run_dir, _ = dalle_run
    tokenizer = CaptionTokenizer.load(run_dir)
    captions = [("a large purple diamond at the bottom right", "a small pink circle in the center")] * 64
    batch = training_text(tokenizer, captions, 100, seed=3, dropout=0.1)
    assert batch.shape == (64, tokenizer.text_len)
    # Split into rank slices (any split): the same rows.
    assert torch.equal(torch.cat([training_text(tokenizer, captions[:24], 100, 3, 0.1),
                                  training_text(tokenizer, captions[24:], 124, 3, 0.1)]), batch)
    assert not torch.equal(training_text(tokenizer, captions, 101, 3, 0.1), batch)
    assert not torch.equal(training_text(tokenizer, captions, 100, 4, 0.1), batch)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    plain = training_text(tokenizer, captions, 100, 3, 0.0)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    clean = {tuple(tokenizer.encode([c]).tolist()[0]) for c in captions[0]}
    assert {tuple(row) for row in plain.tolist()} == clean  # both captions drawn, each without dropout
    assert sum(tuple(row) not in clean for row in batch.tolist()) >= 5  # dropout changes some segmentations


def test_token_cache_is_reused_and_rebuilt_when_the_vae_changes(dalle_run: tuple[Path, str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = shutil.copytree(dalle_run[0], tmp_path / "run")
    config = Config.load(run_dir)
    encoded = []
    original = dalle_fast.train.tokens.encode_split
    monkeypatch.setattr(dalle_fast.train.tokens, "encode_split", lambda *a: encoded.append(a[1]) or original(*a))
    inode = (run_dir / CACHE_FILE).stat().st_ino
    printed = run_main(["--stage", "dalle", "--resume", "--out", str(run_dir)])
    assert "token cache reused" in printed and not encoded
    assert (run_dir / CACHE_FILE).stat().st_ino == inode

    vae = load_vae(config, run_dir)
    checkpoint = load_checkpoint(run_dir, "vae")
    weights = {name: t + 0.05 * torch.randn_like(t) if t.is_floating_point() else t
               for name, t in checkpoint.weights.items()}
    save_checkpoint(run_dir, "vae", checkpoint._replace(step=checkpoint.step + 1, weights=weights))
    retrained = load_vae(config, run_dir)
    data = load_data(config)
    assert cache_key(config, data, retrained) != cache_key(config, data, vae)
    printed = run_main(["--stage", "dalle", "--resume", "--out", str(run_dir)])
    assert "token cache built" in printed and len(encoded) == 2  # train and val
    cache = token_cache(config, run_dir, data, retrained, 16, torch.autocast("cpu", enabled=False))
    assert not cache.built and len(encoded) == 2
    val = torch.stack([data.val[i][0] for i in range(len(data.val))])
    assert torch.equal(cache.val.long(), retrained.encode(val).flatten(1))
    other = dataclasses.replace(config, data=dataclasses.replace(config.data, val_size=31))
    assert cache_key(other, load_data(other), retrained) != cache.key  # other data: another key


def test_dalle_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    config = resume_config("transformer")
    config = dataclasses.replace(
        config, vae=dataclasses.replace(config.vae, optim=dataclasses.replace(config.vae.optim, steps=2)),
        transformer=dataclasses.replace(config.transformer, optim=dataclasses.replace(
            config.transformer.optim, weight_decay=0.1)))
    assert config.transformer.bpe_dropout > 0
    final = check_exact_resume(config, "dalle", tmp_path, monkeypatch, dalle_fast.train.loop, "learning_rate",
                               before=("tokenizer", "vae"))
    # Weight decay spares vectors (biases, norms): two groups.
    assert [group["weight_decay"] for group in final.meta["param_groups"]] == [0.1, 0.0]
    model = load_dalle(config, tmp_path / "straight")  # the EMA weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final.weights["ema." + name]), name
    assert not torch.equal(model.image_embedding.weight, final.weights["image_embedding.weight"])


def test_plateau_schedule_halves_the_rate_in_training_and_resumes_where_it_stood(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    # Windows of one logged loss that must beat the best by half: every second window is a
    # plateau, so the rate halves after the records of steps 4 and 8; the crash in update 6 comes
    # after the halving at step 4, which the step-4 checkpoint must carry.
    config = resume_config("transformer")
    optim = dataclasses.replace(config.transformer.optim, lr_schedule="plateau", warmup_fraction=0.0,
                                plateau_window=1, plateau_threshold=0.5)
    config = dataclasses.replace(
        config, vae=dataclasses.replace(config.vae, optim=dataclasses.replace(config.vae.optim, steps=2)),
        transformer=dataclasses.replace(config.transformer, optim=optim))
    final = check_exact_resume(config, "dalle", tmp_path, monkeypatch, dalle_fast.train.loop, "learning_rate",
                               before=("tokenizer", "vae"))
    rates = [r["lr"] for r in records(tmp_path / "straight", "dalle") if r["split"] == "train"]
    assert rates == [optim.lr, optim.lr, optim.lr / 2, optim.lr / 2]  # steps 2, 4, 6, 8
    assert final.meta["plateau"]["halvings"] == 2


def test_dalle_without_a_trained_vae_says_to_train_it(tmp_path: Path, capsys) -> None:
    run_stages(preset("tiny"), tmp_path, ("tokenizer",))
    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "dalle", "--resume", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds no vae checkpoint: train the vae first (--stage vae" in capsys.readouterr().err
    assert not list(tmp_path.glob("dalle*"))
    with pytest.raises(UsageError, match="holds no dalle checkpoint: train that stage first"):
        load_dalle(preset("tiny"), tmp_path)


def test_user_data_trains_the_dalle_stage(tmp_path: Path) -> None:
    data = shutil.copytree(FIXTURES / "folder", tmp_path / "data")
    config = small_config(str(data))
    run_dir = tmp_path / "run"
    printed = run_stages(config, run_dir, ("tokenizer", "vae", "dalle"))
    final = records(run_dir, "dalle")[-1]
    assert final["split"] == "val" and final["step"] == STEPS and "samples_correct" not in final
    assert "samples right" not in printed and load_checkpoint(run_dir, "dalle").step == STEPS
    val_size = len(load_data(config).val)
    with Image.open(run_dir / "dalle_samples_latest.png") as png:
        assert png.size[1] == val_size * (config.image_size + PADDING) + PADDING
