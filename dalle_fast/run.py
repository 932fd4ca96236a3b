"""A run directory as every command sees it (docs/design.md#the-run-directory): its ``config.json``,
its tokenizer, the newest complete checkpoint of each stage, and each stage's model loaded for
inference; also where to run (:func:`pick_device`, :func:`autocast`) and the error a command turns
into exit status 2 with a one-line message (:class:`UsageError`).

The commands (``train``, ``generate``, ``evaluate``) reach a run only through this module. Each
names its own flag for the run directory (``--out`` for train, ``--run`` for the others): every
message here says that flag, and how to train what is missing.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoint import EMA_PREFIX, checkpointed_stages, load_checkpoint
from .clip import CLIP
from .config import CONFIG_FILE, Config
from .device import autocast, pick_device
from .dvae import DiscreteVAE
from .errors import UsageError
from .model import DALLE
from .tokenizer import CaptionTokenizer, tokenizer_path

__all__ = ["RUN_FLAG", "STAGES", "TRAIN_FLAG", "UsageError", "autocast", "has_stage", "load_clip", "load_dalle",
           "load_tokenizer", "load_vae", "open_run", "pick_device", "saved_config", "trained_weights", "train_hint"]

STAGES = ("tokenizer", "vae", "dalle", "clip")  # in the order training runs them
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
