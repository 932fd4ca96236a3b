"""``python -m dalle_fast.convert``: weights trained elsewhere as a run directory (docs/design.md#command-line).

    python -m dalle_fast.convert openai-dvae --encoder encoder.pkl --decoder decoder.pkl --out runs/NAME
        [--preset gpu]

``openai-dvae`` writes a new run directory whose vae stage is OpenAI's released dVAE
(:mod:`dalle_fast.openai_dvae`): ``config.json`` (the ``--preset``'s settings, its vae section
the ``paper`` preset's dVAE at the widths of the files: 256 px, 32x32 tokens, 8192 codes for the
released ones) and a vae checkpoint at step 0 in safetensors, whose meta names its source and the
SHA-256 of both files. The other stages then train on any data:
``python -m dalle_fast.train --stage tokenizer --out runs/NAME --data DIR`` (``--preset`` may
change every setting but the vae's while no stage has trained there), then ``--stage dalle``,
then ``--stage clip`` or a pretrained reranker (``--clip open_clip:MODEL``).

The files are either whole pickled modules, as OpenAI ships them (unpickling runs code from the
file: use files you trust; it needs ``dall_e``: ``pip install --no-deps DALL-E==0.1 attrs
requests``), or plain state dicts / ``.safetensors``. Every tensor is checked first: missing,
unexpected or wrong-shape ones exit with status 2, naming each, and nothing is written. The run
directory appears whole (built in a temporary folder beside it, then renamed) or not at all.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..checkpoint import Checkpoint, checkpointed_stages, save_checkpoint
from ..config import PRESETS, preset
from ..dvae import DiscreteVAE
from ..openai_dvae import INSTALL, OPENAI_EPS, SOURCE, convert, file_sha256, read_state_dict
from ..run import SOURCE_KEY, TRAIN_FLAG, UsageError

DEFAULT_PRESET = "gpu"  # the transformer and CLIP one GPU trains; the vae section is OpenAI's either way
VAE_STEP = 0  # the converted checkpoint's step: no optimizer step of ours


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.convert",
                                     description="Convert weights trained elsewhere into a run directory. "
                                                 "Pickled modules run code from their file when loaded: convert "
                                                 "only files you trust.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="openai-dvae")
    openai = commands.add_parser(
        "openai-dvae", help="OpenAI's released dVAE (encoder.pkl, decoder.pkl) as a run's vae stage",
        description="Write a new run directory whose vae stage is OpenAI's released dVAE, so that the other "
                    "stages train on it (python -m dalle_fast.train --stage tokenizer/dalle --out RUN --data ...). "
                    "WARNING: a pickled module (OpenAI's encoder.pkl / decoder.pkl) runs code from the file when "
                    f"it is loaded: use only files you trust. Pickled modules need the dall_e package ({INSTALL}); "
                    "a plain state dict (torch.save(module.state_dict())) or .safetensors file needs nothing.")
    openai.add_argument("--encoder", type=Path, required=True,
                        help="the encoder: dall_e's pickled Encoder module (encoder.pkl) or its state dict")
    openai.add_argument("--decoder", type=Path, required=True,
                        help="the decoder: dall_e's pickled Decoder module (decoder.pkl) or its state dict")
    openai.add_argument("--out", type=Path, required=True, help="the run directory to create (new or empty)")
    openai.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help="the settings of the other stages (the vae section is OpenAI's dVAE; default: "
                             f"{DEFAULT_PRESET}; python -m dalle_fast.train --preset may change them later)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status 0.
    Usage errors exit with status 2 and a one-line message, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        print(convert_openai_dvae(args.encoder, args.decoder, args.out, args.preset))
    except UsageError as e:
        parser.error(str(e))
    return 0


def check_new_run_dir(out: Path) -> None:
    """``UsageError`` unless ``out`` is free for a new run: missing, or an empty directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{TRAIN_FLAG} {out}: is a file; choose a new run directory")
    if out.is_dir() and any(out.iterdir()):
        held = checkpointed_stages(out)
        what = f"a run with checkpoints ({', '.join(held)})" if held else "files"
        raise UsageError(f"{TRAIN_FLAG} {out}: already holds {what}; choose a new {TRAIN_FLAG}")


def convert_openai_dvae(encoder: Path, decoder: Path, out: Path, base: str = DEFAULT_PRESET) -> str:
    """Write the run directory ``out`` (see the module doc); returns a summary with the next steps.
    Problems raise ``UsageError`` before anything is written."""
    check_new_run_dir(out)
    theirs = {"encoder": read_state_dict(encoder, "encoder", "--encoder"),
              "decoder": read_state_dict(decoder, "decoder", "--decoder")}
    config, weights = convert(theirs["encoder"], theirs["decoder"], preset(base))
    assert config.vae.logit_laplace_eps == OPENAI_EPS, "the paper preset maps pixels as dall_e does"
    DiscreteVAE(config).load_state_dict(weights)  # strict: every tensor in place (convert checked them)
    meta = {SOURCE_KEY: SOURCE, "preset": base,
            **{part: {"file": str(path.resolve()), "sha256": file_sha256(path)}
               for part, path in (("encoder", encoder), ("decoder", decoder))}}
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".converting"))
    try:
        config.save(building)
        save_checkpoint(building, "vae", Checkpoint(VAE_STEP, weights, {}, meta))
        os.chmod(building, 0o755)  # mkdtemp makes it private
        os.replace(building, out)  # out is missing or empty: the run appears whole
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    vae = config.vae
    count = sum(t.numel() for t in weights.values())
    return (f"wrote {out}: OpenAI's dVAE ({len(weights)} tensors, {count:,} parameters; {vae.image_size} px images, "
            f"{vae.grid_size}x{vae.grid_size} tokens of {vae.codebook_size} codes) as its vae stage, the other "
            f"settings of the {base} preset.\nnext: python -m dalle_fast.train --stage tokenizer --out {out} "
            f"--data DIR [--preset NAME], then --stage dalle --out {out}, then --stage clip (or rerank with "
            "--clip open_clip:MODEL --clip-weights FILE)")
