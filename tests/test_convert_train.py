"""A run converted from OpenAI's dVAE continues like any run (docs/design.md#the-run-directory):
``train --stage tokenizer`` and ``--stage dalle`` train on it with another ``--preset`` and
``--data`` (the vae section stays the converted one), its vae stage is never trained, and once a
stage has trained there the run's settings are fixed as for every run. The "OpenAI" files here are
state dicts in ``dall_e``'s names written from a random dVAE of ours at a small width, so this
test needs no ``dall_e`` (tests/test_openai_dvae.py compares against the real package)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from stage_runs import one_thread, run_main  # noqa: F401 - one_thread: a fixture

from dalle_fast.checkpoint import checkpointed_stages, load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.convert import main as convert_main
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.generate import main as generate_main
from dalle_fast.openai_dvae import openai_name
from dalle_fast.train import main as train_main
from dalle_fast.train.tokens import CACHE_FILE

FOLDER = Path(__file__).parent / "fixtures" / "folder"
SMALL_VAE = dataclasses.replace(preset("paper").vae, hidden=64, blocks_per_group=1, codebook_size=512)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A converted run of a random small dVAE, and that dVAE's weights."""
    folder = tmp_path_factory.mktemp("convert")
    torch.manual_seed(0)
    weights = DiscreteVAE(dataclasses.replace(preset("gpu"), vae=SMALL_VAE)).state_dict()
    for part in ("encoder", "decoder"):
        torch.save({openai_name(k): v for k, v in weights.items() if k.startswith(part)}, folder / f"{part}.pt")
    run = folder / "run"
    assert convert_main(["openai-dvae", "--encoder", str(folder / "encoder.pt"), "--decoder",
                         str(folder / "decoder.pt"), "--out", str(run)]) == 0
    return run, weights


def exits_2(main, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_the_transformer_trains_on_the_converted_dvae_with_other_settings_and_data(converted, capsys) -> None:
    run, weights = converted
    printed = run_main(["--stage", "tokenizer", "--out", str(run), "--preset", "tiny", "--data", str(FOLDER)])
    assert "tokenizer: trained" in printed
    config = Config.load(run)
    assert config.vae == SMALL_VAE, "the vae section stays the converted dVAE's"
    assert config.transformer == preset("tiny").transformer and config.data.dataset == str(FOLDER.resolve())
    # the dalle stage reads the saved config: the tiny transformer on the converted dVAE's 32x32 tokens
    run_main(["--stage", "dalle", "--out", str(run), "--steps", "2"])
    assert checkpointed_stages(run) == ["dalle", "vae"] and load_checkpoint(run, "dalle").step == 2
    assert Config.load(run).transformer.optim.steps == 2
    vae = load_checkpoint(run, "vae")
    assert vae.step == 0 and all(torch.equal(vae.weights[k], weights[k]) for k in weights), "the vae is untouched"
    assert (run / CACHE_FILE).exists()
    # the vae stage is never trained here; with a trained stage the settings are fixed, as in every run
    assert "not trained here (openai-dvae" in exits_2(train_main, ["--stage", "vae", "--out", str(run)], capsys)
    err = exits_2(train_main, ["--stage", "clip", "--out", str(run), "--preset", "demo"], capsys)
    assert "started with another config" in err
    # generation works from it (no clip yet: the first sample, with a warning)
    out = run.parent / "sample.png"
    assert generate_main(["--run", str(run), "--prompt", "a cat", "--num", "1", "--keep", "1", "--out", str(out),
                          "--top-k", "8"]) == 0
    assert out.exists() and "warning" in capsys.readouterr().err


def test_only_the_converted_section_is_fixed_while_nothing_has_trained(converted, tmp_path, capsys) -> None:
    run, _ = converted
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.json", *[p.name for p in run.glob("vae-*")]):
        (fresh / name).write_bytes((run / name).read_bytes())
    assert "tokenizer.json is missing" in exits_2(train_main, ["--stage", "dalle", "--out", str(fresh)], capsys)
    for extra in ([], ["--resume"], ["--preset", "tiny"]):
        err = exits_2(train_main, ["--stage", "vae", "--out", str(fresh), *extra], capsys)
        assert "--stage vae: the vae of --out" in err and "python -m dalle_fast.convert" in err
    run_main(["--stage", "tokenizer", "--out", str(fresh), "--preset", "demo", "--data", "shapes"])
    config = Config.load(fresh)
    assert config.vae == SMALL_VAE and config.transformer == preset("demo").transformer
    assert config.data == preset("demo").data and config.name == "demo"
