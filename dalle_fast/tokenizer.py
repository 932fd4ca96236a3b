"""Caption tokenizer (docs/design.md#tokenizer): byte-level BPE (Hugging Face ``tokenizers``) trained on
the training captions, NFKC + lowercase normalization, fixed ``text_len`` with one padding token
per text position.

Ids: ``[0, vocab_size)`` are BPE ids (the trainer learns at most ``vocab_size`` of them, its 256
byte symbols included); position ``i`` of a caption shorter than ``text_len`` holds the padding
id ``vocab_size + i``. So a text embedding has ``num_text_tokens = vocab_size + text_len`` rows.

BPE dropout (Provilkov et al. 2020) is applied here, not by ``tokenizers`` (whose dropout draws
from an unseeded generator): with ``dropout > 0`` every candidate merge is skipped with that
probability, drawing from torch's RNG (the global one, or the ``generator`` given), so that a
training run that checkpoints torch's RNG state resumes with the very same segmentations.

The file (``tokenizer.json``) is ``{"format": FORMAT, "vocab_size": V, "text_len": T, "bpe": {...}}``
with ``bpe`` a complete Hugging Face tokenizer (``tokenizers.Tokenizer.from_str(json.dumps(bpe))``).
"""
from __future__ import annotations

import itertools
import json
import operator
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from .atomic import write_atomic
from .checks import check_int

FORMAT = "dalle_fast.CaptionTokenizer/1"
TOKENIZER_FILE = "tokenizer.json"
BYTE_SYMBOLS = 256  # the byte-level alphabet, always part of the vocabulary


def tokenizer_path(path: str | os.PathLike) -> Path:
    """A path ending in ``.json`` is the tokenizer file itself; any other path is a run directory
    holding ``tokenizer.json``."""
    path = Path(path)
    return path if path.suffix == ".json" else path / TOKENIZER_FILE


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(text).__name__}")
    return list(texts)


class CaptionTokenizer:
    """Byte-level BPE with per-position padding. Build one with :meth:`train` or :meth:`load`.

    ``vocab_size``: the BPE id space (``config.transformer.text_vocab``); ``learned_vocab``: ids
    the BPE actually has (<= vocab_size; fewer when the captions run out of pairs to merge);
    ``text_len``: tokens per encoded caption; ``num_text_tokens``: ``vocab_size + text_len``;
    ``truncated``: how many captions :meth:`encode` has cut at ``text_len`` so far (a running
    count; set it to 0 to start counting afresh).
    """

    def __init__(self, bpe: Tokenizer, vocab_size: int, text_len: int) -> None:
        if not isinstance(bpe, Tokenizer):
            raise TypeError(f"bpe: expected a tokenizers.Tokenizer, got {type(bpe).__name__}")
        self.vocab_size = check_int("vocab_size", vocab_size, BYTE_SYMBOLS)
        self.text_len = check_int("text_len", text_len, 1)
        if bpe.get_vocab_size() > vocab_size:
            raise ValueError(f"vocab_size: {vocab_size} is smaller than the BPE's {bpe.get_vocab_size()} ids")
        self.bpe = bpe
        self.truncated = 0
        model = json.loads(bpe.to_str())["model"]
        self._vocab: dict[str, int] = model["vocab"]
        # merges are [a, b] lists (tokenizers >= 0.20) or "a b" strings (older files)
        self._ranks: dict[tuple[str, str], int] = {
            tuple(pair.split(" ") if isinstance(pair, str) else pair): rank
            for rank, pair in enumerate(model["merges"])}

    @property
    def learned_vocab(self) -> int:
        """Number of BPE ids learned (byte symbols included)."""
        return self.bpe.get_vocab_size()

    @property
    def num_text_tokens(self) -> int:
        """Rows of a text embedding: ``vocab_size`` BPE ids + ``text_len`` padding ids."""
        return self.vocab_size + self.text_len

    @classmethod
    def train(cls, captions: Iterable[str], vocab_size: int, text_len: int) -> CaptionTokenizer:
        """Learn a byte-level BPE of at most ``vocab_size`` ids (>= 256: the byte symbols) from
        ``captions`` (lowercased and NFKC-normalized first). Deterministic for given captions."""
        vocab_size = check_int("vocab_size", vocab_size, BYTE_SYMBOLS)
        check_int("text_len", text_len, 1)
        if isinstance(captions, (str, bytes)):
            raise TypeError("captions: expected an iterable of str, got a single string")
        bpe = Tokenizer(models.BPE())
        bpe.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        bpe.train_from_iterator(_check_texts(list(captions)), trainer)
        return cls(bpe, vocab_size, text_len)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer atomically to ``path`` (a ``*.json`` file, or a run directory to
        write ``tokenizer.json`` into); returns the file written."""
        path = tokenizer_path(path)
        data = {"format": FORMAT, "vocab_size": self.vocab_size, "text_len": self.text_len,
                "bpe": json.loads(self.bpe.to_str())}
        text = json.dumps(data, ensure_ascii=False) + "\n"
        write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CaptionTokenizer:
        """Read a file written by :meth:`save` (the file, or the run directory holding it).
        A file of another format raises ``ValueError`` naming it."""
        path = tokenizer_path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: not a dalle_fast tokenizer file (format {found!r}, expected {FORMAT!r})")
        try:
            bpe = Tokenizer.from_str(json.dumps(data.get("bpe")))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
            raise ValueError(f"{path}: its 'bpe' is not a Hugging Face tokenizer: {e}") from None
        return cls(bpe, data.get("vocab_size"), data.get("text_len"))

    def encode(self, texts: Sequence[str], dropout: float = 0.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Token ids of ``texts``: (N, text_len) int64. BPE ids, cut after ``text_len`` (each cut
        caption adds 1 to ``self.truncated``), then padding ``vocab_size + i`` at every empty
        position ``i``. ``dropout`` in [0, 1): BPE dropout probability (drawn from ``generator``
        or torch's global RNG); 0 is deterministic and draws nothing."""
        texts = _check_texts(texts)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: must be a number in [0, 1), got {dropout!r}")
        if dropout > 0:
            sequences = [self._encode_with_dropout(text, dropout, generator) for text in texts]
        else:
            sequences = [encoding.ids for encoding in self.bpe.encode_batch(texts, add_special_tokens=False)]
        tokens = self.vocab_size + torch.arange(self.text_len).repeat(len(texts), 1)  # all padding
        for row, ids in zip(tokens, sequences):
            if len(ids) > self.text_len:
                self.truncated += 1
                ids = ids[:self.text_len]
            row[:len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens

    def _encode_with_dropout(self, text: str, dropout: float, generator: torch.Generator | None) -> list[int]:
        """BPE ids of ``text`` with every candidate merge skipped with probability ``dropout``."""
        normalized = self.bpe.normalizer.normalize_str(text)
        words = self.bpe.pre_tokenizer.pre_tokenize_str(normalized)
        return [self._vocab[symbol] for word, _ in words for symbol in self.merge_word(word, dropout, generator)]

    def merge_word(self, word: str, dropout: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
        """The BPE symbols of one pre-tokenized (byte-level) ``word``: starting from its
        characters, repeatedly merge the adjacent pair of lowest merge rank among the pairs not
        dropped in this round (each is dropped with probability ``dropout``); stop when no
        candidate is left. With ``dropout`` 0 this is plain BPE, what :meth:`encode` computes."""
        symbols = list(word)
        while len(symbols) > 1:
            candidates = [(self._ranks[pair], i) for i, pair in enumerate(itertools.pairwise(symbols))
                          if pair in self._ranks]
            if dropout > 0 and candidates:
                kept = torch.rand(len(candidates), generator=generator) >= dropout
                candidates = [c for c, keep in zip(candidates, kept.tolist()) if keep]
            if not candidates:
                break
            _, i = min(candidates)
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of one caption's ``ids`` ((text_len,) or any 1-D sequence), dropping padding
        ids (>= vocab_size) and ids the BPE did not learn (which a sampler may emit)."""
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise ValueError(f"ids: expected a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"ids: expected a sequence of int or a 1-D tensor, got {type(ids).__name__}")
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError("ids: every id must be an int") from None
        bad = [i for i in ids if not 0 <= i < self.num_text_tokens]
        if bad:
            raise ValueError(f"ids: {bad[0]} is outside [0, {self.num_text_tokens})")
        return self.bpe.decode([i for i in ids if i < self.learned_vocab], skip_special_tokens=False)
