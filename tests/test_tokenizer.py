"""The caption tokenizer: byte-level BPE with lowercase normalization, per-position padding,
counted truncation, seeded BPE dropout, and its tokenizer.json."""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pytest
import torch

from dalle_fast.data import ShapesDataset
from dalle_fast.tokenizer import TOKENIZER_FILE, CaptionTokenizer

VOCAB, TEXT_LEN = 400, 16
EXTRA = ["the quick brown fox jumps over the lazy dog", "a café in the snow", "zebra crossings at night"]


@pytest.fixture(scope="module")
def captions() -> list[str]:
    train = ShapesDataset("train", 8, size=2_000)
    return [train.captions(i)[0] for i in range(len(train))] + EXTRA * 20


@pytest.fixture(scope="module")
def tokenizer(captions: list[str]) -> CaptionTokenizer:
    return CaptionTokenizer.train(captions, VOCAB, TEXT_LEN)


def real(row: torch.Tensor, tokenizer: CaptionTokenizer) -> list[int]:
    return [i for i in row.tolist() if i < tokenizer.vocab_size]


def test_round_trip_of_captions_and_unseen_text(tokenizer: CaptionTokenizer, captions: list[str]) -> None:
    texts = captions[:50] + ["A Small RED Circle in the top left", "señor café, 42!", "", "zzz qqq"]
    short = [t for t in texts if len(tokenizer.bpe.encode(t).ids) <= TEXT_LEN]
    assert len(short) == len(texts)  # none is cut, so each must come back whole
    tokens = tokenizer.encode(texts)
    assert tokens.shape == (len(texts), TEXT_LEN) and tokens.dtype == torch.long
    assert [tokenizer.decode(row) for row in tokens] == [t.lower() for t in texts]
    assert tokenizer.decode(tokens[0].tolist()) == texts[0]  # a list of ints works too


def test_shapes_words_are_single_tokens(tokenizer: CaptionTokenizer) -> None:
    tokens = tokenizer.encode(["a large purple diamond in the bottom right"])[0]
    assert len(real(tokens, tokenizer)) == 8  # one token per word: the BPE learned the vocabulary


def test_each_empty_position_gets_its_own_padding_id(tokenizer: CaptionTokenizer) -> None:
    tokens = tokenizer.encode(["small red circle", "", "a"])
    assert tokenizer.num_text_tokens == VOCAB + TEXT_LEN
    for row in tokens:
        n = len(real(row, tokenizer))
        assert (row[:n] < tokenizer.learned_vocab).all()
        assert row[n:].tolist() == [VOCAB + i for i in range(n, TEXT_LEN)]
    assert len(real(tokens[0], tokenizer)) == 3 and len(real(tokens[1], tokenizer)) == 0
    assert tokens[1].tolist() == list(range(VOCAB, VOCAB + TEXT_LEN))


def test_truncation_is_counted(captions: list[str]) -> None:
    tokenizer = CaptionTokenizer.train(captions, VOCAB, text_len=5)
    long, short = "there is a small red circle in the top left", "small red circle"
    assert tokenizer.truncated == 0
    tokens = tokenizer.encode([long, short, long])
    assert tokenizer.truncated == 2
    assert (tokens[0] < VOCAB).all() and tokenizer.decode(tokens[0]) == "there is a small red"
    tokenizer.encode([short])
    assert tokenizer.truncated == 2
    tokenizer.encode([long])
    assert tokenizer.truncated == 3


def test_normalization_is_nfkc_and_lowercase(tokenizer: CaptionTokenizer) -> None:
    same = tokenizer.encode(["A SMALL Red CIRCLE", "a small red circle", "ａ ｓｍａｌｌ ｒｅｄ ｃｉｒｃｌｅ"])
    assert torch.equal(same[0], same[1]) and torch.equal(same[1], same[2])
    assert not torch.equal(same[1], tokenizer.encode(["a small red square"])[0])


def test_python_bpe_equals_the_library_without_dropout(tokenizer: CaptionTokenizer) -> None:
    rng = random.Random(0)
    words = ["circle", "triangle", "squares", "xylophone"] + [
        "".join(rng.choice(string.ascii_lowercase + "éü ") for _ in range(rng.randrange(1, 30))) for _ in range(200)]
    for text in words:
        pieces = tokenizer.bpe.pre_tokenizer.pre_tokenize_str(tokenizer.bpe.normalizer.normalize_str(text))
        ours = [s for piece, _ in pieces for s in tokenizer.merge_word(piece)]
        assert ours == tokenizer.bpe.encode(text).tokens, text


def test_bpe_dropout_varies_segmentation_and_keeps_the_text(tokenizer: CaptionTokenizer) -> None:
    text = "there is a picture of a large triangle in the bottom right"
    plain = tokenizer.encode([text])
    state = torch.get_rng_state()
    assert torch.equal(tokenizer.encode([text] * 3, dropout=0.0), plain.repeat(3, 1))
    assert torch.equal(torch.get_rng_state(), state)  # no dropout, no draws

    roomy = CaptionTokenizer(tokenizer.bpe, VOCAB, 64)  # room for the longest segmentation
    dropped, plain_long = roomy.encode([text] * 100, dropout=0.2), roomy.encode([text])
    assert roomy.truncated == 0
    segmentations = {tuple(real(row, tokenizer)) for row in dropped}
    assert len(segmentations) > 20
    assert all(roomy.decode(row) == text for row in dropped)
    lengths = torch.tensor([len(s) for s in segmentations], dtype=torch.float)
    assert lengths.min() >= len(real(plain_long[0], tokenizer)) and lengths.mean() > len(real(plain_long[0], tokenizer))

    a = tokenizer.encode([text] * 5, dropout=0.3, generator=torch.Generator().manual_seed(7))
    b = tokenizer.encode([text] * 5, dropout=0.3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)  # seeded: a resumed run redraws the same segmentations
    torch.manual_seed(3)
    c = tokenizer.encode([text] * 5, dropout=0.3)
    torch.manual_seed(3)
    assert torch.equal(c, tokenizer.encode([text] * 5, dropout=0.3))  # the global RNG by default


def test_vocab_size_bounds_the_ids() -> None:
    rng = random.Random(1)
    texts = [" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(8))
             for _ in range(300)]
    tokenizer = CaptionTokenizer.train(texts, 300, 8)
    assert tokenizer.learned_vocab == 300 and tokenizer.vocab_size == 300
    tokens = tokenizer.encode(texts)
    assert tokens.max() < 300 + 8 and (tokens[:, 0] < 300).all()
    assert CaptionTokenizer.train(["a a a"], 1000, 8).learned_vocab < 1000  # runs out of pairs to merge


def test_save_load_gives_equal_encodings(tmp_path: Path, tokenizer: CaptionTokenizer, captions: list[str]) -> None:
    assert tokenizer.save(tmp_path) == tmp_path / TOKENIZER_FILE
    file = tokenizer.save(tmp_path / "other.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", TOKENIZER_FILE]  # no temp files left
    for source in (tmp_path, file):
        loaded = CaptionTokenizer.load(source)
        assert (loaded.vocab_size, loaded.text_len, loaded.learned_vocab) == (VOCAB, TEXT_LEN, tokenizer.learned_vocab)
        assert torch.equal(loaded.encode(captions), tokenizer.encode(captions))
        generator = torch.Generator()
        assert torch.equal(loaded.encode(captions[:20], 0.2, generator.manual_seed(1)),
                           tokenizer.encode(captions[:20], 0.2, generator.manual_seed(1)))
    data = json.loads(file.read_text())
    assert (data["vocab_size"], data["text_len"]) == (VOCAB, TEXT_LEN)


def test_training_is_deterministic(tmp_path: Path, captions: list[str], tokenizer: CaptionTokenizer) -> None:
    tokenizer.save(tmp_path / "a.json")
    CaptionTokenizer.train(captions, VOCAB, TEXT_LEN).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_bad_arguments_are_named(tmp_path: Path, tokenizer: CaptionTokenizer) -> None:
    cases = [
        (lambda: CaptionTokenizer.train(["a b"], 255, 8), ValueError, "vocab_size"),
        (lambda: CaptionTokenizer.train(["a b"], 300, 0), ValueError, "text_len"),
        (lambda: CaptionTokenizer.train(["a b"], 300.0, 8), TypeError, "vocab_size"),
        (lambda: CaptionTokenizer.train("a b", 300, 8), TypeError, "captions"),
        (lambda: CaptionTokenizer.train(["a", 3], 300, 8), TypeError, r"texts\[1\]"),
        (lambda: tokenizer.encode("a caption"), TypeError, "texts"),
        (lambda: tokenizer.encode(["a", None]), TypeError, r"texts\[1\]"),
        (lambda: tokenizer.encode(["a"], dropout=1.0), ValueError, "dropout"),
        (lambda: tokenizer.encode(["a"], dropout=-0.1), ValueError, "dropout"),
        (lambda: tokenizer.decode([VOCAB + TEXT_LEN]), ValueError, "ids"),
        (lambda: tokenizer.decode([-1]), ValueError, "ids"),
        (lambda: tokenizer.decode(torch.zeros(2, 3, dtype=torch.long)), ValueError, "ids"),
        (lambda: tokenizer.decode(torch.zeros(3)), ValueError, "ids"),
        (lambda: tokenizer.decode([1.5]), TypeError, "ids"),
        (lambda: CaptionTokenizer(tokenizer.bpe, 256, 8), ValueError, "vocab_size"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    (tmp_path / "config.json").write_text('{"name": "tiny"}')
    with pytest.raises(ValueError, match="not a dalle_fast tokenizer"):
        CaptionTokenizer.load(tmp_path / "config.json")
    (tmp_path / "broken.json").write_text('{"format": "dalle_fast.CaptionTokenizer/1", "bpe": {"model": 1}}')
    with pytest.raises(ValueError, match="broken.json"):
        CaptionTokenizer.load(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError):
        CaptionTokenizer.load(tmp_path / "missing")
