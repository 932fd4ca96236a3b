"""Stage ``tokenizer``: learn the caption BPE (:mod:`dalle_fast.tokenizer`) from the train
split's captions and write ``tokenizer.json`` into the run directory.

The captions: every caption of user data; for the procedural shapes data, those of its first
``SHAPES_CAPTIONS`` train samples (drawn by a hash of their index, so a fixed uniform sample,
far more than needed to see every word). With ``--resume`` an existing ``tokenizer.json`` is
kept (the later stages were trained with it).
"""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data.splits import TrainData, dataset_captions
from ..run import load_tokenizer
from ..tokenizer import CaptionTokenizer, tokenizer_path

STAGE = "tokenizer"
SHAPES_CAPTIONS = 20_000
ENCODE_CHUNK = 10_000  # captions encoded at once when counting truncation


def train_tokenizer_stage(config: Config, run_dir: Path, data: TrainData, resume: bool) -> str:
    """Train the BPE of ``config.transformer`` (``text_vocab`` ids, ``text_len`` tokens) on the
    train captions of ``data`` and save it to ``run_dir/tokenizer.json``; with ``resume``, keep
    the one there. Returns a summary: captions, ids learned, share cut at ``text_len``."""
    captions = dataset_captions(data.train, SHAPES_CAPTIONS if config.data.dataset == "shapes" else None)
    kept = resume and tokenizer_path(run_dir).exists()
    if kept:
        tokenizer = load_tokenizer(config, run_dir)
    else:
        tokenizer = CaptionTokenizer.train(captions, config.transformer.text_vocab, config.transformer.text_len)
        tokenizer.save(run_dir)
    tokenizer.truncated = 0
    for start in range(0, len(captions), ENCODE_CHUNK):
        tokenizer.encode(captions[start:start + ENCODE_CHUNK])
    return (f"{'kept the existing tokenizer' if kept else 'trained'} on {len(captions)} captions: "
            f"{tokenizer.learned_vocab}/{tokenizer.vocab_size} ids learned, "
            f"{100 * tokenizer.truncated / len(captions):.2f}% of the captions cut at text_len {tokenizer.text_len}")
