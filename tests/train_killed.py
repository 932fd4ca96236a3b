"""``python -m dalle_fast.train`` that one process kills (SIGKILL) in the middle of a stage, for the
resume tests of torchrun runs (tests/test_fsdp.py):

    torchrun --nproc_per_node N tests/train_killed.py STAGE STEP RANK [train arguments...]

Process ``RANK`` kills itself as soon as update ``STEP`` of ``STAGE`` is done, before that step's
records and checkpoint; torchrun then stops the other processes. Nothing of the package is changed
for this: the kill is planted here, around :meth:`StageTrainer.after_step`.
"""
from __future__ import annotations

import os
import signal
import sys

from dalle_fast.device import world
from dalle_fast.train import main
from dalle_fast.train.loop import StageTrainer


def plant_kill(stage: str, step: int, rank: int) -> None:
    """Make process ``rank`` SIGKILL itself after update ``step`` of ``stage``."""
    after_step = StageTrainer.after_step

    def killing(self: StageTrainer, *args, **kwargs) -> None:
        if self.stage == stage and self.step == step and world().rank == rank:
            os.kill(os.getpid(), signal.SIGKILL)
        after_step(self, *args, **kwargs)

    StageTrainer.after_step = killing


if __name__ == "__main__":
    stage, step, rank, *train_arguments = sys.argv[1:]
    plant_kill(stage, int(step), int(rank))
    sys.exit(main(train_arguments))
