"""The built-in ``emoji`` data (dalle_fast.data.emoji): its splits (disjoint, covering every glyph, a
seeded val split, held-out names whose parts training shows), its captions (lowercase, at least 3
words, kept by the paper's filters, deterministic), its images (white, centred ink, size, dtype), the
render cache (deterministic, keyed by what changes the rendering, shared by concurrent loads), the
exit status 2 naming both Debian packages when a file is missing, and ``python -m dalle_fast.train
--data emoji`` through every stage.

One render of every glyph at 32 px (the tiny preset's size, about 8 s) into a temporary cache is
shared by the module; the tests that need the installed font and CLDR files fail without them, saying
what to install (ci/test.sh installs them). The missing-file and config tests need neither.
"""
from __future__ import annotations

import dataclasses
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dalle_fast.config import Config, DataConfig, preset, with_dataset
from dalle_fast.config.emoji_spec import CLDR_PACKAGE, DEFAULT_CLDR, DEFAULT_FONT, DEFAULT_HOLDOUT, FONT_PACKAGE
from dalle_fast.data import emoji
from dalle_fast.data.emoji import Emoji, EmojiDataset, EmojiGlyphs, cache_key, emoji_splits, read_cldr, split_indices
from dalle_fast.data.filters import DataFilters
from dalle_fast.errors import UsageError
from dalle_fast.train.cli import build_parser
from dalle_fast.train.cli import main as train_main

SIZE = 32
INSTALL = "apt-get install fonts-noto-color-emoji unicode-cldr-core"
INSTALLED = Path(DEFAULT_FONT).is_file() and all((Path(DEFAULT_CLDR) / f).is_file() for f in emoji.ANNOTATION_FILES)
MISSING = (f"needs the Debian packages {FONT_PACKAGE} and {CLDR_PACKAGE} (sudo {INSTALL}); ci/test.sh installs "
           "them when it runs as root")


@pytest.fixture
def packages() -> None:
    """Fails (never skips) a test that needs the installed font and CLDR files when they are missing."""
    if not INSTALLED:
        pytest.fail(MISSING)

# A small CLDR folder of our own: five names, one the font lacks (the hyphen-minus).
MINI = {
    "\U0001F600": ("grinning face", "face | grin | grinning face"),
    "\U0001F44D\U0001F3FD": ("thumbs up: medium skin tone", "+1 | hand | medium skin tone | thumb | thumbs up"),
    "\U0001F1EF\U0001F1F5": ("flag: Japan", "flag"),
    "\U0001F63F": ("crying cat", "cat | cry | face | sad | tear"),
    "-": ("hyphen-minus", "dash | hyphen-minus | minus"),
}


def write_cldr(folder: Path, entries: dict[str, tuple[str, str]] = MINI) -> Path:
    """A CLDR ``common`` folder with ``entries`` (sequence -> (name, keywords)) in its two files."""
    for i, name in enumerate(emoji.ANNOTATION_FILES):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        half = list(entries.items())[i::2]  # some entries in each file
        lines = "".join(f'<annotation cp="{cp}">{keywords}</annotation><annotation cp="{cp}" type="tts">{tts}'
                        "</annotation>\n" for cp, (tts, keywords) in half)
        path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<ldml><annotations>\n{lines}</annotations></ldml>\n')
    return folder


def emoji_config(**data: object) -> Config:
    config = with_dataset(preset("tiny"), "emoji")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **data))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$DALLE_FAST_CACHE`` of this module: its ``emoji`` folder holds the one render at 32 px."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def rendered(cache_root: Path) -> tuple[emoji.EmojiSplits, float]:
    """The emoji data of the tiny preset (32 px) rendered into the module's cache, and the seconds it took."""
    if not INSTALLED:
        pytest.fail(MISSING)
    started = time.perf_counter()
    splits = emoji_splits(emoji_config(), cache=cache_root / "emoji")
    return splits, time.perf_counter() - started


@pytest.fixture
def data(rendered: tuple[emoji.EmojiSplits, float]) -> emoji.EmojiSplits:
    return rendered[0]


def names_of(data: emoji.EmojiSplits, split: str) -> list[str]:
    return [data.dataset.emoji(i).name for i in getattr(data, split).indices]


# --- splits --------------------------------------------------------------------------------------------------------

def test_splits_are_disjoint_and_cover_every_glyph(data: emoji.EmojiSplits) -> None:
    indices = {s: list(getattr(data, s).indices) for s in emoji.SPLITS}
    everything = [i for split in indices.values() for i in split]
    assert sorted(everything) == list(range(len(data.dataset))), "disjoint, and every glyph in one split"
    rest = len(data.dataset) - len(indices["holdout"])
    assert len(indices["val"]) == min(preset("tiny").data.val_size, rest // 10) == 256
    assert len(data.dataset) > 3000 and len(indices["train"]) > 2500
    held = set(names_of(data, "holdout"))
    assert set(DEFAULT_HOLDOUT) <= held
    assert all(n in DEFAULT_HOLDOUT or n.partition(": ")[0] in DEFAULT_HOLDOUT for n in held), "names + variants only"
    assert "man cook: dark skin tone" in held, "a held-out role keeps its skin tones out too"
    for split in ("train", "val"):
        assert not held & set(names_of(data, split))


def test_the_val_split_is_a_seeded_draw(data: emoji.EmojiSplits) -> None:
    names = [data.dataset.emoji(i).name for i in range(len(data.dataset))]
    first = split_indices(names, DEFAULT_HOLDOUT, 256, seed=0)
    assert first == split_indices(names, DEFAULT_HOLDOUT, 256, seed=0)
    assert first["val"] == list(data.val.indices)
    other = split_indices(names, DEFAULT_HOLDOUT, 256, seed=1)
    assert other["val"] != first["val"] and len(other["val"]) == 256
    assert other["holdout"] == first["holdout"], "the seed moves glyphs between train and val only"
    assert sorted(other["train"] + other["val"]) == sorted(first["train"] + first["val"])
    spread = np.diff(first["val"])
    assert spread.max() < len(names) // 4, "drawn across the whole list, not a block of it"


def test_every_held_out_name_is_made_of_parts_the_train_split_shows(data: emoji.EmojiSplits) -> None:
    train = set(names_of(data, "train"))
    stems = {n.partition(": ")[0] for n in train}
    for name in DEFAULT_HOLDOUT:
        if name.endswith(" skin tone"):
            base, tone = name.split(": ")
            assert base in stems, f"{name}: the base {base!r} toneless or in another tone"
            assert any(n.endswith(": " + tone) and not n.startswith(base + ":") for n in train), f"{name}: {tone}"
        else:
            gender, role = name.split(" ", 1)
            others = {role} | {f"{g} {role}" for g in ("woman", "man", "person") if g != gender}
            assert others & stems, f"{name}: the role {role!r} with another gender"
            assert any(s.startswith(gender + " ") and s != name for s in stems), f"{name}: the gender {gender!r}"
    images = data.dataset.glyphs.images
    train_pixels = {images[data.dataset.members[i]].tobytes() for i in data.train.indices}
    copies = [n for n, i in zip(names_of(data, "holdout"), data.holdout.indices)
              if images[data.dataset.members[i]].tobytes() in train_pixels]
    assert not copies, f"held-out glyphs drawn exactly as a train glyph: {copies}"


FILLERS = [f"thing {i}" for i in range(40)]


@pytest.mark.parametrize("names, holdout, missing", [
    (["ear: medium skin tone", "nose: medium skin tone", "nose"], "ear: medium skin tone", "'ear'"),
    (["ear", "ear: light skin tone", "ear: medium skin tone"], "ear: medium skin tone", "'medium skin tone'"),
    (["man cook", "man pilot", "woman pilot"], "man cook", "'cook'"),
    (["woman cook", "man cook", "cook"], "man cook", "'man'"),
])
def test_a_held_out_name_with_a_part_training_never_shows_is_refused(names, holdout, missing) -> None:
    with pytest.raises(UsageError, match=rf"data\.emoji_holdout: '{holdout}' .*{missing}"):
        split_indices(names + FILLERS, [holdout], 1, seed=0)
    seen = names + ["ear", "ear: dark skin tone", "nose: medium skin tone", "cook", "man pilot"] * 2  # val takes 1
    assert split_indices(seen + FILLERS, [holdout], 1, seed=0)["holdout"] == [seen.index(holdout)]


def test_bad_held_out_names_are_refused_naming_the_field(data: emoji.EmojiSplits, cache_root: Path) -> None:
    with pytest.raises(UsageError, match=r"data\.emoji_holdout: 1 names are no emoji .*'man unicorn'"):
        emoji_splits(emoji_config(emoji_holdout=("man unicorn",)), cache=cache_root / "emoji")
    for bad in (["grinning face"], ["man cook", "man cook"], "man cook", [3]):
        with pytest.raises(ValueError, match=r"DataConfig\.emoji_holdout"):
            DataConfig(dataset="emoji", emoji_holdout=bad)
    no_holdout = emoji_splits(emoji_config(emoji_holdout=()), cache=cache_root / "emoji")
    assert len(no_holdout.holdout) == 0 and len(no_holdout.train) + len(no_holdout.val) == len(data.dataset)


# --- captions ------------------------------------------------------------------------------------------------------

def test_captions_are_lowercase_long_enough_and_kept_by_the_papers_filters(data: emoji.EmojiSplits) -> None:
    filters = DataFilters()
    dataset = data.dataset
    assert dataset.report.captions_kept == dataset.report.captions_checked > 3 * len(dataset)
    assert dataset.report.images_kept == len(dataset) == len(dataset.glyphs)
    for i in range(len(dataset)):
        captions = dataset.captions(i)
        assert len(captions) >= 3 and captions == dataset.emoji(i).captions()
        for caption in captions:
            assert caption == caption.lower() and len(caption.split()) >= 3, caption
            assert filters.caption_rejection(caption) is None, caption
            assert not set(caption) & set("\u2018\u2019\u201c\u201d"), caption


def test_caption_examples_and_determinism(data: emoji.EmojiSplits) -> None:
    index = {data.dataset.emoji(i).name: i for i in range(len(data.dataset))}
    first = {
        "thumbs up: medium skin tone": "an emoji of thumbs up with medium skin tone",
        "flag: Japan": "an emoji of flag of japan",
        "keycap: 1": "an emoji of keycap 1",
        "man: curly hair": "an emoji of man with curly hair",
        "couple with heart: woman, man": "an emoji of couple with heart, woman, man",
        "Japanese \u201chere\u201d button": 'an emoji of japanese "here" button',
        "OK hand": "an emoji of ok hand",
    }
    for name, caption in first.items():
        assert data.dataset.captions(index[name])[0] == caption
    crying = data.dataset.captions(index["crying cat"])
    assert crying[:3] == ("an emoji of crying cat", "the crying cat emoji", "a picture of crying cat")
    assert crying[3].startswith("an emoji of crying cat, ") and "cry" in crying[3].split(", ")
    again = read_cldr(DEFAULT_CLDR)
    assert [e.captions() for e in again if e.name in index] == [data.dataset.emoji(index[e.name]).captions()
                                                                 for e in again if e.name in index]
    draws = [data.dataset[i][1] for i in range(0, len(data.dataset), 97)]
    assert draws == [data.dataset[i][1] for i in range(0, len(data.dataset), 97)]
    assert all(d in data.dataset.captions(i) for d, i in zip(draws, range(0, len(data.dataset), 97)))
    assert len(set(draws)) > 1 and any(not d.startswith("an emoji of") for d in draws), "the templates are drawn"


def test_an_entry_without_keywords_has_the_three_name_captions() -> None:
    assert Emoji("x", "Mrs. Claus", ()).captions() == ("an emoji of mrs. claus", "the mrs. claus emoji",
                                                        "a picture of mrs. claus")
    assert Emoji("x", "flag: England", ("flag", "England")).captions()[3:] == ()


# --- images --------------------------------------------------------------------------------------------------------

def test_images_are_centred_glyphs_on_white(data: emoji.EmojiSplits) -> None:
    glyphs = data.dataset.glyphs
    pixels = np.asarray(glyphs.images)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(glyphs), SIZE, SIZE, 3)
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    assert (border == 255).all(), "a white margin around the ink"
    ink = (pixels < 250).any(axis=3)
    offsets, extents = [], []
    for mask in ink:
        rows, cols = np.nonzero(mask)
        assert len(rows), "every glyph has ink"
        offsets.append(max(abs(rows.min() + rows.max() - (SIZE - 1)), abs(cols.min() + cols.max() - (SIZE - 1))) / 2)
        extents.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
    offsets, extents = np.array(offsets), np.array(extents)
    assert (offsets <= 1).mean() > 0.99 and offsets.max() <= SIZE / 6, "ink centred (a few have faint specks)"
    assert extents.min() >= 0.8 * SIZE, "cropped to the ink: the long side spans the square but for the margin"
    image, caption = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, SIZE, SIZE) and isinstance(caption, str)
    assert 0 <= image.min() < 0.9 and image.max() == 1
    assert torch.equal(image, torch.from_numpy(pixels[data.train.indices[0]].copy()).permute(2, 0, 1).float() / 255)
    colorful = (pixels.max(axis=3).astype(int) - pixels.min(axis=3) > 60).any(axis=(1, 2)).mean()
    assert colorful > 0.9, "drawn in color, not as black outlines"


def test_sequences_form_one_glyph_and_what_the_font_lacks_is_left_out(data: emoji.EmojiSplits) -> None:
    glyphs = data.dataset.glyphs
    for name in ("grinning face", "flag: Japan", "family: man, woman, boy", "thumbs up: dark skin tone",
                 "keycap: 1", "woman cook: medium skin tone"):
        assert name in glyphs.index
    assert "hyphen-minus" not in glyphs.index and glyphs.names_read > len(glyphs)
    tones = [np.asarray(glyphs.images[glyphs.index[f"thumbs up: {t} skin tone"]]) for t in ("light", "dark")]
    assert np.abs(tones[0].astype(int) - tones[1]).max() > 100, "skin tones drawn, not the base glyph"


# --- rendering and the cache ---------------------------------------------------------------------------------------

def test_rendering_is_deterministic_and_the_cache_gives_the_same_pixels(data: emoji.EmojiSplits, cache_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    glyphs = data.dataset.glyphs
    some = list(glyphs.emojis[::25])
    kept, again = emoji.render_all(some, SIZE)
    assert kept == some
    assert np.array_equal(again, np.asarray(glyphs.images)[::25]), "a second render, pixel for pixel"

    def no_render(*args: object) -> None:
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(emoji, "render_all", no_render)
    started = time.perf_counter()
    cached = EmojiGlyphs.load(SIZE, cache=cache_root / "emoji")
    assert time.perf_counter() - started < 5
    assert cached.emojis == glyphs.emojis and np.array_equal(cached.images, glyphs.images)
    assert isinstance(cached.images, np.memmap) and not cached.images.flags.writeable
    sent = pickle.dumps(cached)
    assert len(sent) < cached.images.nbytes / 10, "pickled for a worker as the path of the map, not the pixels"
    assert np.array_equal(pickle.loads(sent).images, glyphs.images)
    assert not list((cache_root / "emoji").glob("*.tmp")), "no temp files left"


def test_the_cache_key_follows_what_changes_the_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    font = tmp_path / "font.ttf"
    font.write_bytes(b"font one")
    cldr = write_cldr(tmp_path / "cldr")
    key = cache_key(SIZE, font, cldr)
    assert key == cache_key(SIZE, font, cldr) != cache_key(SIZE * 2, font, cldr)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "font.ttf").write_bytes(font.read_bytes())
    assert cache_key(SIZE, copy / "font.ttf", write_cldr(copy / "cldr")) == key, "contents, not paths"
    font.write_bytes(b"font two")
    assert cache_key(SIZE, font, cldr) != key
    font.write_bytes(b"font one")
    write_cldr(cldr, {**MINI, "\U0001F431": ("cat face", "cat | face | pet")})
    assert cache_key(SIZE, font, cldr) != key
    write_cldr(cldr)
    monkeypatch.setattr(emoji.PIL, "__version__", "0.0")
    assert cache_key(SIZE, font, cldr) != key, "another Pillow draws anew"
    monkeypatch.undo()
    monkeypatch.setattr(emoji, "CACHE_FORMAT", "dalle_fast.emoji/0")
    assert cache_key(SIZE, font, cldr) != key


@pytest.mark.usefixtures("packages")
def test_concurrent_first_loads_render_once_and_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cldr = write_cldr(tmp_path / "cldr")
    renders = []
    real = emoji.render_all

    def counted(*args: object) -> object:
        renders.append(args)
        time.sleep(0.2)  # the others arrive while this one renders
        return real(*args)

    monkeypatch.setattr(emoji, "render_all", counted)
    results: list[EmojiGlyphs] = []
    threads = [threading.Thread(target=lambda: results.append(EmojiGlyphs.load(16, cldr=cldr, cache=tmp_path / "c")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(renders) == 1
    assert [e.name for e in results[0].emojis] == ["grinning face", "flag: Japan", "thumbs up: medium skin tone",
                                                   "crying cat"], "in file order; the hyphen-minus left out"
    assert all(np.array_equal(r.images, results[0].images) and r.emojis == results[0].emojis for r in results)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".lock", ".npy"]
    dataset = EmojiDataset(results[0])
    assert len(dataset) == 4 and dataset.report.images_kept == 4 and results[0].names_read == 5


@pytest.mark.usefixtures("packages")
def test_an_unwritable_cache_renders_with_a_warning(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="not writable"):
        glyphs = EmojiGlyphs.load(16, cldr=write_cldr(tmp_path / "cldr"), cache=blocked / "emoji")
    assert len(glyphs) == 4 and glyphs.path is None and glyphs.images.shape == (4, 16, 16, 3)


# --- missing files, the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["font", "cldr"])
def test_a_missing_font_or_cldr_exits_2_naming_both_packages(missing: str, tmp_path: Path, capsys) -> None:
    paths = {"emoji_font": str(tmp_path / "NotoColorEmoji.ttf"), "emoji_cldr": str(write_cldr(tmp_path / "cldr"))}
    if missing == "cldr":
        paths = {"emoji_font": DEFAULT_FONT, "emoji_cldr": str(tmp_path / "no-cldr")}
    out = tmp_path / "run"
    emoji_config(**paths).save(out)
    with pytest.raises(SystemExit) as exit_:
        train_main(["--out", str(out), "--stage", "tokenizer"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert FONT_PACKAGE in err and CLDR_PACKAGE in err and INSTALL in err, err
    field = "data.emoji_font" if missing == "font" else "data.emoji_cldr"
    assert field in err and (paths["emoji_font"] if missing == "font" else "no-cldr") in err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"], "nothing trained, nothing written"
    with pytest.raises(UsageError, match=FONT_PACKAGE):
        EmojiGlyphs.load(16, paths["emoji_font"], paths["emoji_cldr"], cache=tmp_path / "cache")


def test_the_train_command_takes_data_emoji() -> None:
    args = build_parser().parse_args(["--data", "emoji", "--preset", "tiny"])
    assert args.data == "emoji"
    config = with_dataset(preset("demo"), "emoji")
    assert config.data.dataset == "emoji" and config.vae.augment_composite == 0.0


def test_every_stage_trains_on_emoji(data: emoji.EmojiSplits, cache_root: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DALLE_FAST_CACHE", str(cache_root))  # the module's render: no second one
    monkeypatch.setattr(emoji, "render_all", lambda *a: pytest.fail("rendered again instead of reading the cache"))
    out = tmp_path / "run"
    assert train_main(["--preset", "tiny", "--data", "emoji", "--out", str(out), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(data.dataset.report) in printed, "the filter counts, as for user data"
    for stage in ("tokenizer", "vae", "dalle", "clip"):
        assert f"{stage}: " in printed
    assert Config.load(out).data.dataset == "emoji"
    assert (out / "tokenizer.json").is_file() and (out / "dalle_tokens.safetensors").is_file()


def test_evaluation_reads_the_val_split_and_every_glyph(data: emoji.EmojiSplits, cache_root: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dalle_fast.evaluate.data import eval_data

    monkeypatch.setenv("DALLE_FAST_CACHE", str(cache_root))
    val = eval_data(emoji_config(), "val")
    assert list(val.dataset.indices)[:len(data.val)] == list(data.val.indices) and val.attributes is None
    assert val.captions[0][0].startswith("an emoji of ")
    assert len(eval_data(emoji_config(), "test").dataset) == len(data.dataset)


def test_evaluation_prompts_seen_and_held_out_names_and_retrieves_among_every_glyph(
        data: emoji.EmojiSplits, cache_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples 0 blank, 1 the prompt's own glyph (scored best), 2 another glyph: the CLIP-best
    retrieves its own glyph first for every prompt (up to identical-looking glyphs), the first
    sample never; prompts come half from held-out names, half from names seen in training."""
    from dalle_fast.evaluate import EvalOptions, evaluate, pipeline
    from dalle_fast.evaluate.data import eval_data
    from dalle_fast.evaluate.metrics import wilson_interval

    monkeypatch.setenv("DALLE_FAST_CACHE", str(cache_root))
    config = emoji_config()
    config = dataclasses.replace(config, transformer=dataclasses.replace(config.transformer, sample_temperature=0.7))
    run = tmp_path / "run"
    make_random_run(config, run)
    pool = eval_data(config, "val").pool
    by_caption = {pool.captions[i][0]: pool.gallery_index[i] for i in range(len(pool.captions))}

    def fake_generate(pipe, captions, samples, options, temperature, top_k):
        assert temperature == 0.7  # no --temperature: the run's transformer.sample_temperature
        images = torch.ones(len(captions), 3, 3, SIZE, SIZE)
        for p, caption in enumerate(captions):
            images[p, 1] = data.dataset[by_caption[caption]][0]
            images[p, 2] = data.dataset[(by_caption[caption] + 7) % len(data.dataset)][0]
        return pipeline.Samples(images, torch.tensor([[0.1, 0.9, 0.2]]).repeat(len(captions), 1))

    monkeypatch.setattr(pipeline, "generate", fake_generate)
    report = evaluate(run, EvalOptions(num_prompts=12, samples_per_prompt=3))[0]
    prompts = report["prompts"]
    assert len(prompts) == 12 and sum(p["heldout"] for p in prompts) == 6
    held = set(names_of(data, "holdout"))
    seen = set(names_of(data, "train"))
    for p in prompts:
        name = data.dataset.emoji(by_caption[p["caption"]]).name
        assert (name in held) if p["heldout"] else (name in seen)
    for group in ("held_in", "held_out"):
        part = report["groups"][group]
        r = part["retrieval"]
        assert part["prompts"] == 6 and r["first"] == {"top1": 0.0, "top5": 0.0}
        assert r["reranked"]["top5"] == 1.0 and r["reranked"]["top1"] >= 5 / 6  # a look-alike may tie
        assert r["intervals"]["reranked"]["top5"] == pytest.approx(list(wilson_interval(6, 6)))
        assert part["clip_score"]["reranked"] == pytest.approx(0.9)
        assert part["fid_clip"]["reranked"] == pytest.approx(0.0, abs=1e-6)  # the samples are the real glyphs
    assert report["attributes"] is None and report["vae"]["attribute_agreement"] is None
    assert len(by_caption) == len(pool.captions)  # first captions name one glyph each


def make_random_run(config: Config, run: Path) -> None:
    """A run directory of ``config`` with a tokenizer and randomly initialized vae, dalle and clip stages."""
    from dalle_fast.checkpoint import Checkpoint, save_checkpoint
    from dalle_fast.clip import CLIP
    from dalle_fast.data.splits import dataset_captions, load_data
    from dalle_fast.dvae import DiscreteVAE
    from dalle_fast.model import DALLE
    from dalle_fast.tokenizer import CaptionTokenizer

    config.save(run)
    captions = dataset_captions(load_data(config).train)
    CaptionTokenizer.train(captions, config.transformer.text_vocab, config.transformer.text_len).save(run)
    for stage, build in (("vae", DiscreteVAE), ("dalle", DALLE), ("clip", CLIP)):
        save_checkpoint(run, stage, Checkpoint(3, build(config).state_dict(), {}, {"seconds": 0.0}))


def test_render_time_and_sizes(rendered: tuple[emoji.EmojiSplits, float]) -> None:
    """Printed for the record (pytest -s): the render of every glyph at 32 px and the split sizes."""
    data, seconds = rendered
    print(f"rendered {len(data.dataset)} glyphs at {SIZE} px in {seconds:.1f} s; train {len(data.train)}, "
          f"val {len(data.val)}, holdout {len(data.holdout)}")
    assert seconds < 120
