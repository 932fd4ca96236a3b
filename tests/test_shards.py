"""WebDataset tar shards as user data (dalle_fast.data.shards, the shard loader of
dalle_fast.train.loader, the token cache of a stream): shards written here in img2dataset's layout, with
a corrupt image, a missing caption and a truncated tar; every filter's count; readers (processes x data
loader workers) sharing out each epoch's shards; resuming from a position in samples exactly; and
``python -m dalle_fast.train --data 'DIR/{00000..00003}.tar'`` end to end, with --resume."""
from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from stage_runs import check_exact_resume, one_thread, records, run_main  # noqa: F401 - a fixture

import dalle_fast.train.vae
from dalle_fast.config import preset, with_dataset
from dalle_fast.data import DataFilters
from dalle_fast.data.shards import INSTALL, ShardReport, ShardStream, check_sample, load_shards, read_shard
from dalle_fast.data.splits import item_captions, load_data
from dalle_fast.train import main
from dalle_fast.train.loader import ShardLoader, train_loader

WORDS = ["red", "green", "blue", "small", "large", "round", "square", "bright", "dark", "striped"]
PATTERN = "{00000..00003}.tar"
SAMPLES = 12  # per shard
# samples of shard 0 with a defect (by index): what is wrong, and the filter count it lands in
DEFECTS = {1: "corrupt", 2: "no_caption", 3: "wide", 4: "french", 5: "truncated_jpeg", 6: "json_no_caption"}


def image_bytes(seed: int, fmt: str, size: tuple[int, int] = (40, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def caption(shard: int, index: int) -> str:
    return f"a photo of a {WORDS[index % 10]} thing number {shard} {index} on a {WORDS[(index + shard) % 10]} table"


def sample_files(shard: int, index: int) -> dict[str, bytes]:
    """The members of sample ``index`` of shard ``shard`` (extension -> bytes), in img2dataset's
    layout; shard 0 has the DEFECTS."""
    fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")][index % 3]
    seed = 1000 * shard + index
    files = {ext: image_bytes(seed, fmt), "txt": caption(shard, index).encode()}
    if index % 2:  # the caption in the json instead
        files["json"] = json.dumps({"caption": files.pop("txt").decode(), "url": "http://x"}).encode()
    defect = DEFECTS.get(index) if shard == 0 else None
    if defect == "corrupt":
        files = {"jpg": b"not a jpeg at all" * 10, "txt": caption(shard, index).encode()}
    elif defect == "no_caption":
        files.pop("txt", None), files.pop("json", None)
    elif defect == "wide":
        files[ext] = image_bytes(seed, fmt, (90, 30))
    elif defect == "french":
        files["txt"] = "une photo d'un chat noir sur le canapé".encode()
        files.pop("json", None)
    elif defect == "truncated_jpeg":
        files = {"jpg": image_bytes(seed, "JPEG", (64, 64))[:-400], "txt": caption(shard, index).encode()}
    elif defect == "json_no_caption":
        files = {ext: files[ext], "json": b'{"url": "http://x", "caption": null}'}
    return files


def write_shards(root: Path, shards: int = 4, truncate_last: bool = True) -> str:
    """``shards`` tar shards of SAMPLES samples under ``root``, the last cut off mid-member (sample 8);
    returns the brace pattern of their paths."""
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        path = root / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index in range(SAMPLES):
                for ext, data in sample_files(shard, index).items():
                    info = tarfile.TarInfo(f"{shard:03d}{index:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                if truncate_last and shard == shards - 1 and index == 8:
                    cut = tar.fileobj.tell() - 300  # inside sample 8's last member
        if truncate_last and shard == shards - 1:
            path.write_bytes(path.read_bytes()[:cut])
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


def test_a_shard_is_read_with_every_filter_counted(shards: str) -> None:
    report = ShardReport("test", DataFilters())
    raws = list(read_shard(shards.replace(PATTERN, "00000.tar"), report))
    assert [raw.index for raw in raws] == list(range(SAMPLES))
    loader_report = ShardReport("test", DataFilters())
    kept = [s.index for raw in raws if (s := check_sample(0, raw, loader_report, 32)) is not None]
    assert kept == [i for i in range(SAMPLES) if i not in DEFECTS]
    counts = loader_report.counts()
    assert counts == {**counts, "images_found": 12, "images_kept": 7, "unreadable": 1, "missing_captions": 2,
                      "bad_aspect": 1, "no_caption_left": 1, "non_english": 1, "broken_at_load": 1,
                      "captions_checked": 8, "captions_kept": 7}
    truncated = ShardReport("test", DataFilters())
    assert len(list(read_shard(shards.replace(PATTERN, "00003.tar"), truncated))) == 8  # sample 8 was cut
    assert truncated.truncated_shards == 1 and truncated.shards_read == 1
    missing = ShardReport("test", DataFilters())
    assert list(read_shard(shards.replace(PATTERN, "00099.tar"), missing)) == [] and missing.missing_shards == 1


def test_the_val_split_comes_from_the_first_shards_and_never_trains(shards: str) -> None:
    splits = load_shards(shards, 32, val_size=3, seed=0)
    names = [f"{s.shard}/{s.index}" for s in splits.val.samples]
    assert names == ["0/0", "0/10", "1/8"]  # every tenth sample, numbered over the shards: 0, 10, 20
    assert splits.train.held_out == {0: frozenset({0, 10}), 1: frozenset({8})}
    assert splits.report.shards_read == 2  # reading stopped in the second shard
    image, text = splits.val[2]
    assert image.shape == (3, 32, 32) and text == caption(1, 8)
    train = {s.name for shard in range(4) for s in splits.train.shard_samples(shard, splits.train.new_report())}
    assert not train & set(names)
    # shard 0: 6 usable (12 less the 6 DEFECTS), 2 of them val; shard 1: 12 less 1 val; 2: 12; 3: 8 before the cut
    assert len(train) == 4 + 11 + 12 + 8
    assert len(item_captions(splits.train, 5)) == 5


@pytest.mark.parametrize("readers", [1, 3, 4])
def test_readers_share_out_every_epoch_without_repeats(shards: str, readers: int) -> None:
    stream = load_shards(shards, 32, val_size=2).train
    everything = Counter(s.name for shard in range(4) for s in stream.shard_samples(shard, stream.new_report()))
    for epoch in range(3):
        seen: Counter = Counter()
        for reader in range(readers):
            report = stream.new_report()
            for got_epoch, sample in stream.reader_samples(reader, readers, seed=5, report=report):
                if got_epoch > epoch:
                    break
                if got_epoch == epoch:
                    seen[sample.name] += 1
        assert seen == everything
    orders = {tuple(stream.reader_shards(0, 1, 5, epoch)) for epoch in range(4)}
    assert len(orders) > 1  # the shard order changes with the epoch


def batches(loader, count: int) -> list[tuple[torch.Tensor, list[str]]]:
    return list(islice(iter(loader), count))


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_resumes_exactly_from_a_sample_position(shards: str, workers: int) -> None:
    """Two processes (rank 0 and 1 of 2, without torchrun) x ``workers`` data loader workers, batch
    8 (4 per rank): a loader started 5 batches in gives the uninterrupted loader's batches from the
    sixth on, the counts of what it delivered too; over an epoch no sample comes twice."""
    stream = load_shards(shards, 32, val_size=2).train
    for rank in (0, 1):
        straight = batches(ShardLoader(stream, 8, 3, 0, workers, rank, 2), 12)
        straight_counts = stream.report.counts()
        resumed = batches(train_loader(stream, 8, 3, start=5 * 8, num_workers=workers, rank=rank, size=2), 7)
        assert stream.report.counts() == straight_counts
        for (a, ta), (b, tb) in zip(straight[5:], resumed, strict=True):
            assert torch.equal(a, b) and ta == tb
        assert all(images.shape == (4, 3, 32, 32) for images, _ in straight)
    # the first 2 batches of each rank: 4 samples from each of the 4 readers' first shards (with 2
    # workers), 8 from each of 2 (without): all different
    captions = [text for rank in (0, 1) for _, texts in batches(ShardLoader(stream, 8, 3, 0, workers, rank, 2), 2)
                for text in texts]
    assert len(set(captions)) == len(captions) == 16


def test_too_few_shards_for_the_readers_is_named(shards: str) -> None:
    stream = load_shards(shards, 32, val_size=2).train
    with pytest.raises(ValueError, match=r"4 shards for 2 processes x 3 data loader workers.*num_workers"):
        ShardLoader(stream, 8, 0, 0, 3, 0, 2)
    with pytest.raises(ValueError, match="start"):
        ShardLoader(stream, 8, 0, 4, 0)


def shard_config(shards: str, steps: int = 8):
    config = with_dataset(preset("tiny"), shards)
    optim = dataclasses.replace(config.vae.optim, steps=steps, batch_size=32, ema_decay=0.9)
    return dataclasses.replace(config, vae=dataclasses.replace(config.vae, optim=optim),
                               data=dataclasses.replace(config.data, val_size=4),
                               train=dataclasses.replace(config.train, log_every=2, eval_every=4,
                                                         checkpoint_every=4))


def test_the_vae_stage_on_shards_resumes_exactly(shards: str, tmp_path: Path, monkeypatch) -> None:
    """8 steps of batch 32 on 35 train samples (7 epochs); crash in update 6, resume from the
    step-4 checkpoint: the same weights, optimizer state and metrics, bit for bit."""
    config = shard_config(shards)
    assert isinstance(load_data(config).train, ShardStream)
    check_exact_resume(config, "vae", tmp_path, monkeypatch, dalle_fast.train.vae, "vae_schedule")


def test_train_command_on_shards_then_resume_and_the_dalle_token_cache(shards: str, tmp_path: Path) -> None:
    """The tiny preset's val_size 256 takes every tenth of the 44 samples read (the 4 shards, the last
    cut after 8): 0/0, 0/10, 1/8, 2/6, 3/4. Train: the other 39, of which 34 pass the filters (shard 0:
    4 good and the truncated jpeg; shards 1-3: 11 + 11 + 7) and 33 decode."""
    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--data", shards, "--out", str(out)]
    printed = run_main([*argv, "--stage", "tokenizer"]) + run_main([*argv, "--stage", "vae", "--steps", "2"])
    assert "val split from the first" in printed and "vae: 2/2 steps" in printed
    assert "kept 5/5 images" in printed  # the val candidates
    run_main(["--out", str(out), "--stage", "vae", "--resume"])
    assert [r["step"] for r in records(out, "vae") if r["split"] == "val"] == [2]
    printed = run_main(["--out", str(out), "--stage", "dalle", "--steps", "2"])
    assert "dalle tokens: train shards" in printed and "kept 34/39 images" in printed
    data = [r for r in records(out, "dalle") if r["split"] == "data"]
    assert len(data) == 1 and data[0]["broken_at_load"] == 1 and data[0]["truncated_shards"] == 1
    with safe_open(str(out / "dalle_tokens.safetensors"), "pt") as f:
        assert f.get_tensor("train").shape == (33, 16) and f.get_tensor("val").shape == (5, 16)
        captions = json.loads(f.get_tensor("train_captions").numpy().tobytes())
    assert sorted(c[0] for c in captions) == sorted(
        caption(shard, i) for shard, n in enumerate((12, 12, 12, 8)) for i in range(n)
        if (shard, i) not in {(0, 0), (0, 10), (1, 8), (2, 6), (3, 4)} and not (shard == 0 and i in DEFECTS))
    printed = run_main(["--out", str(out), "--stage", "dalle", "--resume"])
    assert "token cache reused" in printed


def test_webdataset_is_optional(shards: str, tmp_path: Path, monkeypatch, capsys) -> None:
    code = ("import sys, dalle_fast, dalle_fast.data.splits, dalle_fast.train.loader, dalle_fast.train.tokens; "
            "sys.exit('webdataset' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    monkeypatch.setitem(sys.modules, "webdataset", None)  # import webdataset now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--data", shards, "--out", str(tmp_path / "run"), "--stage", "vae"])
    assert exit_info.value.code == 2
    assert INSTALL in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
