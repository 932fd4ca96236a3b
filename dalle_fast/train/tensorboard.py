"""TensorBoard event files of a stage's training, when the ``tensorboard`` package is installed
(``pip install -e ".[tensorboard]"``); without it nothing is written and nothing else changes (the
first stage of a process says once, on stderr, how to install it). Nothing here imports
tensorboard until a stage starts training, so ``import dalle_fast`` never does.

Rank 0 writes one TensorBoard run per stage, ``RUN/tb/<stage>/``, so that ``tensorboard --logdir
RUN/tb`` shows the stages side by side: every finite number of a train or val record of
``metrics.jsonl`` as the scalar ``train/<key>`` or ``val/<key>`` at the record's step, and each
sample grid the stage saves (``<stage>_samples_<step>.png``) as the image ``samples`` at its
step. ``metrics.jsonl`` stays the record of the run; the event files are a view of it. A stage
that continues from step n purges the events after n (an interrupted session's, which the
resumed one writes again), as it rewinds ``metrics.jsonl``.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TB_DIR = "tb"  # the run directory's folder of event files
NOT_SCALARS = ("stage", "split", "step", "seconds")  # record keys that are not values to plot
INSTALL = 'pip install -e ".[tensorboard]"'
_said_missing = False  # whether this process said that tensorboard is missing


def available() -> bool:
    """Whether the ``tensorboard`` package is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class Board:
    """The TensorBoard run of ``stage`` in ``run_dir`` (``RUN/tb/<stage>/``), continuing after
    ``step`` optimizer steps (events of later steps are purged). Does nothing without
    tensorboard."""

    def __init__(self, run_dir: Path, stage: str, step: int) -> None:
        self.writer = None
        if not available():
            _say_missing()
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / TB_DIR / stage), purge_step=step + 1)

    def record(self, split: str, step: int, record: dict[str, Any]) -> None:
        """Each finite real number of ``record`` (a ``split`` record of ``metrics.jsonl``, without
        its ``NOT_SCALARS`` keys; booleans are skipped) as the scalar ``split/key`` at ``step``."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def image(self, path: Path, step: int) -> None:
        """The PNG at ``path`` (a sample grid, (H, W) pixels) as the image ``samples`` at ``step``;
        nothing if there is no such file (a stage without sample grids)."""
        if self.writer is None or not path.exists():
            return
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image("samples", pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file; the board writes nothing more."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _say_missing() -> None:
    """Print once per process that tensorboard is missing, and how to install it."""
    global _said_missing
    if not _said_missing:
        _said_missing = True
        print(f"note: tensorboard is not installed, so no TensorBoard events are written (metrics.jsonl has "
              f"every record); to get them: {INSTALL}", file=sys.stderr)
