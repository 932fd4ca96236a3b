"""Capture and restore every random number generator a training step may draw from (torch on the
CPU and on each GPU, Python's ``random``, NumPy's global generator), as checkpoint tensors plus
JSON, so that a resumed run draws the same numbers the uninterrupted run would have."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The current states: tensors ``rng.torch``, ``rng.cuda.<i>`` (one per visible GPU),
    ``rng.numpy`` (the 624 Mersenne-Twister words), and a JSON dict with the rest."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, words, position, has_gauss, cached_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(words.astype(np.int64))
    version, python_state, gauss = random.getstate()
    meta = {"python": [version, list(python_state), gauss], "numpy": [kind, position, has_gauss, cached_gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore states captured by :func:`rng_state`. GPU states are restored for the GPUs that
    exist here (a run moved between machines continues, though not bit for bit)."""
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)
    kind, position, has_gauss, cached_gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    version, python_state, gauss = meta["python"]
    random.setstate((version, tuple(python_state), gauss))
