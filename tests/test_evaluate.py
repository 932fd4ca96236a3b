"""``python -m dalle_fast.evaluate`` on a tiny run built here (randomly initialized stages written
as the training loop writes them, a tokenizer trained on shapes captions): the report's schema,
its files and internal consistency, determinism, the attribute wiring against a generator that
draws the ground truth, user data (folder, COCO, CUB fixtures), Inception FID from a weights
file, and the errors that exit with status 2."""
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from stage_runs import one_thread  # noqa: F401 - a fixture: run on one thread

from dalle_fast.checkpoint import Checkpoint, save_checkpoint
from dalle_fast.clip import CLIP
from dalle_fast.config import preset
from dalle_fast.data import ShapesDataset, render
from dalle_fast.data.splits import dataset_captions
from dalle_fast.dvae import DiscreteVAE
from dalle_fast.evaluate import EvalOptions, evaluate, main, pipeline
from dalle_fast.evaluate.inception import FIDInception
from dalle_fast.evaluate.metrics import wilson_interval
from dalle_fast.evaluate.report import FORMAT, KEYS, SECTION_KEYS
from dalle_fast.model import DALLE
from dalle_fast.run import UsageError
from dalle_fast.tokenizer import CaptionTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
ACCURACY_KEYS = ["size", "color", "shape", "position", "all"]


def make_run(run: Path, stages: tuple[str, ...] = ("vae", "dalle", "clip")) -> Path:
    """A tiny-preset run directory with a tokenizer and randomly initialized ``stages``."""
    config = preset("tiny")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, train_size=64, val_size=40,
                                                                  test_size=24))
    config.save(run)
    captions = dataset_captions(ShapesDataset.from_config(config, "train"))
    CaptionTokenizer.train(captions, config.transformer.text_vocab, config.transformer.text_len).save(run)
    builders = {"vae": DiscreteVAE, "dalle": DALLE, "clip": CLIP}
    for stage in stages:
        save_checkpoint(run, stage, Checkpoint(3, builders[stage](config).state_dict(), {}, {"seconds": 0.0}))
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("eval") / "run")


@pytest.fixture(scope="module")
def report(run: Path) -> dict:
    assert main(["--run", str(run), "--num-prompts", "5", "--samples-per-prompt", "5", "--seed", "3"]) == 0
    return json.loads((run / "eval" / "report.json").read_text())


def test_report_schema_is_stable(report: dict, run: Path) -> None:
    assert list(report) == list(KEYS) and report["format"] == FORMAT
    for section, keys in SECTION_KEYS.items():
        assert list(report[section]) == list(keys), section
    assert (report["preset"], report["dataset"], report["split"]) == ("tiny", "shapes", "val")
    assert report["settings"]["num_prompts"] == 5 and report["settings"]["samples_per_prompt"] == 5
    assert report["settings"]["top_k"] == 16  # a quarter of the 64 codes
    for group, prompts in (("held_in", 2), ("held_out", 3)):  # ceil(5 / 2) held-out prompts
        part = report["attributes"][group]
        assert part["prompts"] == prompts and list(part) == ["prompts", "first", "reranked", "intervals"]
        for kind in ("first", "reranked"):
            assert list(part[kind]) == ACCURACY_KEYS and all(0 <= v <= 1 for v in part[kind].values())
            for key, (low, high) in part["intervals"][kind].items():  # Wilson, from the group's prompt count
                assert (low, high) == pytest.approx(wilson_interval(round(part[kind][key] * prompts), prompts))
                assert low <= part[kind][key] <= high
    assert [p["heldout"] for p in report["prompts"]].count(True) == 3
    assert report["fid"]["inception"] == {"first": None, "reranked": None} and report["fid"]["images"] == 5
    for group, prompts in (("held_in", 2), ("held_out", 3)):
        part = report["groups"][group]
        assert part["prompts"] == prompts and part["retrieval"] is None  # no gallery on shapes
        assert part["clip_score"]["reranked"] >= part["clip_score"]["first"]
    for name in report["plots"].values():
        assert Image.open(run / "eval" / name).format == "PNG"
    page = (run / "eval" / "report.md").read_text()
    assert "Reranking curve" in page and "rerank_curve.png" in page and "(held-out pair)" in page
    assert "By group of prompts" in page and "top-1" not in page


def test_report_numbers_are_consistent(report: dict) -> None:
    tf, clip, curve = report["transformer"], report["clip_score"], report["rerank_curve"]
    assert tf["image_bits_per_token"] == pytest.approx(tf["image_loss"] / math.log(2))
    assert 0 < tf["image_bits_per_token"] < 2 * math.log2(64)  # a random model: about log2(64) = 6 bits
    assert clip["reranked"] >= clip["first"] and all(-1 <= v <= 1 for v in clip.values())
    assert curve["samples"] == [1, 2, 4, 5]
    for group in ("held_in", "held_out"):
        part = report["attributes"][group]
        assert curve[group][0] == part["first"]["all"] and curve[group][-1] == part["reranked"]["all"]
    weights = [report["attributes"][g]["prompts"] for g in ("held_in", "held_out")]
    for k in range(len(curve["samples"])):
        mixed = (weights[0] * curve["held_in"][k] + weights[1] * curve["held_out"][k]) / sum(weights)
        assert curve["all"][k] == pytest.approx(mixed)
    assert report["fid"]["clip"]["first"] >= 0 and report["fid"]["clip"]["reranked"] >= 0
    vae = report["vae"]
    assert 0 < vae["codes_used"] <= 1 and 1 <= vae["perplexity"] <= 64 and vae["attribute_agreement"] is not None
    assert 0 <= vae["attribute_agreement_heldout"] <= 1


def test_evaluation_is_deterministic(run: Path) -> None:
    options = EvalOptions(num_prompts=2, samples_per_prompt=3, seed=7)
    first, samples, real = evaluate(run, options)
    torch.manual_seed(12345)  # the global RNG state must not matter
    again, samples_again, _ = evaluate(run, options)
    assert torch.equal(samples.images, samples_again.images) and torch.equal(samples.scores, samples_again.scores)
    first.pop("seconds"), again.pop("seconds")
    assert first == again
    other = evaluate(run, dataclasses.replace(options, seed=8))[1]
    assert not torch.equal(other.images, samples.images)
    # a prompt's samples do not depend on how many prompts there are
    more = evaluate(run, dataclasses.replace(options, num_prompts=4))
    assert more[0]["prompts"][:1] == first["prompts"][:1]
    assert real.shape == (2, 3, 32, 32) and samples.images.shape == (2, 3, 3, 32, 32)


def test_attribute_accuracy_and_reranking_with_ground_truth_samples(run: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A generator whose samples 0 are blank, 1 the ground truth (scored best), 2 blank: the
    first sample is never right, the reranked one always; the curve goes 0 -> 100%."""
    test = ShapesDataset("test", 32, size=24)
    truth = {test.captions(i)[0]: test.attributes(i) for i in range(len(test))}

    def fake_generate(run, captions, samples, options, temperature, top_k):
        assert samples == 3 and temperature == 1.0  # the tiny preset's sample_temperature
        images = torch.ones(len(captions), samples, 3, 32, 32)
        images[:, 1] = torch.stack([render(truth[c], 32) for c in captions])
        return pipeline.Samples(images, torch.tensor([[0.1, 0.9, 0.2]]).repeat(len(captions), 1))

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    report = evaluate(run, EvalOptions(split="test", num_prompts=4, samples_per_prompt=3))[0]
    assert report["rerank_curve"]["samples"] == [1, 2, 3]
    for group in ("held_in", "held_out", "all"):
        assert report["rerank_curve"][group] == [0.0, 1.0, 1.0]
    for group in ("held_in", "held_out"):
        part = report["attributes"][group]
        assert part["prompts"] == 2
        assert part["first"] == dict.fromkeys(ACCURACY_KEYS, 0.0)
        assert part["reranked"] == dict.fromkeys(ACCURACY_KEYS, 1.0)
    assert report["fid"]["clip"]["reranked"] == pytest.approx(0.0, abs=1e-6)  # the samples are the real images
    assert report["fid"]["clip"]["first"] > 1e-5  # blank samples: no spread, another mean


@pytest.mark.parametrize("data, extra, split, images", [
    (FIXTURES / "folder", [], "test", 3),  # every usable image
    (FIXTURES / "folder", [], "val", 1),  # the share training held out: max(1, 10% of 3)
    (FIXTURES / "coco" / "captions.json", ["--images", str(FIXTURES / "coco" / "images")], "test", 2),
    (FIXTURES / "cub", [], "test", 1),  # the official test split: one usable image
])
def test_user_data(run: Path, data: Path, extra: list[str], split: str, images: int,
                   capsys: pytest.CaptureFixture) -> None:
    assert main(["--run", str(run), "--data", str(data), *extra, "--split", split, "--num-prompts", "8",
                 "--samples-per-prompt", "2"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert list(report) == list(KEYS) and report["dataset"] == str(data.resolve())
    assert report["attributes"] is None and report["rerank_curve"] is None
    assert report["vae"]["attribute_agreement"] is None and report["vae"]["attribute_agreement_heldout"] is None
    assert report["plots"] == {"samples": "samples.png", "rerank_curve": None, "attribute_accuracy": None}
    assert report["settings"]["num_prompts"] == images and all(p["heldout"] is None for p in report["prompts"])
    assert (report["fid"]["clip"]["first"] is None) == (images < 2)
    assert "kept" in report["data"]  # the filter counts of user data
    assert "report:" in capsys.readouterr().out


def test_inception_fid_from_a_weights_file(run: Path, tmp_path: Path) -> None:
    path = tmp_path / "pt_inception.pth"
    torch.save(FIDInception().state_dict(), path)
    report = evaluate(run, EvalOptions(num_prompts=3, samples_per_prompt=1, inception_weights=str(path)))[0]
    fid = report["fid"]["inception"]
    assert fid["first"] == fid["reranked"] >= 0 and math.isfinite(fid["first"])  # one sample: first = reranked
    assert report["settings"]["inception_weights"] == str(path)


def usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The error line of ``main(argv)``, which must exit with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    prefix = "python -m dalle_fast.evaluate: error:"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1
    return lines[0]


def test_errors_exit_with_status_2(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "no such run directory" in usage_error(["--run", str(tmp_path / "nowhere")], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in usage_error(["--run", str(tmp_path / "empty")], capsys)
    line = usage_error(["--run", str(make_run(tmp_path / "vae_only", stages=("vae",)))], capsys)
    assert "holds no dalle checkpoint" in line and "--stage dalle" in line
    line = usage_error(["--run", str(make_run(tmp_path / "no_clip", stages=("vae", "dalle")))], capsys)
    assert "no checkpoint of stage clip" in line and "--stage clip" in line
    assert "--inception-weights: no such file" in usage_error(
        ["--run", str(run), "--inception-weights", str(tmp_path / "missing.pth")], capsys)
    assert "--images: only used with" in usage_error(["--run", str(run), "--images", str(tmp_path)], capsys)
    assert "--data: no such file or folder" in usage_error(["--run", str(run), "--data", str(tmp_path / "x")], capsys)
    assert "--top-k: must be at most the codebook size 64" in usage_error(["--run", str(run), "--top-k", "65"], capsys)
    assert "--num-prompts: must be a positive integer" in usage_error(["--run", str(run), "--num-prompts", "0"], capsys)
    with pytest.raises(UsageError, match="holds no vae checkpoint"):
        pipeline.load_run(make_run(tmp_path / "bare", stages=()))
