"""The run directory's guard rails: a new run never overwrites a run that has checkpoints, and a
resumed run continues only with the configuration it was started with."""
from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import checkpointed_stages
from ..config import Config
from ..run import UsageError, saved_config


def check_run_dir(run_dir: Path, config: Config, resume: bool, stages: Sequence[str] | None = None,
                  free: Collection[str] = ()) -> None:
    """Raise ``UsageError`` unless ``config`` may run ``stages`` (None: any stage) in
    ``run_dir``: without ``resume``, none of them may have a checkpoint there; with it, or when
    other stages have checkpoints there (which a later stage builds on), ``config`` must equal
    the saved config (if any), except for the settings named in ``free`` (key paths such as
    ``transformer.optim.steps``: those of stages not started yet)."""
    existing = checkpointed_stages(run_dir)
    ours = [s for s in existing if stages is None or s in stages]
    if ours and not resume:
        raise UsageError(f"--out {run_dir} already holds a run with checkpoints ({', '.join(ours)}); "
                         "pass --resume to continue it, or choose another --out")
    saved = saved_config(run_dir) if resume or existing else None
    differences = "; ".join(config_differences(saved, config, free)) if saved is not None else ""
    if differences:
        raise UsageError(f"--out {run_dir}: the run there was started with another config ({differences}); "
                         "continue it without --preset/--steps/--data to use its saved config, "
                         "or choose another --out")


def config_differences(saved: Config, given: Config, ignore: Collection[str] = ()) -> list[str]:
    """``"key.path: saved X, given Y"`` for every setting that differs, but those in ``ignore``."""
    old, new = _flatten(saved.to_dict()), _flatten(given.to_dict())
    return [f"{key}: saved {old.get(key)!r}, given {new.get(key)!r}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key) and key not in ignore]


def setting_keys(*configs: Config | None) -> list[str]:
    """The key paths (``vae.optim.lr``, ...) of every setting of the given configs."""
    return sorted({key for c in configs if c is not None for key in _flatten(c.to_dict())})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
