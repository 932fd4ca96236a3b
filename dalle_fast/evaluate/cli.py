"""``python -m dalle_fast.evaluate``: evaluate a trained run (docs/design.md#command-line).

    python -m dalle_fast.evaluate --run runs/NAME [--data shapes|DIR|captions.json [--images DIR]]
        [--split val|test] [--num-prompts N] [--samples-per-prompt S] [--seed 0]
        [--temperature T] [--top-k K] [--batch-size B] [--inception-weights PATH]
        [--clip run|open_clip:MODEL --clip-weights FILE]

Writes ``runs/NAME/eval/report.json``, ``report.md`` and PNG plots (see :mod:`.report`). Problems
the user can fix (no such run, a stage not trained, a missing weights file, bad data) print one
line and exit with status 2, as argparse does.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..cli_types import non_negative_float, positive_int
from ..run import UsageError, add_reranker_arguments
from .data import EVAL_SPLITS
from .pipeline import EvalOptions, evaluate
from .report import REPORT_JSON, write_report


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    defaults = EvalOptions()
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.evaluate",
                                     description="Evaluate a trained run; writes RUN/eval/report.json, report.md "
                                                 "and PNG plots.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory (python -m dalle_fast.train --out)")
    parser.add_argument("--data", help="data to evaluate on (default: the run's): 'shapes', a folder of captioned "
                                       "images, a CUB_200_2011 tree with text_c10 captions, or a COCO-style "
                                       "captions .json (with --images)")
    parser.add_argument("--images", help="folder of the images a captions .json names")
    parser.add_argument("--split", choices=EVAL_SPLITS, default=defaults.split,
                        help="shapes: that split; user data: val = the run's held-out share, test = every image "
                             "(a CUB tree: its official test split)")
    parser.add_argument("--num-prompts", type=positive_int, default=defaults.num_prompts,
                        help="prompts to sample for (shapes: half of held-out pairs; default 128, 64 per group)")
    parser.add_argument("--samples-per-prompt", type=positive_int,
                        help="images sampled per prompt and reranked by CLIP (default: the config's clip.candidates)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the sampling")
    parser.add_argument("--temperature", type=non_negative_float,
                        help="sampling temperature, 0: greedy (default: the run's transformer.sample_temperature)")
    parser.add_argument("--top-k", type=positive_int, help="sample among the k likeliest image codes "
                                                            "(default: a quarter of the codebook)")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                        help="images per batch when sampling and measuring")
    parser.add_argument("--inception-weights", help="a local pt_inception weights file (pytorch-fid's "
                                                    "pt_inception-2015-12-05-6726825d.pth) for Inception FID")
    add_reranker_arguments(parser, "the run's config: clip.reranker")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status 0.
    Usage errors exit with status 2 and a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    options = EvalOptions(data=args.data, images=args.images, split=args.split, num_prompts=args.num_prompts,
                          samples_per_prompt=args.samples_per_prompt, seed=args.seed, temperature=args.temperature,
                          top_k=args.top_k, batch_size=args.batch_size, inception_weights=args.inception_weights,
                          clip=args.clip, clip_weights=args.clip_weights)
    try:
        report, samples, real = evaluate(args.run, options)
    except UsageError as e:
        parser.error(str(e))
    out = write_report(args.run, report, samples, real)
    print(summary(report))
    print(f"report: {out / REPORT_JSON}")
    return 0


def summary(report: dict) -> str:
    """A few lines of the headline numbers of ``report``."""
    vae, tf, clip, fid = report["vae"], report["transformer"], report["clip_score"], report["fid"]
    lines = [(f"dVAE: PSNR {vae['psnr']:.2f} dB, codes used {100 * vae['codes_used']:.1f}%; transformer: "
              f"{tf['image_bits_per_token']:.3f} bits per image token"),
             f"CLIP score: first {clip['first']:.3f}, reranked {clip['reranked']:.3f}, real {clip['real']:.3f}"]
    if fid["clip"]["reranked"] is not None:
        lines.append(f"FID on CLIP features ({fid['images']} images): first {fid['clip']['first']:.4f}, "
                     f"reranked {fid['clip']['reranked']:.4f}")
    for group, part in (report["groups"] or {}).items():
        if part is not None and part["retrieval"] is not None:
            r, ci = part["retrieval"], part["retrieval"]["intervals"]
            lines.append(f"{group} ({part['prompts']} prompts), own image retrieved by the CLIP-best sample: top-1 "
                         f"{100 * r['reranked']['top1']:.1f}% (95% CI {100 * ci['reranked']['top1'][0]:.0f}-"
                         f"{100 * ci['reranked']['top1'][1]:.0f}), top-5 {100 * r['reranked']['top5']:.1f}% "
                         f"({100 * ci['reranked']['top5'][0]:.0f}-{100 * ci['reranked']['top5'][1]:.0f})")
    if report["attributes"] is not None:
        for group, part in report["attributes"].items():
            if part["prompts"]:
                first, best = (f"{100 * part[k]['all']:.1f}% (95% CI {100 * part['intervals'][k]['all'][0]:.0f}-"
                               f"{100 * part['intervals'][k]['all'][1]:.0f})" for k in ("first", "reranked"))
                lines.append(f"{group} ({part['prompts']} prompts), all four attributes right: first {first}, "
                             f"reranked {best}")
    return "\n".join(lines)
