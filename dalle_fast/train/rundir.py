"""The run directory's guard rails: a new run never overwrites a run that has checkpoints, and a
resumed run continues only with the configuration it was started with."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import checkpointed_stages
from ..config import CONFIG_FILE, Config
from .errors import UsageError


def saved_config(run_dir: Path) -> Config | None:
    """The config saved in ``run_dir`` (None if there is none)."""
    if not (run_dir / CONFIG_FILE).exists():
        return None
    try:
        return Config.load(run_dir)
    except ValueError as e:  # also malformed JSON
        raise UsageError(f"--out {run_dir}: cannot read its {CONFIG_FILE}: {e}") from None


def check_run_dir(run_dir: Path, config: Config, resume: bool) -> None:
    """Raise ``UsageError`` unless ``config`` may run in ``run_dir``: without ``resume``, the
    directory must hold no checkpoints; with it, ``config`` must equal the saved config (if any)."""
    stages = checkpointed_stages(run_dir)
    if stages and not resume:
        raise UsageError(f"--out {run_dir} already holds a run with checkpoints ({', '.join(stages)}); "
                         "pass --resume to continue it, or choose another --out")
    saved = saved_config(run_dir) if resume else None
    if saved is not None and saved != config:
        differences = "; ".join(config_differences(saved, config))
        raise UsageError(f"--resume: the run in {run_dir} was started with another config ({differences}); "
                         "resume without --preset/--steps/--data to continue with its saved config, "
                         "or choose another --out")


def config_differences(saved: Config, given: Config) -> list[str]:
    """``"key.path: saved X, given Y"`` for every setting that differs."""
    old, new = _flatten(saved.to_dict()), _flatten(given.to_dict())
    return [f"{key}: saved {old.get(key)!r}, given {new.get(key)!r}"
            for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
