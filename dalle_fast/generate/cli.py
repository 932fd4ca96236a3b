"""``python -m dalle_fast.generate``: images for a prompt from a trained run (docs/design.md#command-line).

    python -m dalle_fast.generate --run runs/NAME --prompt "a small red circle in the top left"
        [--num 16] [--keep 4] [--out out.png] [--temperature 1.0] [--top-k K] [--seed 0]
        [--prime IMAGE --prime-rows R] [--batch-size 64] [--clip run|open_clip:MODEL --clip-weights FILE]

Samples ``--num`` images (a progress bar per batch), decodes them with the run's dVAE, reranks
them by CLIP score and writes the best ``--keep`` as a PNG grid, best first, under the prompt;
prints their scores. The CLIP is the run's (its clip stage, or the open_clip model its config
names), or the ``--clip`` open_clip model with the weights file ``--clip-weights``. A run
without a clip checkpoint or other reranker keeps the first ``--keep``, with a warning.
Problems the user can fix (no such run, a stage not trained, a bad --prime) print one line and
exit with status 2, as argparse does.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import write_atomic
from ..cli_types import positive_int
from ..data.images import load_image
from ..grid import prompt_grid
from ..run import UsageError, add_reranker_arguments
from ..sampling import check_sampling, default_top_k
from ..text_to_image import TextToImage


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.generate",
                                     description="Generate images for a prompt with a trained run; writes a PNG grid "
                                                 "of the CLIP-best samples.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory (python -m dalle_fast.train --out)")
    parser.add_argument("--prompt", required=True, help="the caption to draw")
    parser.add_argument("--num", type=positive_int, default=16, help="images to sample (default: 16)")
    parser.add_argument("--keep", type=positive_int, default=4, help="CLIP-best images to keep (default: 4)")
    parser.add_argument("--out", type=Path, default=Path("out.png"), help="the PNG to write (default: out.png)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, help="sample among the k likeliest image codes "
                                                  "(default: a quarter of the codebook, as the training grids)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    parser.add_argument("--prime", type=Path, help="an image whose top --prime-rows token rows every sample keeps")
    parser.add_argument("--prime-rows", type=int, help="token rows of --prime to keep (1 .. the token grid side)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images sampled at once (default: 64)")
    add_reranker_arguments(parser, "the run's config: clip.reranker")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status 0.
    Usage errors exit with status 2 and a one-line message, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        pipeline = TextToImage.from_run(args.run, clip=args.clip, clip_weights=args.clip_weights)
        top_k = args.top_k if args.top_k is not None else default_top_k(pipeline.config)
        result = pipeline.generate(args.prompt, args.num, args.keep, temperature=args.temperature, top_k=top_k,
                                   seed=args.seed, prime_image=prime_image(args, pipeline),
                                   prime_rows=args.prime_rows or 0, batch_size=args.batch_size, progress=True)
    except UsageError as e:
        parser.error(str(e))
    picture = prompt_grid(result.images, args.prompt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, lambda tmp: picture.save(tmp, format="PNG"))
    ranked = "  ".join(f"{rank}: {score:.4f}" for rank, score in enumerate(result.scores.tolist(), 1)
                       if not math.isnan(score))
    if ranked:
        print(f"CLIP scores of the kept images, best first: {ranked}")
    print(f"wrote {args.out} ({args.keep} of {args.num} samples for {args.prompt!r})")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """``UsageError`` for arguments that are wrong whatever the run."""
    try:
        check_sampling(args.temperature, args.top_k)
    except ValueError as e:
        raise UsageError(f"--{str(e).replace('_', '-')}") from None
    if args.keep > args.num:
        raise UsageError(f"--keep {args.keep}: cannot keep more images than --num {args.num}")
    if (args.prime is None) != (args.prime_rows is None):
        raise UsageError("--prime and --prime-rows go together: the image and how many of its token rows to keep")
    if args.prime is not None and not args.prime.is_file():
        raise UsageError(f"--prime: no such image file: {args.prime}")


def prime_image(args: argparse.Namespace, pipeline: TextToImage) -> torch.Tensor | None:
    """The --prime image (3, S, S) at the run's image size, after checking --prime-rows against its token grid."""
    if args.prime is None:
        return None
    grid = pipeline.config.grid_size
    if not 1 <= args.prime_rows <= grid:
        raise UsageError(f"--prime-rows {args.prime_rows}: must lie in [1, {grid}] (the run's images are "
                         f"{grid} token rows high)")
    try:
        return load_image(args.prime, pipeline.image_size)
    except Exception as e:  # noqa: BLE001 - PIL raises OSError and others for files it cannot decode
        raise UsageError(f"--prime {args.prime}: cannot read it as an image ({e})") from None
