"""Reranking with a pretrained CLIP of the ``open_clip`` package (``--clip open_clip:MODEL
--clip-weights FILE``), on a tiny open_clip model built here from a model config with random
weights (nothing is downloaded): our scores are the cosines of open_clip's own ``encode_image`` and
``encode_text`` on the same inputs, our tensor preprocessing is open_clip's eval transform, and
generate, evaluate and train rerank by those scores (train then skips its clip stage)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from stage_runs import one_thread, run_main  # noqa: F401 - one_thread: a fixture
from test_evaluate import make_run

from dalle_fast.checkpoint import checkpointed_stages
from dalle_fast.config import Config, preset
from dalle_fast.evaluate import main as evaluate_main
from dalle_fast.generate import TextToImage
from dalle_fast.generate import main as generate_main
from dalle_fast.rerankers import OpenCLIP, import_open_clip, load_open_clip, open_clip_pixels
from dalle_fast.train import main as train_main

if importlib.util.find_spec("open_clip") is None:
    pytest.skip("open_clip is not installed (pip install open-clip-torch)", allow_module_level=True)

PROMPT = "a small red circle in the top left"
PROMPTS = [PROMPT, "a large blue square at the bottom", "a small green triangle in the center"]
MODEL = "dalle-fast-tiny-clip"
MODEL_CONFIG = {"embed_dim": 16,
                "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def open_clip():
    return import_open_clip()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, open_clip) -> tuple[Path, Path]:
    """The tiny model's config file and a weights file of it (random weights)."""
    folder = tmp_path_factory.mktemp("open_clip")
    config = folder / f"{MODEL}.json"
    config.write_text(json.dumps(MODEL_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "weights.pt"
    torch.save(open_clip.create_model(MODEL).state_dict(), weights)
    return config, weights


@pytest.fixture(scope="module")
def reranker(files) -> OpenCLIP:
    return load_open_clip(str(files[0]), str(files[1]))


def clip_args(files: tuple[Path, Path]) -> list[str]:
    return ["--clip", f"open_clip:{files[0]}", "--clip-weights", str(files[1])]


@torch.no_grad()
def test_scores_are_the_cosines_of_open_clips_embeddings(reranker, files, open_clip) -> None:
    model = open_clip.create_model(MODEL, pretrained=str(files[1])).eval()  # loaded independently
    tokenizer = open_clip.get_tokenizer(MODEL)
    images = torch.rand(3, 3, 32, 32)
    pixels = reranker.pixels(images)
    assert pixels.shape == (3, 3, 24, 24)
    image = model.encode_image(pixels, normalize=True)
    text = model.encode_text(tokenizer(PROMPTS), normalize=True)
    torch.testing.assert_close(reranker.score(PROMPTS, images), (image * text).sum(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(reranker.score(PROMPT, images), (image * text[:1]).sum(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(reranker.features(images, batch_size=2), image, rtol=0, atol=1e-6)
    assert reranker.name == f"open_clip:{MODEL}"
    with pytest.raises(ValueError, match="prompts: 2 prompts for 3 images"):
        reranker.score(PROMPTS[:2], images)


@pytest.mark.parametrize("resize_mode, size", [("shortest", 24), ("squash", (24, 20)), ("longest", (20, 24)),
                                               ("shortest", (24, 20))])
def test_preprocessing_is_open_clips_eval_transform(open_clip, resize_mode: str, size) -> None:
    torch.manual_seed(1)
    smooth = F.interpolate(torch.rand(2, 3, 5, 5), size=32, mode="bilinear", align_corners=False)
    images = (torch.cat([smooth, torch.rand(2, 3, 32, 32)]) * 255).round() / 255  # what PIL holds exactly
    settings = {"size": size, "resize_mode": resize_mode, "interpolation": "bicubic", "fill_color": 0,
                "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    ours = open_clip_pixels(images, settings)
    transform = open_clip.image_transform(size, is_train=False, mean=settings["mean"], std=settings["std"],
                                          resize_mode=resize_mode, interpolation="bicubic")
    for image, mine in zip(images, ours):
        pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        theirs = transform(pil)
        assert theirs.shape == mine.shape
        difference = (theirs - mine).abs() * torch.tensor(settings["std"])[:, None, None]  # in pixel units
        assert difference.mean() < 2 / 255 and difference.max() < 12 / 255  # PIL rounds to bytes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with random vae and dalle and no clip stage."""
    return make_run(tmp_path_factory.mktemp("rerank") / "run", stages=("vae", "dalle"))


def test_generation_reranks_by_the_open_clip_scores(run, files, reranker, capsys) -> None:
    plain = TextToImage.from_run(run, "cpu")
    assert plain.reranker is None
    pipeline = TextToImage.from_run(run, "cpu", clip=f"open_clip:{files[0]}", clip_weights=str(files[1]))
    assert pipeline.reranker.name == f"open_clip:{MODEL}" and pipeline.clip is pipeline.reranker
    result = pipeline.generate(PROMPT, 7, 3, seed=4, batch_size=3, top_k=16)
    torch.testing.assert_close(result.all_scores, reranker.score(PROMPT, result.all_images), rtol=0, atol=1e-6)
    order = result.all_scores.argsort(descending=True, stable=True)
    assert torch.equal(result.images, result.all_images[order[:3]])
    assert torch.equal(result.scores, result.all_scores[order[:3]])
    assert result.scores[0] > result.all_scores.min()
    out = run.parent / "grid.png"
    assert generate_main(["--run", str(run), "--prompt", PROMPT, "--num", "7", "--keep", "3", "--seed", "4",
                          "--batch-size", "3", "--out", str(out), *clip_args(files)]) == 0
    printed = capsys.readouterr().out
    assert "  ".join(f"{i}: {s:.4f}" for i, s in enumerate(result.scores.tolist(), 1)) in printed


def test_evaluate_reranks_and_embeds_with_open_clip(run, files, reranker) -> None:
    assert evaluate_main(["--run", str(run), "--num-prompts", "2", "--samples-per-prompt", "3",
                          *clip_args(files)]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["settings"]["reranker"] == f"open_clip:{MODEL}"
    scores = report["clip_score"]
    assert scores["reranked"] >= scores["first"] and -1 <= scores["real"] <= 1
    assert "reranked by open_clip:" in (run / "eval" / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--clip", "open_clip:no-such-model", "--clip-weights", "WEIGHTS"], "--clip: open_clip has no model"),
    (["--clip", "open_clip:MODEL"], "needs --clip-weights"),
    (["--clip", "open_clip:MODEL", "--clip-weights", "missing.pt"], "--clip-weights: no such weights file"),
    (["--clip", "open_clip:MODEL", "--clip-weights", "WRONG"], "cannot load it into open_clip's"),
    (["--clip-weights", "WEIGHTS"], "--clip-weights goes with --clip"),
    (["--clip", "clip-of-my-own"], "--clip: must be 'run' or 'open_clip:'"),
    (["--clip", "run", "--clip-weights", "WEIGHTS"], "--clip-weights: only for an open_clip: model"),
])
def test_bad_reranker_flags_exit_2(run, files, tmp_path, capsys, argv: list[str], message: str) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, wrong)
    values = {"MODEL": str(files[0]), "WEIGHTS": str(files[1]), "WRONG": str(wrong)}
    argv = [next((a.replace(k, v) for k, v in values.items() if k in a), a) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        generate_main(["--run", str(run), "--prompt", PROMPT, "--out", str(tmp_path / "x.png"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_train_with_open_clip_skips_the_clip_stage_and_records_it(files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    tiny = preset("tiny")
    dataclasses.replace(tiny, data=dataclasses.replace(tiny.data, train_size=64, val_size=8, test_size=8)).save(out)
    printed = run_main(["--out", str(out), "--steps", "1", *clip_args(files)])
    assert f"clip: skipped: the run reranks with the pretrained open_clip:{files[0]}" in printed
    assert checkpointed_stages(out) == ["dalle", "vae"]
    config = Config.load(out)
    assert (config.clip.reranker, config.clip.reranker_weights) == (f"open_clip:{files[0]}", str(files[1]))
    assert TextToImage.from_run(out, "cpu").reranker.name == f"open_clip:{MODEL}"  # the run's reranker now
    with pytest.raises(SystemExit) as exit_:
        train_main(["--stage", "clip", "--out", str(out)])
    assert exit_.value.code == 2 and "has no clip stage to train" in capsys.readouterr().err
    bad = tmp_path / "bad"
    with pytest.raises(SystemExit):
        train_main(["--out", str(bad), "--preset", "tiny", "--clip", f"open_clip:{files[0]}", "--clip-weights",
                    str(tmp_path / "missing.pt")])
    assert "--clip-weights: no such weights file" in capsys.readouterr().err and not checkpointed_stages(bad)
