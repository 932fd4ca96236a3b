"""Where and in which precision training runs."""
from __future__ import annotations

import contextlib

import torch


def pick_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's precision context for ``TrainConfig.precision``: ``"auto"`` is bf16
    autocast on a GPU and fp32 on the CPU, ``"bf16"`` bf16 autocast anywhere, ``"fp32"`` none."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision: must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
