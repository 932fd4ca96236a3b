"""``python -m dalle_fast.convert openai-dvae`` against the real ``dall_e`` package (``DALL-E`` 0.1
on PyPI), without OpenAI's weight files: its ``Encoder`` and ``Decoder`` with random weights (and
random biases, which the released init leaves at zero), saved as OpenAI ships them (whole pickled
modules, ``torch.save(module)``) and as state dicts, converted, and compared on fresh random
256 px images: the same argmax tokens, decoder outputs within 1e-5 relative (float32), the same
pixel mapping. Most tests use a small width (n_hid 64, one block per group, 512 codes); one
converts the released width (97,616,006 parameters) and compares it on 64 px images."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from stage_runs import one_thread  # noqa: F401 - a fixture: run on one thread

import dalle_fast.openai_dvae as openai_dvae
from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.convert import main
from dalle_fast.dvae_loss import map_pixels, unmap_pixels
from dalle_fast.run import imported_stages, load_vae

dall_e = pytest.importorskip("dall_e", reason="the dall_e package (pip install --no-deps DALL-E==0.1 attrs requests)")

SMALL = {"n_hid": 64, "n_blk_per_group": 1, "vocab_size": 512}
ROOT = Path(__file__).resolve().parent.parent


def random_modules(seed: int, **width: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """dall_e's Encoder and Decoder at ``width``, weights as their init draws them, biases random."""
    torch.manual_seed(seed)
    encoder, decoder = dall_e.Encoder(**width), dall_e.Decoder(**width)
    with torch.no_grad():
        for name, tensor in [*encoder.state_dict().items(), *decoder.state_dict().items()]:
            if name.endswith(".b"):
                tensor.normal_(std=0.1)
    return encoder.eval(), decoder.eval()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small modules and their files: whole pickled modules and state dicts."""
    folder = tmp_path_factory.mktemp("openai")
    encoder, decoder = random_modules(0, **SMALL)
    files = {"pickle": (folder / "encoder.pkl", folder / "decoder.pkl"),
             "state_dict": (folder / "encoder.pt", folder / "decoder.pt")}
    torch.save(encoder, files["pickle"][0])
    torch.save(decoder, files["pickle"][1])
    torch.save(encoder.state_dict(), files["state_dict"][0])
    torch.save(decoder.state_dict(), files["state_dict"][1])
    return {"encoder": encoder, "decoder": decoder, "files": files, "folder": folder}


def convert(encoder: Path, decoder: Path, out: Path, *extra: str) -> Path:
    assert main(["openai-dvae", "--encoder", str(encoder), "--decoder", str(decoder), "--out", str(out), *extra]) == 0
    return out


def refused(capsys: pytest.CaptureFixture, *argv: str | Path) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["openai-dvae", *map(str, argv)])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(scope="module", params=["pickle", "state_dict"])
def converted(request: pytest.FixtureRequest, small: dict) -> Path:
    return convert(*small["files"][request.param], small["folder"] / f"run-{request.param}")


@torch.no_grad()
def test_the_converted_dvae_gives_openais_tokens_and_images(converted: Path, small: dict) -> None:
    config = Config.load(converted)
    vae = load_vae(config, converted)
    images = torch.rand(2, 3, 256, 256)
    theirs = small["encoder"](dall_e.map_pixels(images))
    logits = vae.logits(images)
    assert relative_error(logits, theirs) < 1e-5
    tokens = vae.encode(images)
    assert torch.equal(tokens, theirs.argmax(dim=1))
    for codes in (tokens, torch.randint(512, (2, 32, 32))):  # the images' tokens and any tokens
        stats = small["decoder"](F.one_hot(codes, 512).permute(0, 3, 1, 2).float())
        ours = vae.decoder(vae.codebook[codes].permute(0, 3, 1, 2))
        assert relative_error(ours, stats) < 1e-5
        expected = dall_e.unmap_pixels(torch.sigmoid(stats[:, :3]))
        assert relative_error(vae.decode(codes), expected) < 1e-5


def test_the_pixel_mapping_is_openais() -> None:
    eps = preset("paper").vae.logit_laplace_eps
    assert eps == openai_dvae.OPENAI_EPS == dall_e.utils.logit_laplace_eps
    x = torch.rand(3, 3, 8, 8)
    assert torch.equal(map_pixels(x, eps), dall_e.map_pixels(x))
    y = torch.rand(3, 3, 8, 8) * 1.4 - 0.2  # also outside [eps, 1 - eps]: both clamp
    assert torch.equal(unmap_pixels(y, eps), dall_e.unmap_pixels(y))


def test_the_run_directory_holds_a_vae_checkpoint_and_the_papers_dvae_config(converted: Path, small: dict) -> None:
    config = Config.load(converted)
    assert config.name == "gpu"  # the default --preset: the other stages' settings
    vae = preset("paper").vae
    assert (config.vae.image_size, config.vae.grid_size, config.vae.codebook_size) == (256, 32, 512)
    assert (config.vae.hidden, config.vae.blocks_per_group, config.vae.codebook_dim) == (64, 1, 128)
    assert config.vae.optim == vae.optim and config.vae.reconstruction == vae.reconstruction == "logit_laplace"
    assert config.transformer == preset("gpu").transformer
    checkpoint = load_checkpoint(converted, "vae")
    assert checkpoint.step == 0 and checkpoint.state == {}
    assert checkpoint.meta["source"] == "openai-dvae" and imported_stages(converted) == {"vae": "openai-dvae"}
    for part in ("encoder", "decoder"):
        file = Path(checkpoint.meta[part]["file"])
        assert checkpoint.meta[part]["sha256"] == openai_dvae.file_sha256(file) and file.is_absolute()
    assert sorted(p.name for p in converted.iterdir()) == ["config.json", "vae-00000000.safetensors",
                                                           "vae-00000000.state.safetensors", "vae-latest.json"]
    pointer = json.loads((converted / "vae-latest.json").read_text())
    assert pointer["step"] == 0


def test_pickles_and_state_dicts_convert_to_the_same_weights(small: dict, tmp_path: Path) -> None:
    a = load_checkpoint(convert(*small["files"]["pickle"], tmp_path / "a"), "vae").weights
    b = load_checkpoint(convert(*small["files"]["state_dict"], tmp_path / "b", "--preset", "tiny"), "vae").weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert Config.load(tmp_path / "b").transformer == preset("tiny").transformer


def test_every_tensor_is_mapped_by_name_both_ways() -> None:
    encoder, decoder = random_modules(1, **SMALL)
    for part, module in (("encoder", encoder), ("decoder", decoder)):
        for name in module.state_dict():
            assert openai_dvae.openai_name(openai_dvae.our_name(part, name)) == name


def _broken(state: dict, case: str) -> tuple[dict, str]:
    """``state`` with one ``case`` of problem, and the message naming it."""
    state = dict(state)
    if case == "missing":
        name = "blocks.group_2.block_1.res_path.conv_3.w"
        return state, f"missing tensor {name} {tuple(state.pop(name).shape)}"
    if case == "extra":
        state["blocks.group_5.block_1.res_path.conv_1.w"] = torch.zeros(1)
        return state, "unexpected tensor blocks.group_5.block_1.res_path.conv_1.w (1,)"
    name = "blocks.group_3.block_1.id_path.b"
    expected = tuple(state[name].shape)
    state[name] = torch.zeros(7)
    return state, f"{name} is torch.float32 (7,), expected float {expected}"


@pytest.mark.parametrize("case", ["missing", "extra", "shape"])
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_wrong_tensors_exit_2_naming_them_and_write_nothing(small: dict, tmp_path: Path, capsys, case: str,
                                                            part: str) -> None:
    modules = {"encoder": small["encoder"].state_dict(), "decoder": small["decoder"].state_dict()}
    modules[part], message = _broken(modules[part], case)
    paths = {}
    for name, state in modules.items():
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(state, paths[name])
    out = tmp_path / "runs" / "bad"
    err = refused(capsys, "--encoder", paths["encoder"], "--decoder", paths["decoder"], "--out", out)
    assert f"--{part}: {message}" in err, err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_several_problems_are_all_named(small: dict, tmp_path: Path, capsys) -> None:
    encoder = dict(small["encoder"].state_dict())
    del encoder["blocks.input.b"], encoder["blocks.output.conv.w"]
    torch.save(encoder, tmp_path / "e.pt")
    err = refused(capsys, "--encoder", tmp_path / "e.pt", "--decoder", small["files"]["pickle"][1],
                  "--out", tmp_path / "out")
    assert "2 tensor(s)" in err and "blocks.input.b" in err and "blocks.output.conv.w" in err
    assert not (tmp_path / "out").exists()


def test_unreadable_files_and_a_used_out_exit_2(small: dict, tmp_path: Path, capsys) -> None:
    encoder, decoder = small["files"]["pickle"]
    assert "--encoder: no such file" in refused(capsys, "--encoder", tmp_path / "nope.pkl", "--decoder", decoder,
                                                "--out", tmp_path / "a")
    (tmp_path / "text.pkl").write_text("not a torch file")
    assert "--decoder" in refused(capsys, "--encoder", encoder, "--decoder", tmp_path / "text.pkl",
                                  "--out", tmp_path / "a")
    torch.save([1, 2], tmp_path / "list.pt")
    assert "not a dall_e module or a state dict" in refused(capsys, "--encoder", tmp_path / "list.pt", "--decoder",
                                                             decoder, "--out", tmp_path / "a")
    assert not (tmp_path / "a").exists()
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert "already holds files" in refused(capsys, "--encoder", encoder, "--decoder", decoder, "--out", used)
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (convert(encoder, decoder, empty) / "vae-latest.json").exists()  # an empty folder is fine
    assert "checkpoints (vae)" in refused(capsys, "--encoder", encoder, "--decoder", decoder, "--out", empty)


def test_a_pickle_without_dall_e_says_how_to_install_it(small: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(openai_dvae.importlib.util, "find_spec", lambda name, *a: None if name == "dall_e"
                        else real(name, *a))
    err = refused(capsys, "--encoder", small["files"]["pickle"][0], "--decoder", small["files"]["state_dict"][1],
                  "--out", tmp_path / "a")
    assert "--encoder" in err and openai_dvae.INSTALL in err and not (tmp_path / "a").exists()


def test_the_help_warns_that_unpickling_runs_code() -> None:
    text = subprocess.run([sys.executable, "-m", "dalle_fast.convert", "openai-dvae", "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert "runs code" in " ".join(text.split())


def test_importing_dalle_fast_imports_neither_dall_e_nor_open_clip() -> None:
    code = ("import sys, dalle_fast, dalle_fast.convert, dalle_fast.train, dalle_fast.generate, dalle_fast.evaluate; "
            "print([m for m in ('dall_e', 'open_clip', 'torchvision') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@torch.no_grad()
def test_the_released_width_converts_all_150_tensors(tmp_path: Path) -> None:
    encoder, decoder = random_modules(2)  # n_hid 256, 2 blocks per group, 8192 codes: the released files
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save(decoder.state_dict(), tmp_path / "decoder.pt")
    run = convert(tmp_path / "encoder.pt", tmp_path / "decoder.pt", tmp_path / "run", "--preset", "paper")
    config = Config.load(run)
    assert config == preset("paper"), "the released dVAE is the paper preset's"
    vae = load_vae(config, run)
    state = vae.state_dict()
    assert len(state) == 150 and sum(t.numel() for t in state.values()) == 97_616_006
    images = torch.rand(1, 3, 64, 64)  # the nets are convolutional: 64 px keeps this test short
    theirs = encoder(dall_e.map_pixels(images))
    ours = vae.encoder(map_pixels(images, config.vae.logit_laplace_eps))
    assert relative_error(ours, theirs) < 1e-5 and torch.equal(ours.argmax(1), theirs.argmax(1))
    codes = torch.randint(8192, (1, 8, 8))
    stats = decoder(F.one_hot(codes, 8192).permute(0, 3, 1, 2).float())
    assert relative_error(vae.decoder(vae.codebook[codes].permute(0, 3, 1, 2)), stats) < 1e-5
