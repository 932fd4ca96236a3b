"""``python -m dalle_fast.plan``: the memory plan of a preset's dalle stage (:mod:`.memory`).

    python -m dalle_fast.plan --preset paper --gpus 64 --gpu-memory 80 [--accumulation N]
    python -m dalle_fast.plan --config runs/NAME [--gpus N] ...

prints a Markdown table: params, grads, optimizer states and activations per GPU under DDP and
FSDP (one process: no wrapper), activation checkpointing off and on, the total, whether it fits in
``--gpu-memory`` GiB, and the smallest ``optim.accumulation`` at which it would. Everything is
counted on the ``meta`` device: it needs no GPU and takes seconds for the 12B model. Bad flags
exit 2 with a message naming the flag.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..cli_types import positive_int
from ..config import PRESETS, Config, preset
from .memory import markdown, plan_memory


def positive_float(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="python -m dalle_fast.plan",
        description="Memory per GPU of the dalle stage (the transformer) under DDP and FSDP, with and without "
                    "activation checkpointing, counted on the meta device.",
        epilog="Counted: float32 weights, gradients (and DDP's buckets), AdamW moments, FSDP's gathered bf16 "
               "units, the frozen dVAE, and the activations autograd saves in a bf16-autocast forward. Not "
               "counted: the CUDA context, allocator slack, transient gradients and workspaces of the backward.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), help="configuration preset (default: paper)")
    source.add_argument("--config", metavar="PATH", help="a run's config.json, or the run directory holding it")
    parser.add_argument("--gpus", type=positive_int, default=1, help="GPUs (processes) training together (default: 1)")
    parser.add_argument("--gpu-memory", type=positive_float, default=80.0, metavar="GIB",
                        help="memory of one GPU in GiB (default: 80)")
    parser.add_argument("--accumulation", type=positive_int,
                        help="micro-batches per optimizer step (default: the config's transformer.optim.accumulation)")
    return parser


def load_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The config ``args`` name; a file that cannot be read is a usage error naming ``--config``."""
    if args.config is None:
        return preset(args.preset or "paper")
    try:
        return Config.load(args.config)
    except (OSError, ValueError) as e:
        parser.error(f"--config {args.config}: {e}")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the plan for ``argv`` (default: ``sys.argv[1:]``); returns 0 (usage errors exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = load_config(parser, args)
    try:
        plan = plan_memory(config, args.gpus, args.gpu_memory, args.accumulation)
    except ValueError as e:
        accumulation = args.accumulation or config.transformer.optim.accumulation
        parser.error(f"--gpus {args.gpus} with --accumulation {accumulation}: {e}")
    print(markdown(plan))
    return 0
