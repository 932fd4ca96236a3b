"""The demo preset's shapes-only dVAE settings measured on the emoji glyphs, each taken out in turn.

    python docs/emoji_ablation.py --steps 1200 --out runs/emoji_ablation [--only NAME ...]

Trains the vae stage of the ``demo`` preset on ``--data emoji`` (which already turns the shapes
composites off) once as it is and once per variant below, each in ``OUT/<variant>``, and writes
``OUT/ablation.md``: each variant's val PSNR, codes used and wall time, from the last val record of
its ``metrics.jsonl``. A finished variant is read back, not retrained, so the command can be rerun
(or run with ``--only``) to fill in the table. docs/results.md#emoji-dvae holds the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from dalle_fast.checkpoint import load_checkpoint
from dalle_fast.config import Config, preset
from dalle_fast.config.presets import with_dataset
from dalle_fast.train import train
from dalle_fast.train.log import MetricsLog

# Each variant: what it changes in the demo preset's VAEConfig on emoji.
VARIANTS: dict[str, dict[str, Any]] = {
    "demo on emoji": {},
    "paper likelihood (logit-Laplace)": {"reconstruction": "logit_laplace"},
    "no usage term": {"usage_weight": 0.0},
    "no pixel shifts": {"augment_shift": 0},
    "no decoder fine-tuning": {"decoder_finetune_fraction": 0.0},
    "+ the paper's crop (0.8)": {"augment_crop": 0.8},
}


def variant_config(changes: dict[str, Any], steps: int) -> Config:
    """The demo preset on emoji with ``changes`` to its vae section and ``steps`` vae updates."""
    config = with_dataset(preset("demo"), "emoji")
    vae = dataclasses.replace(config.vae, optim=dataclasses.replace(config.vae.optim, steps=steps), **changes)
    return dataclasses.replace(config, vae=vae)


def last_val(run_dir: Path) -> dict[str, Any]:
    """The vae stage's last val record in ``run_dir``'s ``metrics.jsonl``."""
    return [r for r in MetricsLog(run_dir).records() if r["stage"] == "vae" and r["split"] == "val"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200, help="vae updates of every variant")
    parser.add_argument("--out", type=Path, default=Path("runs/emoji_ablation"))
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="train only these variants")
    args = parser.parse_args()
    rows = []
    for name, changes in VARIANTS.items():
        run_dir = args.out / re.sub(r"[^\w.+-]+", "_", name).strip("_")
        checkpoint = load_checkpoint(run_dir, "vae") if run_dir.exists() else None
        done = checkpoint is not None and checkpoint.step == args.steps
        if not done and (args.only is None or name in args.only):
            train(variant_config(changes, args.steps), run_dir, "vae", resume=run_dir.exists())
            done = True
        if done:
            val = last_val(run_dir)
            rows.append(f"| {name} | {val['psnr']:.2f} | {100 * val['codes_used']:.1f}% | {val['seconds'] / 60:.1f} |")
    table = ["| variant | val PSNR (dB) | codes used | minutes |", "|---|---|---|---|", *rows]
    (args.out / "ablation.md").write_text(f"vae stage, demo preset on emoji, {args.steps} steps\n\n" +
                                          "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
