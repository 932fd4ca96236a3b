"""Where and in which precision training runs, and across how many processes.

Under ``torchrun`` (its ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment), :func:`process_group` joins the processes into one
``torch.distributed`` group (NCCL on GPUs, gloo on the CPU); each process then trains on GPU
``LOCAL_RANK`` (if there are GPUs). Without those variables there is one process and nothing
here changes anything: :func:`world` is rank 0 of 1, :func:`barrier` and :func:`mean_over_ranks`
do nothing.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.distributed as dist

# How long a process waits for the others at a collective: long enough for what rank 0 does
# alone (building the token cache of a large train split, an evaluation). torchrun stops every
# process when one fails, so a dead peer does not leave the rest waiting this long.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


class World(NamedTuple):
    """This process's place among the training processes: ``rank`` of ``size``, and the
    ``local_rank`` on its machine (which GPU it uses)."""

    rank: int
    size: int
    local_rank: int


def world() -> World:
    """The running process group's view of this process (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World(0, 1, 0)


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return world().rank == 0


@contextlib.contextmanager
def process_group() -> Iterator[World]:
    """Join the torchrun process group for the duration of the block (NCCL with GPUs, gloo
    without), set this process's GPU, and leave the group at the end. Without torchrun's
    environment, or inside a group already joined, does nothing."""
    if "WORLD_SIZE" not in os.environ or not dist.is_available() or dist.is_initialized():
        yield world()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """``values`` averaged over the processes (every process must call this with the same keys,
    in the same order); in a single process, ``values`` itself."""
    if world().size == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world().size).tolist(), strict=True))


def pick_device() -> torch.device:
    """This process's GPU (the current one, ``LOCAL_RANK`` under torchrun) if there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", world().local_rank) if world().size > 1 else torch.device("cuda")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``TrainConfig.precision`` computes in bf16 on ``device``: ``"auto"`` on a GPU,
    ``"bf16"`` anywhere, ``"fp32"`` never."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision: must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward pass's precision context for ``TrainConfig.precision``: ``"auto"`` is bf16
    autocast on a GPU and fp32 on the CPU, ``"bf16"`` bf16 autocast anywhere, ``"fp32"`` none."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))
