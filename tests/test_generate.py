"""``python -m dalle_fast.generate`` and :class:`TextToImage` on a run directory of randomly
initialised tiny models (written as the training stages write them; nothing is trained here)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from stage_runs import one_thread  # noqa: F401 - a fixture

import dalle_fast.text_to_image as text_to_image
from dalle_fast.checkpoint import Checkpoint, save_checkpoint
from dalle_fast.clip import CLIP
from dalle_fast.config import preset
from dalle_fast.data import ShapesDataset
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.generate import GenerationResult, TextToImage, main
from dalle_fast.generate.cli import prompt_grid
from dalle_fast.grid import image_grid
from dalle_fast.model import DALLE
from dalle_fast.tokenizer import CaptionTokenizer

PROMPT = "a small red circle in the top left"
CAPTIONS = [PROMPT, "a large blue square at the bottom", "a small green triangle in the center",
            "a large yellow diamond on the right", "a small purple circle at the top"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run: config.json, tokenizer.json and step-1 checkpoints of random vae, dalle and clip."""
    config = preset("tiny")
    run = tmp_path_factory.mktemp("run")
    config.save(run)
    CaptionTokenizer.train(CAPTIONS, config.transformer.text_vocab, config.transformer.text_len).save(run)
    torch.manual_seed(0)
    for stage, model in (("vae", DiscreteVAE(config)), ("dalle", DALLE(config)), ("clip", CLIP(config))):
        save_checkpoint(run, stage, Checkpoint(1, dict(model.state_dict()), {}, {}))
    return run


@pytest.fixture(scope="module")
def pipeline(run_dir: Path) -> TextToImage:
    """The run on the device the command picks too (the GPU if there is one), so their samples agree."""
    return TextToImage.from_run(run_dir)


@pytest.fixture
def prime_file(tmp_path: Path) -> Path:
    path = tmp_path / "prime.png"
    image = ShapesDataset("val", 32)[0][0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def run_cli(*args: str | Path) -> None:
    assert main([str(a) for a in args]) == 0


def cli_args(run_dir: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["--run", run_dir, "--prompt", PROMPT, "--num", "6", "--keep", "3", "--batch-size", "4",
            "--out", out, *extra]


def test_cli_writes_the_grid_of_the_best_samples_under_the_prompt(run_dir, pipeline, tmp_path, capsys):
    out = tmp_path / "sub" / "grid.png"
    run_cli(*cli_args(run_dir, out, "--seed", "3"))
    printed = capsys.readouterr().out
    result = pipeline.generate(PROMPT, 6, 3, top_k=16, seed=3, batch_size=4)  # top_k: the CLI default, 64 / 4
    expected = prompt_grid(result.images, PROMPT)
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == expected.size
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))
    tiles = image_grid([result.images])
    assert expected.width >= tiles.width and expected.height > tiles.height
    assert f"1: {result.scores[0]:.4f}" in printed and str(out) in printed


def test_same_seed_same_png_bytes_other_seed_other_images(run_dir, tmp_path):
    paths = [tmp_path / f"{name}.png" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("5", "5", "6")):
        run_cli(*cli_args(run_dir, path, "--seed", seed))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_generate_keeps_the_top_k_by_clip_score_in_order(pipeline):
    result = pipeline.generate(PROMPT, 7, 4, seed=1, batch_size=3, temperature=1.5)
    assert isinstance(result, GenerationResult)
    assert result.all_images.shape == (7, 3, 32, 32) and result.images.shape == (4, 3, 32, 32)
    best = result.all_scores.topk(4)
    torch.testing.assert_close(result.scores, best.values)
    assert torch.equal(result.images, result.all_images[best.indices])
    torch.testing.assert_close(result.all_scores, pipeline.score(PROMPT, result.all_images))
    assert ((result.all_images >= 0) & (result.all_images <= 1)).all()


def test_sample_repeats_for_a_seed_and_batches_through_the_generator(pipeline):
    first = pipeline.sample(PROMPT, 5, seed=2, batch_size=2)
    assert torch.equal(first, pipeline.sample(PROMPT, 5, seed=2, batch_size=2))
    assert not torch.equal(first[:2], first[2:4]), "each batch must draw fresh samples"


def test_priming_keeps_the_top_token_rows(pipeline, monkeypatch):
    drawn = []

    def recording(*args, **kwargs):
        drawn.append(sample(*args, **kwargs))
        return drawn[-1]

    sample = text_to_image.sample_image_tokens
    monkeypatch.setattr(text_to_image, "sample_image_tokens", recording)
    image = torch.rand(3, 32, 32)  # noise: every token row differs
    pipeline.sample(PROMPT, 5, prime_image=image, prime_rows=2, batch_size=3)
    kept = pipeline.vae.encode(image[None].to(pipeline.device))[:, :2].reshape(1, -1)
    tokens = torch.cat(drawn)
    assert tokens.shape == (5, 16)
    assert torch.equal(tokens[:, :8], kept.expand(5, -1))
    assert not (tokens[:, 8:] == tokens[:1, 8:]).all(), "the rows below the prime are sampled"


def test_cli_priming_runs(run_dir, prime_file, tmp_path):
    out = tmp_path / "primed.png"
    run_cli(*cli_args(run_dir, out, "--prime", prime_file, "--prime-rows", "4"))
    assert out.exists()


def test_without_clip_the_first_samples_are_kept_with_a_warning(run_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for path in run.glob("clip*"):
        path.unlink()
    pipeline = TextToImage.from_run(run, "cpu")
    assert pipeline.clip is None
    result = pipeline.generate(PROMPT, 4, 2, seed=0)
    assert "warning" in capsys.readouterr().err
    assert torch.equal(result.images, result.all_images[:2]) and result.scores.isnan().all()
    run_cli("--run", run, "--prompt", PROMPT, "--num", "2", "--keep", "1", "--out", tmp_path / "x.png")
    assert (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="clip"):
        pipeline.score(PROMPT, result.images)


def without(run_dir: Path, tmp_path: Path, pattern: str) -> Path:
    """A copy of the run without the files matching ``pattern``."""
    run = tmp_path / "partial"
    shutil.copytree(run_dir, run)
    for path in run.glob(pattern):
        path.unlink()
    return run


@pytest.mark.parametrize("make_args, message", [
    (lambda run, tmp, prime: ["--run", tmp / "nope"], "no such run directory"),
    (lambda run, tmp, prime: ["--run", without(run, tmp, "config.json")], "holds no config.json"),
    (lambda run, tmp, prime: ["--run", without(run, tmp, "dalle*")], r"no dalle checkpoint.*--stage dalle"),
    (lambda run, tmp, prime: ["--run", without(run, tmp, "vae*")], r"no vae checkpoint.*--stage vae"),
    (lambda run, tmp, prime: ["--run", without(run, tmp, "tokenizer.json")], "tokenizer stage"),
    (lambda run, tmp, prime: ["--run", run, "--prime", prime, "--prime-rows", "0"],
     r"--prime-rows 0: must lie in \[1, 4\]"),
    (lambda run, tmp, prime: ["--run", run, "--prime", prime, "--prime-rows", "5"], "--prime-rows 5"),
    (lambda run, tmp, prime: ["--run", run, "--prime", tmp / "missing.png", "--prime-rows", "1"], "no such image file"),
    (lambda run, tmp, prime: ["--run", run, "--prime", run / "config.json", "--prime-rows", "1"],
     "cannot read it as an image"),
    (lambda run, tmp, prime: ["--run", run, "--prime", prime], "--prime and --prime-rows go together"),
    (lambda run, tmp, prime: ["--run", run, "--num", "2", "--keep", "3"], "--keep 3: cannot keep more"),
    (lambda run, tmp, prime: ["--run", run, "--temperature", "-1"], "--temperature: must be"),
    (lambda run, tmp, prime: ["--run", run, "--top-k", "0"], "--top-k: must be"),
])
def test_cli_usage_errors_exit_2_with_one_line(make_args, message, run_dir, tmp_path, prime_file, capsys):
    args = [*make_args(run_dir, tmp_path, prime_file), "--prompt", PROMPT, "--out", tmp_path / "never.png"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("python -m dalle_fast.generate: error:")
    assert re.search(message, last), last
    assert not (tmp_path / "never.png").exists()


def test_module_entry_point_reports_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dalle_fast.generate", "--run", str(tmp_path / "nope"),
                           "--prompt", PROMPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no such run directory" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"num": 0}, "num"),
    ({"num": 2, "batch_size": 0}, "batch_size"),
    ({"num": 2, "prime_rows": 2}, "prime_image: needed"),
    ({"num": 2, "prime_rows": 5, "prime_image": torch.rand(3, 32, 32)}, "prime_rows"),
    ({"num": 2, "prime_rows": 0, "prime_image": torch.rand(3, 32, 32)}, "prime_rows"),
    ({"num": 2, "prime_rows": 1, "prime_image": torch.rand(3, 16, 16)}, "prime_image: expected"),
    ({"num": 2, "top_k": 0}, "top_k"),
])
def test_sample_rejects_bad_arguments(pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipeline.sample(PROMPT, **kwargs)


def test_generate_rejects_keep_out_of_range(pipeline):
    for keep in (0, 3):
        with pytest.raises(ValueError, match="keep"):
            pipeline.generate(PROMPT, 2, keep)


def test_without_temperature_generate_samples_at_the_runs_sample_temperature(run_dir, tmp_path):
    config = preset("tiny")
    config = dataclasses.replace(config, transformer=dataclasses.replace(config.transformer, sample_temperature=0.0))
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config.save(run)
    paths = {name: tmp_path / f"{name}.png" for name in ("default", "greedy", "one")}
    run_cli(*cli_args(run, paths["default"], "--seed", "2"))
    run_cli(*cli_args(run, paths["greedy"], "--seed", "2", "--temperature", "0"))
    run_cli(*cli_args(run, paths["one"], "--seed", "2", "--temperature", "1"))
    assert paths["default"].read_bytes() == paths["greedy"].read_bytes()
    assert paths["default"].read_bytes() != paths["one"].read_bytes()
