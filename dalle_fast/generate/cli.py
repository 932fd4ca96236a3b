"""``python -m dalle_fast.generate``: images for a prompt from a trained run (docs/design.md#command-line).

    python -m dalle_fast.generate --run runs/NAME --prompt "a small red circle in the top left"
        [--num 16] [--keep 4] [--out out.png] [--temperature T] [--top-k K] [--seed 0]
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

from ..atomic import write_atomic
from ..cli_types import positive_int
from ..generation_request import GenerationRequest
from ..grid import prompt_grid
from ..run import UsageError, add_reranker_arguments
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
    parser.add_argument("--temperature", type=float, help="sampling temperature, 0: greedy (default: the run's "
                                                          "transformer.sample_temperature)")
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
    request = GenerationRequest(args.prompt, args.num, args.keep, args.temperature, args.top_k, args.seed,
                                args.prime, args.prime_rows, args.batch_size)
    try:
        request.check()
        pipeline = TextToImage.from_run(args.run, clip=args.clip, clip_weights=args.clip_weights)
        result = request.run(pipeline, progress=True)
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
