"""``python -m dalle_fast.train``: the training command (docs/design.md#command-line).

    python -m dalle_fast.train [--stage all|tokenizer|vae|dalle|clip] [--preset demo]
        [--data shapes | --data emoji | --data DIR | --data captions.json --images DIR]
        [--out runs/<preset>] [--resume] [--steps N] [--clip open_clip:MODEL --clip-weights FILE]

``--stage all`` runs every stage in order; one stage at a time works too, in the same ``--out``
(``--stage tokenizer --preset tiny``, then ``--stage vae``, ...): without ``--preset`` a command
uses the config saved there. ``--steps N`` sets the optimizer steps of every stage the command
runs that has them (``vae``, ``dalle``, ``clip``: ``vae.optim.steps``,
``transformer.optim.steps``, ``clip.optim.steps``), saved in config.json; the tokenizer stage
has none. Other settings of a run directory with checkpoints, and the steps of a stage that has
started, change only in a new ``--out``.

Stages that come from outside are not trained here: a vae converted by ``python -m
dalle_fast.convert`` (the run's only checkpoints imported ones, ``--preset`` and ``--data`` may
still change every setting but the vae section, which stays the converted one), and the clip
stage of a run that reranks with a pretrained open_clip model (``--clip open_clip:MODEL
--clip-weights FILE``, saved as ``clip.reranker``; free to change until a clip stage has
trained). ``--stage all`` skips them; naming one with ``--stage`` is refused.

Under ``torchrun --nproc_per_node N`` the same command trains with N processes
(:func:`dalle_fast.device.process_group`, DDP in :mod:`.loop`): the tokenizer stage runs on rank 0 alone,
every other stage on all of them, and only rank 0 writes the run directory and prints.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from ..checkpoint import checkpointed_stages
from ..cli_types import positive_int
from ..config import PRESETS, Config, preset, with_dataset
from ..data.splits import TrainData, load_data
from ..device import barrier, is_main, process_group
from ..run import (
    RUN_RERANKER,
    STAGES,
    UsageError,
    add_reranker_arguments,
    imported_stages,
    load_reranker,
    load_tokenizer,
    reranker_config,
    saved_config,
)
from .clip import STAGE as CLIP_STAGE
from .clip import train_clip_stage
from .dalle import STAGE as DALLE_STAGE
from .dalle import train_dalle_stage
from .rundir import check_run_dir, setting_keys
from .tokenizer import STAGE as TOKENIZER_STAGE
from .tokenizer import train_tokenizer_stage
from .vae import STAGE as VAE_STAGE
from .vae import train_vae

# stage -> its trainer: (config, run dir, data, resume) -> a summary line of the result
BUILT: dict[str, Callable[[Config, Path, TrainData, bool], str]] = {
    TOKENIZER_STAGE: train_tokenizer_stage, VAE_STAGE: train_vae, DALLE_STAGE: train_dalle_stage,
    CLIP_STAGE: train_clip_stage}
NEEDS_TOKENIZER = ("dalle", "clip")  # stages that read the run's tokenizer.json
NEEDS_VAE = ("dalle",)  # stages that read the run's trained dVAE
MAIN_PROCESS_ONLY = (TOKENIZER_STAGE,)  # stages rank 0 runs alone under torchrun
STEPS_SECTION = {"vae": "vae", "dalle": "transformer", "clip": "clip"}  # stage -> config section it trains
RERANKER_SETTINGS = ("clip.reranker", "clip.reranker_weights")  # free until a clip stage has trained
DEFAULT_PRESET = "demo"


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.train",
                                     description="Train DALL-E stages into a run directory.")
    parser.add_argument("--stage", choices=("all", *STAGES), default="all",
                        help="stage to train; 'all' runs every stage in order (default: all)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"configuration preset (default: the config saved in --out, else {DEFAULT_PRESET})")
    parser.add_argument("--data", help="'shapes' (the built-in procedural data, default), 'emoji' (the built-in "
                                       "Noto Color Emoji glyphs with CLDR captions), a folder of images with "
                                       "same-stem .txt captions, or a COCO-style captions .json (with --images)")
    parser.add_argument("--images", help="folder of the images a captions .json names")
    parser.add_argument("--out", type=Path, help="run directory (default: runs/<preset>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its latest checkpoint (start it if it has none)")
    parser.add_argument("--steps", type=positive_int,
                        help="optimizer steps of each stage this command runs (vae, dalle, clip; with --stage "
                             "all, all three); overrides the preset and is saved in config.json")
    add_reranker_arguments(parser, "the config's clip.reranker, else 'run'; an open_clip model skips the clip stage")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status 0.
    Usage errors exit with status 2 and a one-line message, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else Path("runs", args.preset or DEFAULT_PRESET)
    try:
        imported = imported_stages(out) if out.is_dir() else {}
        config = resolve_config(args, saved_config(out) if args.preset is None or imported else None, imported)
        train(config, out, args.stage, args.resume, args.images)
    except UsageError as e:
        parser.error(str(e))
    return 0


def resolve_config(args: argparse.Namespace, saved: Config | None, imported: Collection[str] = ()) -> Config:
    """The run's config: ``saved`` (the config of the run directory, if any) without --preset,
    else the preset, with the saved sections of the ``imported`` stages (those trained elsewhere:
    their settings are the weights'); then the --steps (for the sections of the stages run),
    --data (:func:`~dalle_fast.config.with_dataset`) and --clip overrides."""
    config = saved if saved is not None and args.preset is None else preset(args.preset or DEFAULT_PRESET)
    if saved is not None:
        config = dataclasses.replace(config, **{STEPS_SECTION[s]: getattr(saved, STEPS_SECTION[s])
                                                for s in imported if s in STEPS_SECTION})
    if args.steps is not None:
        sections = [STEPS_SECTION[s] for s in (STAGES if args.stage == "all" else (args.stage,))
                    if s in STEPS_SECTION and s not in imported]
        if not sections:
            raise UsageError(f"--steps: the {args.stage} stage has no optimizer steps")
        for name in sections:
            section = getattr(config, name)
            config = dataclasses.replace(config, **{name: dataclasses.replace(
                section, optim=dataclasses.replace(section.optim, steps=args.steps))})
    config = config if args.data is None else with_dataset(config, args.data)
    return reranker_config(config, args.clip, args.clip_weights)


def train(config: Config, out: Path, stage: str = "all", resume: bool = False, images: str | None = None) -> None:
    """Train ``stage`` (or every stage, for ``"all"``) of ``config`` in the run directory
    ``out``, printing the data filter report (user data) and a summary line per stage.
    ``images``: the image folder of a COCO-style captions JSON dataset. Under torchrun, in the
    process group of all its processes (see the module doc). Stages from outside (see the module
    doc) are skipped by ``"all"`` and refused by name."""
    skipped = outside_stages(config, out)
    if stage in skipped:
        raise UsageError(f"--stage {stage}: {skipped[stage]}; train the other stages (--stage all skips it)")
    stages = tuple(s for s in STAGES if s not in skipped) if stage == "all" else (stage,)
    with process_group():
        check_run_dir(out, config, resume, stages, free_settings(config, out, stages))
        if config.clip.reranker != RUN_RERANKER:
            load_reranker(config, out, None)  # a wrong model or weights file: fail before training anything
        if TOKENIZER_STAGE not in stages and any(s in NEEDS_TOKENIZER for s in stages):
            load_tokenizer(config, out)  # missing or mismatched: fail before writing anything
        needs_vae = VAE_STAGE not in stages and any(s in NEEDS_VAE for s in stages)
        if needs_vae and VAE_STAGE not in checkpointed_stages(out):
            raise UsageError(f"{out} holds no vae checkpoint: train the vae first (--stage vae, with the same --out)")
        data = load_data(config, images)
        barrier()  # every process has checked the run directory before rank 0 writes to it
        if is_main():
            if data.report is not None:
                print(data.report)
            out.mkdir(parents=True, exist_ok=True)
            config.save(out)
        if is_main() and stage == "all":
            for name, why in skipped.items():
                print(f"{name}: skipped: {why}")
        for name in stages:
            started = time.perf_counter()
            if is_main() or name not in MAIN_PROCESS_ONLY:
                result = BUILT[name](config, out, data, resume)
            barrier()
            if is_main():
                print(f"{name}: {result}; wall time {time.perf_counter() - started:.1f} s; run directory {out}")


def outside_stages(config: Config, out: Path) -> dict[str, str]:
    """The stages of the run in ``out`` that come from outside, not from training here -> why:
    imported checkpoints (a converted vae) and, with an open_clip reranker, the clip stage."""
    skipped = {s: f"the {s} of --out {out} was not trained here ({source}, by python -m dalle_fast.convert)"
               for s, source in (imported_stages(out) if out.is_dir() else {}).items()}
    if config.clip.reranker != RUN_RERANKER:
        skipped.setdefault(CLIP_STAGE, f"the run reranks with the pretrained {config.clip.reranker} "
                                       "(clip.reranker, --clip), so it has no clip stage to train")
    return skipped


def free_settings(config: Config, out: Path, stages: Sequence[str]) -> list[str]:
    """The settings the run in ``out`` lets this command change: the steps of the ``stages`` it
    runs that have not started; the reranker while no clip stage has trained; and, while its
    only checkpoints are imported ones, every setting but their sections'."""
    held = checkpointed_stages(out)
    free = [f"{STEPS_SECTION[s]}.optim.steps" for s in stages if s in STEPS_SECTION and s not in held]
    if CLIP_STAGE not in held:
        free += RERANKER_SETTINGS
    imported = imported_stages(out) if held else {}
    if held and set(held) <= set(imported):
        fixed = tuple(f"{STEPS_SECTION[s]}." for s in imported if s in STEPS_SECTION)
        saved = saved_config(out)
        free += [key for key in setting_keys(config, saved) if not key.startswith(fixed)]
    return free
