"""Checkpoints of a training stage in a run directory, written so that a crash can never leave a
torn file or a mismatched pair behind.

A checkpoint of stage ``s`` after ``n`` optimizer steps is two safetensors files and a pointer:

- ``s-0000000n.safetensors``: the weights (what generation and evaluation load);
- ``s-0000000n.state.safetensors``: what training needs to continue exactly (optimizer moments,
  RNG states, ... as tensors; counters and settings as JSON in the metadata);
- ``s-latest.json``: ``{"step": n, "weights": ..., "state": ...}``, naming the newest complete pair.

Every file is written atomically (:func:`dalle_fast.atomic.write_atomic`: a temp file in the
run directory, flushed, then ``os.replace``), and the pointer moves only after both files of the
new pair are in place. So at any moment the pointer names a complete pair from one step (the
previous one until the new pair is finished). Both files also record their step, checked on
load. Older pairs are pruned after the pointer moves, keeping the newest ``KEEP``.

A run with ``train.parallel = "fsdp"`` also has a third part per checkpoint, the sharded state:

- ``s-0000000n.dcp/``: a ``torch.distributed.checkpoint`` directory (each process's shards of
  the weights and of the optimizer state; it loads under any number of processes). Every
  process writes into the temporary ``.s-0000000n.dcp.tmp/``, which rank 0 renames
  (:func:`commit_directory`) before it writes the two files; the pointer names it as
  ``"sharded"``. The weights file then holds the whole weights (gathered on rank 0) and the
  state file only what is not sharded (RNG states, counters).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import write_atomic

KEEP = 2  # checkpoint pairs kept per stage (the newest)
SHARDED_SUFFIX = ".dcp"  # the sharded state directory of a checkpoint: <stage>-<step>.dcp
STAGING_SUFFIX = ".tmp"  # ... and where it is written first: .<stage>-<step>.dcp.tmp
EMA_PREFIX = "ema."  # the weights of an EMA of the model, beside the model's own


class Checkpoint(NamedTuple):
    """One checkpoint: ``step`` (optimizer steps done), ``weights`` and ``state`` (name -> tensor,
    any shapes), ``meta`` (a JSON-serializable dict), ``sharded`` (the name of its
    :func:`sharded_name` directory, already committed, or None)."""

    step: int
    weights: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    sharded: str | None = None  # the sharded state's directory in the run directory, if any


def save_checkpoint(run_dir: str | os.PathLike, stage: str, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` of ``stage`` into ``run_dir`` (see the module doc); returns the
    weights file. Tensors are stored contiguous, on the CPU."""
    run_dir = Path(run_dir)
    names = _names(stage, checkpoint.step)
    if checkpoint.sharded is not None:
        if not (run_dir / checkpoint.sharded).is_dir():
            raise ValueError(f"{run_dir / checkpoint.sharded}: the sharded state must be committed first")
        names["sharded"] = checkpoint.sharded
    step = str(checkpoint.step)
    _write_tensors(run_dir / names["weights"], checkpoint.weights, {"stage": stage, "step": step})
    _write_tensors(run_dir / names["state"], checkpoint.state,
                   {"stage": stage, "step": step, "meta": json.dumps(checkpoint.meta)})
    pointer = json.dumps({"step": checkpoint.step, **names}, indent=2) + "\n"
    write_atomic(_pointer(run_dir, stage), lambda tmp: Path(tmp).write_text(pointer))
    _prune(run_dir, stage, checkpoint.step)
    return run_dir / names["weights"]


def load_checkpoint(run_dir: str | os.PathLike, stage: str) -> Checkpoint | None:
    """The checkpoint the ``stage`` pointer of ``run_dir`` names, tensors on the CPU; ``None``
    when the stage has none. A pointer naming a missing or mismatched file raises ``ValueError``."""
    run_dir = Path(run_dir)
    pointer = _pointer(run_dir, stage)
    if not pointer.exists():
        return None
    names = json.loads(pointer.read_text())
    step = names["step"]
    weights, weights_meta = _read_tensors(run_dir / names["weights"])
    state, state_meta = _read_tensors(run_dir / names["state"])
    for file, meta in ((names["weights"], weights_meta), (names["state"], state_meta)):
        if meta.get("stage") != stage or meta.get("step") != str(step):
            raise ValueError(f"{run_dir / file}: holds stage {meta.get('stage')!r} step {meta.get('step')}, "
                             f"but {pointer.name} names it for stage {stage!r} step {step}")
    sharded = names.get("sharded")
    if sharded is not None and not (run_dir / sharded).is_dir():
        raise ValueError(f"{run_dir / sharded}: missing, but the checkpoint pointer names it")
    return Checkpoint(step, weights, state, json.loads(state_meta["meta"]), sharded)


def sharded_name(stage: str, step: int) -> str:
    """The name of the sharded state directory of ``stage`` at ``step``."""
    return f"{stage}-{step:08d}{SHARDED_SUFFIX}"


def staging_directory(run_dir: str | os.PathLike, name: str, clear: bool) -> Path:
    """The temporary directory in ``run_dir`` that the directory ``name`` is written into before
    :func:`commit_directory`; ``clear``: remove what a crash may have left there first."""
    staging = Path(run_dir) / f".{name}{STAGING_SUFFIX}"
    if clear:
        shutil.rmtree(staging, ignore_errors=True)
    return staging


def commit_directory(run_dir: str | os.PathLike, name: str) -> None:
    """Move the complete :func:`staging_directory` of ``name`` into place as ``run_dir/name``
    (replacing one a crash left there), flushed first so that the rename publishes whole files."""
    staging, final = staging_directory(run_dir, name, clear=False), Path(run_dir) / name
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def checkpointed_stages(run_dir: str | os.PathLike) -> list[str]:
    """The stages that have a checkpoint in ``run_dir`` (sorted; empty if it does not exist)."""
    run_dir = Path(run_dir)
    return sorted(p.name.removesuffix("-latest.json") for p in run_dir.glob("*-latest.json"))


def _names(stage: str, step: int) -> dict[str, str]:
    return {"weights": f"{stage}-{step:08d}.safetensors", "state": f"{stage}-{step:08d}.state.safetensors"}


def _pointer(run_dir: Path, stage: str) -> Path:
    return run_dir / f"{stage}-latest.json"


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata))


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.exists():
        raise ValueError(f"{path}: missing, but the checkpoint pointer names it")
    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}


def _prune(run_dir: Path, stage: str, current: int) -> None:
    """Keep the checkpoints of ``stage`` (pair and sharded state) from the ``KEEP`` newest steps
    up to ``current`` (the one the pointer names); delete the others, including those a crash
    left past ``current``, and any sharded state a crash left in staging."""
    suffixes = rf"\.state\.safetensors|\.safetensors|{re.escape(SHARDED_SUFFIX)}"
    published = re.compile(rf"{re.escape(stage)}-(\d{{8}})({suffixes})")
    files = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := published.fullmatch(p.name))]
    keep = sorted({step for step, _ in files if step <= current})[-KEEP:]
    stale = [path for step, path in files if step not in keep]
    for path in [*stale, *run_dir.glob(f".{stage}-*{SHARDED_SUFFIX}{STAGING_SUFFIX}")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
