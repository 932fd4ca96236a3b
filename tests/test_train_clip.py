"""Stages tokenizer and clip: the command line, what they write, attribute discrimination, exact
resume of clip after a crash, --steps per stage, and the errors of a missing or mismatched tokenizer.

Runs are the tiny preset shortened to a few steps, on the CPU, in-process through
``dalle_fast.train.main``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from stage_runs import check_exact_resume, one_thread, records, resume_config, run_main  # noqa: F401 - a fixture
from torch.utils.data import Subset

import dalle_fast.train.loop
from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.clip import CLIP
from dalle_fast.config import Config, preset
from dalle_fast.data import FolderDataset, ShapesDataset, caption
from dalle_fast.data.splits import dataset_captions
from dalle_fast.run import UsageError, load_clip
from dalle_fast.tokenizer import CaptionTokenizer
from dalle_fast.train import main
from dalle_fast.train.cli import build_parser, resolve_config
from dalle_fast.train.clip import degrade
from dalle_fast.train.clip_eval import attribute_discrimination
from dalle_fast.train.tokenizer import SHAPES_CAPTIONS

FIXTURES = Path(__file__).parent / "fixtures"
STEPS = 6
TRAIN_KEYS = {"stage", "split", "step", "loss", "text_to_image", "image_to_text", "logit_scale", "lr", "seconds"}
ATTRIBUTE_KEYS = {"discrimination_size", "discrimination_color", "discrimination_shape", "discrimination_position",
                  "attributes_all", "attributes_all_heldout"}
VAL_KEYS = {"stage", "split", "step", "loss", "text_to_image", "image_to_text", "seconds"} | ATTRIBUTE_KEYS


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """``--stage tokenizer`` then ``--stage clip --steps 6`` of the tiny preset in one run
    directory, and what each printed."""
    run_dir = tmp_path_factory.mktemp("train") / "tiny"
    printed_tokenizer = run_main(["--stage", "tokenizer", "--preset", "tiny", "--out", str(run_dir)])
    printed_clip = run_main(["--stage", "clip", "--preset", "tiny", "--steps", str(STEPS), "--out", str(run_dir)])
    return run_dir, printed_tokenizer, printed_clip


def test_tokenizer_stage_writes_the_run_tokenizer(clip_run: tuple[Path, str, str]) -> None:
    run_dir, printed, _ = clip_run
    config = Config.load(run_dir)
    tokenizer = CaptionTokenizer.load(run_dir)
    assert (tokenizer.vocab_size, tokenizer.text_len) == (config.transformer.text_vocab, config.transformer.text_len)
    train_split = ShapesDataset.from_config(config, "train")
    assert len(train_split) < SHAPES_CAPTIONS  # tiny: all 4096 train captions
    captions = [train_split.captions(i)[0] for i in range(len(train_split))]
    expected = CaptionTokenizer.train(captions, config.transformer.text_vocab, config.transformer.text_len)
    assert torch.equal(tokenizer.encode(captions), expected.encode(captions))
    assert f"trained on {len(captions)} captions: {tokenizer.learned_vocab}/512 ids learned" in printed
    assert "0.00% of the captions cut at text_len 16" in printed


def test_clip_stage_writes_metrics_and_weights_that_reproduce_them(clip_run: tuple[Path, str, str]) -> None:
    run_dir, _, printed = clip_run
    config = Config.load(run_dir)
    tiny = preset("tiny")
    assert config == dataclasses.replace(tiny, clip=dataclasses.replace(
        tiny.clip, optim=dataclasses.replace(tiny.clip.optim, steps=STEPS)))  # --steps went to clip only
    train_row, val_row = records(run_dir, "clip")
    assert set(train_row) == TRAIN_KEYS and set(val_row) == VAL_KEYS
    assert (train_row["step"], val_row["step"]) == (STEPS, STEPS)
    assert all(0 <= val_row[key] <= 1 for key in ATTRIBUTE_KEYS | {"text_to_image", "image_to_text"})

    pointer = json.loads((run_dir / "clip-latest.json").read_text())
    assert pointer["step"] == STEPS
    model = CLIP(config)
    model.load_state_dict(load_file(run_dir / pointer["weights"]))
    model.eval()
    loaded = load_clip(config, run_dir)  # no EMA in this run: the model's weights
    assert all(torch.equal(t, model.state_dict()[name]) for name, t in loaded.state_dict().items())
    # Val retrieval recomputed independently from the weights: batches of batch_size, in order.
    val, tokenizer = ShapesDataset.from_config(config, "val"), CaptionTokenizer.load(run_dir)
    hits = [0, 0]
    with torch.no_grad():
        for start in range(0, len(val), config.clip.optim.batch_size):
            images, captions = zip(*(val[i] for i in range(start, min(start + config.clip.optim.batch_size, len(val)))))
            sims = model.encode_text(tokenizer.encode(list(captions))) @ model.encode_image(torch.stack(images)).T
            labels = torch.arange(len(sims))
            hits[0] += int((sims.argmax(1) == labels).sum())
            hits[1] += int((sims.argmax(0) == labels).sum())
    assert val_row["text_to_image"] == pytest.approx(hits[0] / len(val))
    assert val_row["image_to_text"] == pytest.approx(hits[1] / len(val))
    assert f"{STEPS}/{STEPS} steps" in printed and f"val text->image {100 * hits[0] / len(val):.1f}%" in printed


def test_attribute_discrimination_scores_oracles_exactly() -> None:
    config = preset("tiny")
    model = CLIP(config).eval()
    val = ShapesDataset.from_config(config, "val")
    attributes = [val.attributes(i) for i in range(64)]
    heldout = torch.tensor([(a.color, a.shape) in config.data.holdout for a in attributes])
    assert 0 < heldout.sum() < len(attributes)
    tokenizer = CaptionTokenizer.train([caption(a) for a in attributes] * 3 + ["small large center"], 512, 16)
    with torch.no_grad():
        # An image embedding equal to its own caption's text embedding is a perfect image; its
        # negation is the worst possible.
        own = model.encode_text(tokenizer.encode([caption(a) for a in attributes]))
        perfect = attribute_discrimination(model, tokenizer, own, attributes, config.data.holdout, 50)
        worst = attribute_discrimination(model, tokenizer, -own, attributes, config.data.holdout, 50)
        mixed = attribute_discrimination(model, tokenizer, torch.where(heldout[:, None], own, -own), attributes,
                                         config.data.holdout, 50)
    assert perfect == dict.fromkeys(ATTRIBUTE_KEYS, 1.0)
    assert worst == dict.fromkeys(ATTRIBUTE_KEYS, 0.0)
    share = heldout.float().mean().item()
    assert mixed == {**dict.fromkeys(ATTRIBUTE_KEYS, pytest.approx(share)), "attributes_all_heldout": 1.0}
    # Changing one attribute of the images' captions fails exactly that attribute's test.
    recolored = [dataclasses.replace(a, color="pink" if a.color != "pink" else "red") for a in attributes]
    with torch.no_grad():
        wrong = model.encode_text(tokenizer.encode([caption(a) for a in recolored]))
        result = attribute_discrimination(model, tokenizer, wrong, attributes, config.data.holdout, 50)
    assert result["discrimination_color"] == 0.0 and result["attributes_all"] == 0.0
    with pytest.raises(ValueError, match="attributes"):
        attribute_discrimination(model, tokenizer, own[:3], attributes, config.data.holdout, 50)


def test_clip_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    config = resume_config("clip")
    config = dataclasses.replace(config, clip=dataclasses.replace(
        config.clip, optim=dataclasses.replace(config.clip.optim, weight_decay=0.1)))
    final = check_exact_resume(config, "clip", tmp_path, monkeypatch, dalle_fast.train.loop, "learning_rate",
                               before=("tokenizer",))
    # Weight decay spares vectors (biases, norms, the logit scale): two groups.
    assert [group["weight_decay"] for group in final.meta["param_groups"]] == [0.1, 0.0]
    # Evaluation and generation load the EMA weights.
    model = load_clip(config, tmp_path / "straight")
    assert not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final.weights["ema." + name]), name
    assert not torch.equal(model.image.patches.weight, final.weights["image.patches.weight"])  # not the raw weights


def test_tokenizer_resume_keeps_the_existing_file(tmp_path: Path) -> None:
    config = preset("tiny")
    other = CaptionTokenizer.train(["an entirely different set of captions"] * 5, 512, 16)
    other.save(tmp_path)
    config.save(tmp_path)
    before = (tmp_path / "tokenizer.json").read_bytes()
    printed = run_main(["--stage", "tokenizer", "--resume", "--out", str(tmp_path)])
    assert "kept the existing tokenizer on 4096 captions" in printed
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    run_main(["--stage", "tokenizer", "--preset", "tiny", "--out", str(tmp_path)])  # a new run retrains it
    assert (tmp_path / "tokenizer.json").read_bytes() != before


def test_clip_without_or_with_a_mismatched_tokenizer_says_what_to_do(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--stage", "clip", "--preset", "tiny", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "tokenizer.json is missing: run the tokenizer stage first" in capsys.readouterr().err
    with pytest.raises(UsageError, match="holds no clip checkpoint: train that stage first"):
        load_clip(preset("tiny"), tmp_path)
    CaptionTokenizer.train(["a small red circle"], 300, 16).save(tmp_path)
    with pytest.raises(SystemExit):
        main(["--stage", "clip", "--preset", "tiny", "--out", str(tmp_path)])
    assert "vocab_size 300 and text_len 16, but the config has transformer.text_vocab 512" in capsys.readouterr().err
    assert not list(tmp_path.glob("clip-*"))


@pytest.mark.parametrize("stage, sections", [("all", ("vae", "transformer", "clip")), ("vae", ("vae",)),
                                             ("clip", ("clip",)), ("dalle", ("transformer",))])
def test_steps_apply_to_the_stages_run(stage: str, sections: tuple[str, ...]) -> None:
    args = build_parser().parse_args(["--stage", stage, "--preset", "tiny", "--steps", "7"])
    config, tiny = resolve_config(args, None), preset("tiny")
    for name in ("vae", "transformer", "clip"):
        assert getattr(config, name).optim.steps == (7 if name in sections else getattr(tiny, name).optim.steps)


def test_steps_with_the_tokenizer_stage_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--stage", "tokenizer", "--steps", "3", "--out", str(tmp_path / "run")])
    assert "--steps: the tokenizer stage has no optimizer steps" in capsys.readouterr().err


def test_dataset_captions_read_every_caption_without_images(tmp_path: Path) -> None:
    shapes = ShapesDataset("train", 16, size=50)
    assert dataset_captions(shapes) == [shapes[i][1] for i in range(50)]
    assert dataset_captions(shapes, limit=7) == [shapes[i][1] for i in range(7)]
    assert shapes.captions(3) == (shapes[3][1],)
    folder = FolderDataset(shutil.copytree(FIXTURES / "folder", tmp_path / "data"), 16)
    every = [c for r in folder.records for c in r.captions]
    assert dataset_captions(folder) == every and any(len(r.captions) > 1 for r in folder.records)
    subset = Subset(folder, [2, 0])
    assert dataset_captions(subset) == [*folder.records[2].captions, *folder.records[0].captions]
    assert folder.caption(1) in folder.captions(1)


def test_user_data_trains_tokenizer_and_clip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    printed = run_main(["--stage", "tokenizer", "--preset", "tiny", "--data", str(FIXTURES / "folder"),
                        "--out", str(out)])
    assert "kept 3/6 images" in printed
    printed = run_main(["--stage", "clip", "--preset", "tiny", "--steps", "2", "--data", str(FIXTURES / "folder"),
                        "--out", str(out)])
    val_row = records(out)[-1]
    assert val_row["split"] == "val" and not ATTRIBUTE_KEYS & set(val_row)
    assert "discrimination" not in printed and load_checkpoint(out, "clip").step == 2



def test_degrade_blurs_a_share_and_adds_bounded_noise() -> None:
    images = torch.rand(400, 3, 8, 8)
    assert degrade(images, 0.0, 0.0) is images
    blurred = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(images, 2), scale_factor=2,
                                              mode="bilinear", align_corners=False)
    assert torch.allclose(degrade(images, 1.0, 0.0), blurred)
    flat = torch.full((400, 3, 8, 8), 0.5)
    noisy = degrade(flat, 0.0, 0.2)
    stds = (noisy - 0.5).flatten(1).std(dim=1)
    assert 0.02 < stds.mean() < 0.18 and stds.max() < 0.25 and stds.min() < 0.03  # std ~ U(0, 0.2)
    some = degrade(images, 0.3, 0.0)
    blurred_share = sum(torch.allclose(a, b) for a, b in zip(some, blurred)) / len(images)
    kept_share = sum(torch.equal(a, b) for a, b in zip(some, images)) / len(images)
    assert 0.2 < blurred_share < 0.4 and blurred_share + kept_share == 1
    torch.manual_seed(5)
    first = degrade(images, 0.5, 0.1)
    torch.manual_seed(5)
    assert torch.equal(first, degrade(images, 0.5, 0.1))  # torch's global RNG: checkpointed, so resumable
    assert 0 <= first.min() and first.max() <= 1
