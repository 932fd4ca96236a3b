"""A run directory as every command sees it (docs/design.md#the-run-directory): its ``config.json``,
its tokenizer, the newest complete checkpoint of each stage, and each stage's model loaded for
inference; also where to run (:func:`pick_device`, :func:`autocast`) and the error a command turns
into exit status 2 with a one-line message (:class:`UsageError`).

The commands (``train``, ``generate``, ``evaluate``, ``convert``) reach a run only through this
module. Each names its own flag for the run directory (``--out`` for train and convert, ``--run``
for the others): every message here says that flag, and how to train what is missing.

A stage's checkpoint may come from outside the run: ``python -m dalle_fast.convert openai-dvae``
writes a vae checkpoint of OpenAI's weights whose meta names its ``source``
(:func:`imported_stages`); it was trained on no data of the run. The reranker is the run's CLIP or
a pretrained open_clip model (``clip.reranker`` of the config, or the ``--clip`` flags;
:func:`load_reranker`).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoint import EMA_PREFIX, checkpointed_stages, load_checkpoint
from .clip import CLIP
from .config import CONFIG_FILE, OPEN_CLIP_PREFIX, RUN_RERANKER, Config, with_reranker
from .device import autocast, pick_device
from .dvae import DiscreteVAE
from .errors import UsageError
from .model import DALLE
from .rerankers import Reranker, RunCLIP, load_open_clip
from .tokenizer import CaptionTokenizer, tokenizer_path

__all__ = ["RUN_FLAG", "SOURCE_KEY", "STAGES", "TRAIN_FLAG", "UsageError", "add_reranker_arguments", "autocast",
           "has_stage", "imported_stages", "load_clip", "load_dalle", "load_reranker", "load_tokenizer", "load_vae",
           "open_run", "pick_device", "reranker_config", "saved_config", "trained_weights", "train_hint"]

STAGES = ("tokenizer", "vae", "dalle", "clip")  # in the order training runs them
SOURCE_KEY = "source"  # in a checkpoint's meta: where weights not trained in the run came from
TRAIN_FLAG = "--out"  # the run directory's flag of python -m dalle_fast.train
RUN_FLAG = "--run"  # ... of the commands that read a trained run (generate, evaluate)


def train_hint(stage: str, run_dir: Path, flag: str) -> str:
    """How to train ``stage`` into ``run_dir``, said to a user of the command whose run directory
    flag is ``flag``: train's own flags for train, the whole train command for the others."""
    if flag == TRAIN_FLAG:
        return f"--stage {stage}, with the same {TRAIN_FLAG}"
    return f"python -m dalle_fast.train --stage {stage} {TRAIN_FLAG} {run_dir}"


def saved_config(run_dir: Path, flag: str = TRAIN_FLAG) -> Config | None:
    """The config saved in ``run_dir`` (None if there is none); an unreadable one raises
    ``UsageError`` naming ``flag``."""
    if not (run_dir / CONFIG_FILE).exists():
        return None
    try:
        return Config.load(run_dir)
    except ValueError as e:  # also malformed JSON
        raise UsageError(f"{flag} {run_dir}: cannot read its {CONFIG_FILE}: {e}") from None


def open_run(run_dir: str | os.PathLike, flag: str = RUN_FLAG) -> tuple[Path, Config]:
    """The path and config of the trained run in ``run_dir``; ``UsageError`` naming ``flag`` when
    it is not a directory or holds no (readable) ``config.json``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{flag}: no such run directory: {run_dir}")
    config = saved_config(run_dir, flag)
    if config is None:
        raise UsageError(f"{flag} {run_dir}: holds no {CONFIG_FILE}; not a run directory of python -m dalle_fast.train")
    return run_dir, config


def has_stage(run_dir: Path, stage: str) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint of ``stage``."""
    return stage in checkpointed_stages(run_dir)


def trained_weights(run_dir: Path, stage: str, flag: str = TRAIN_FLAG) -> dict[str, torch.Tensor]:
    """The weights to evaluate and sample with from the latest checkpoint of ``stage`` in
    ``run_dir``: the EMA's when the run kept one, else the model's. A stage without a checkpoint
    raises ``UsageError`` saying how to train it."""
    checkpoint = load_checkpoint(run_dir, stage)
    if checkpoint is None:
        raise UsageError(f"{run_dir} holds no {stage} checkpoint: train that stage first "
                         f"({train_hint(stage, run_dir, flag)})")
    ema = {name.removeprefix(EMA_PREFIX): t for name, t in checkpoint.weights.items() if name.startswith(EMA_PREFIX)}
    return ema or checkpoint.weights


def load_tokenizer(config: Config, run_dir: Path, flag: str = TRAIN_FLAG) -> CaptionTokenizer:
    """The run's tokenizer (``run_dir/tokenizer.json``), checked against ``config.transformer``
    (``text_vocab``, ``text_len``); a missing or mismatched file raises ``UsageError`` saying
    what to do."""
    path = tokenizer_path(run_dir)
    again = train_hint("tokenizer", run_dir, flag)
    if not path.exists():
        raise UsageError(f"{path} is missing: run the tokenizer stage first ({again})")
    try:
        tokenizer = CaptionTokenizer.load(path)
    except ValueError as e:
        raise UsageError(f"{e}; run the tokenizer stage again ({again})") from None
    want = (config.transformer.text_vocab, config.transformer.text_len)
    if (tokenizer.vocab_size, tokenizer.text_len) != want:
        raise UsageError(f"{path} was trained for vocab_size {tokenizer.vocab_size} and text_len "
                         f"{tokenizer.text_len}, but the config has transformer.text_vocab {want[0]} and "
                         f"transformer.text_len {want[1]}; run the tokenizer stage again ({again})")
    return tokenizer


def load_vae(config: Config, run_dir: Path, flag: str = TRAIN_FLAG) -> DiscreteVAE:
    """The run's trained dVAE (EMA weights when kept), in eval mode on the CPU; a run without a
    vae checkpoint raises ``UsageError`` saying to train that stage."""
    return _load(DiscreteVAE(config), run_dir, "vae", flag)


def load_dalle(config: Config, run_dir: Path, flag: str = TRAIN_FLAG) -> DALLE:
    """The run's trained transformer (EMA weights when kept), in eval mode on the CPU; a run
    without a dalle checkpoint raises ``UsageError`` saying to train that stage."""
    return _load(DALLE(config), run_dir, "dalle", flag)


def load_clip(config: Config, run_dir: Path, flag: str = TRAIN_FLAG) -> CLIP:
    """The run's trained CLIP (EMA weights when kept), in eval mode on the CPU; a run without a
    clip checkpoint raises ``UsageError`` saying to train that stage."""
    return _load(CLIP(config), run_dir, "clip", flag)


def _load(model: torch.nn.Module, run_dir: Path, stage: str, flag: str) -> torch.nn.Module:
    model.load_state_dict(trained_weights(run_dir, stage, flag))
    return model.eval()


def imported_stages(run_dir: Path) -> dict[str, str]:
    """The stages of ``run_dir`` whose checkpoint was not trained there -> where it came from
    (its meta's ``source``, e.g. ``"openai-dvae"``). Reads only the checkpoints' headers."""
    imported = {}
    for stage in checkpointed_stages(run_dir):
        names = json.loads((run_dir / f"{stage}-latest.json").read_text())  # {"step", "weights", "state"}
        with safe_open(str(run_dir / names["state"]), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        if meta.get(SOURCE_KEY):
            imported[stage] = str(meta[SOURCE_KEY])
    return imported


def reranker_config(config: Config, clip: str | None, clip_weights: str | None) -> Config:
    """``config`` with the reranker of the flags ``--clip`` (``run`` or ``open_clip:MODEL``) and
    ``--clip-weights``, when given; ``UsageError`` naming them for an invalid pair."""
    if clip is None:
        if clip_weights is not None:
            raise UsageError(f"--clip-weights goes with --clip {OPEN_CLIP_PREFIX}MODEL, the model of those weights")
        return config
    if clip.startswith(OPEN_CLIP_PREFIX) and not clip_weights:
        raise UsageError(f"--clip {clip}: needs --clip-weights FILE, a local checkpoint of that model")
    if clip == RUN_RERANKER and clip_weights is not None:
        raise UsageError(f"--clip-weights: only for an {OPEN_CLIP_PREFIX} model; --clip {RUN_RERANKER} is the run's "
                         "own CLIP")
    try:
        return with_reranker(config, clip, clip_weights)
    except ValueError as e:
        raise UsageError(f"--clip: {str(e).removeprefix('CLIPConfig.reranker: ')}") from None


def load_reranker(config: Config, run_dir: Path, tokenizer: CaptionTokenizer, flag: str = TRAIN_FLAG
                  ) -> Reranker | None:
    """The reranker ``config.clip.reranker`` names, on the CPU: the run's CLIP over ``tokenizer``
    (None when the run has no clip checkpoint), or the open_clip model with the weights file
    ``config.clip.reranker_weights``. Problems raise ``UsageError`` naming the flags."""
    clip = config.clip
    if clip.reranker == RUN_RERANKER:
        return RunCLIP(load_clip(config, run_dir, flag), tokenizer) if has_stage(run_dir, "clip") else None
    return load_open_clip(clip.reranker.removeprefix(OPEN_CLIP_PREFIX), clip.reranker_weights)


def add_reranker_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """The ``--clip`` and ``--clip-weights`` flags of a command (train, generate, evaluate);
    ``default`` says what the command does without them."""
    parser.add_argument("--clip", metavar="run|open_clip:MODEL",
                        help="the reranker: 'run' (the run's own CLIP, its clip stage) or 'open_clip:MODEL', a "
                             "pretrained CLIP of the open_clip package (MODEL: an open_clip model name such as "
                             f"ViT-B-32, or a model config .json), with --clip-weights (default: {default})")
    parser.add_argument("--clip-weights", metavar="FILE",
                        help="a local weights file of the --clip open_clip model (.pt/.bin/.safetensors; nothing "
                             "is downloaded)")
