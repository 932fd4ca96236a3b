"""Stage ``vae``: train the discrete VAE (docs/design.md#dvae) in a run directory, on the shared
loop of :mod:`.loop` (cadence, checkpoints and exact resume are described there).

Every step takes its temperature, KL weight and learning rate from
:func:`dalle_fast.schedules.vae_schedule`, and augments its images as the config says
(:mod:`.vae_augment`). The last ``decoder_finetune_fraction`` of the steps train the decoder
alone, on the argmax tokens of un-augmented images
(:meth:`~dalle_fast.dvae.DiscreteVAE.decoder_forward`). Every eval reconstructs the val split
through tokens (:func:`dalle_fast.validation.validate_vae`), logs its metrics and saves a grid of originals above their
reconstructions as ``vae_samples_<step>.png`` and ``vae_samples_latest.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data.splits import TrainData
from ..dvae import DiscreteVAE, VAEOutput
from ..grid import save_grid
from ..metrics import codebook_usage
from ..schedules import VAESchedule, vae_schedule
from ..validation import summary, validate_vae
from .loop import StageTrainer
from .vae_augment import augment

STAGE = "vae"


def train_vae(config: Config, run_dir: Path, data: TrainData, resume: bool) -> str:
    """Train the dVAE of ``config`` on ``data`` to ``config.vae.optim.steps`` steps, in
    ``run_dir`` (which holds ``config``). ``resume``: continue from the stage's latest checkpoint
    there, if any. Returns a summary line of the final val metrics."""
    trainer = VAETrainer(config, run_dir, data)
    trainer.run(resume)
    final = trainer.last_record("val")
    return f"{trainer.step}/{config.vae.optim.steps} steps, {final['seconds']:.1f} s of training; {summary(final)}"


class VAETrainer(StageTrainer):
    """The stage-vae run: a :class:`~dalle_fast.dvae.DiscreteVAE` on the images of the batches."""

    stage = STAGE
    shown = ("loss", "recon", "kl", "tau")

    def __init__(self, config: Config, run_dir: Path, data: TrainData) -> None:
        super().__init__(config, run_dir, data, config.vae.optim)

    def build_model(self) -> DiscreteVAE:
        return DiscreteVAE(self.config)

    def settings(self, step: int) -> VAESchedule:
        return vae_schedule(self.config.vae, step, self.halvings())

    def updates_skip_parameters(self) -> bool:
        """The encoder gets no gradient while the decoder is fine-tuned."""
        return self.settings(self.optim.steps - 1).decoder_only  # the last update is one if any is

    def forward(self, batch: tuple[torch.Tensor, Any], settings: VAESchedule) -> VAEOutput:
        images, _ = batch
        images = images.to(self.device, non_blocking=True)
        if settings.decoder_only:
            return self.model.decoder_forward(images)
        return self.model(augment(images, self.config.vae), settings.tau, settings.kl_weight)

    def train_metrics(self, output: VAEOutput) -> dict[str, float]:
        """The batch's loss terms and token usage."""
        usage = codebook_usage(output.logits.detach().argmax(dim=1), self.config.vae.codebook_size)
        return {"loss": output.loss.item(), "recon": output.recon_loss.item(), "kl": output.kl.item(),
                "marginal_kl": output.marginal_kl.item(), "perplexity": float(usage.perplexity),
                "codes_used": float(usage.fraction_used)}

    def evaluate(self, model: DiscreteVAE) -> dict[str, Any]:
        """The val reconstruction metrics (:func:`.vae_eval.validate_vae`); saves the grid."""
        result = validate_vae(model, self.data.val, self.data.val_attributes, self.optim.batch_size,
                              self.precision(), self.config.data.holdout)
        rows = (result.originals, result.reconstructions)
        save_grid(rows, self.run_dir / f"{STAGE}_samples_{self.step:08d}.png")
        save_grid(rows, self.run_dir / f"{STAGE}_samples_latest.png")
        return result.metrics
