"""Stage ``clip``: train the reranking CLIP (:mod:`dalle_fast.clip`) on the run's captioned
images, on the shared loop of :mod:`.loop` (AdamW with warmup + cosine, gradient clipping when
set, bf16 autocast on a GPU, cadence, checkpoints and exact resume are described there).

Captions are tokenized with the run's ``tokenizer.json`` (the tokenizer stage must have run),
without BPE dropout. Train records hold the contrastive loss, the in-batch text->image and
image->text accuracies and the learned logit scale; val records the metrics of
:func:`.clip_eval.validate_clip` (retrieval, and attribute discrimination on the shapes data).
Weight decay spares biases, norms and the logit scale. Training images are degraded first
(:func:`degrade`, as ``config.clip`` sets it), drawing from torch's global RNG, which
checkpoints capture.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..clip import CLIP, CLIPOutput
from ..config import Config
from ..data.splits import TrainData
from ..run import load_tokenizer
from ..tokenizer import CaptionTokenizer
from .clip_eval import validate_clip
from .loop import StageTrainer
from .optim import decay_matrices_only

STAGE = "clip"
SUMMARY_KEYS = {"text_to_image": "val text->image", "image_to_text": "image->text",
                "discrimination_size": "discrimination: size", "discrimination_color": "color",
                "discrimination_shape": "shape", "discrimination_position": "position",
                "attributes_all": "all four", "attributes_all_heldout": "all four, held-out pairs"}


def train_clip_stage(config: Config, run_dir: Path, data: TrainData, resume: bool) -> str:
    """Train the CLIP of ``config`` on ``data`` to ``config.clip.optim.steps`` steps in
    ``run_dir`` (which holds ``config`` and the tokenizer). ``resume``: continue from the
    stage's latest checkpoint there, if any. Returns a summary line of the final val metrics."""
    trainer = CLIPTrainer(config, run_dir, data, load_tokenizer(config, run_dir))
    trainer.run(resume)
    final = trainer.last_record("val")
    shown = ", ".join(f"{label} {100 * final[key]:.1f}%" for key, label in SUMMARY_KEYS.items() if key in final)
    return f"{trainer.step}/{config.clip.optim.steps} steps, {final['seconds']:.1f} s of training; {shown}"


class CLIPTrainer(StageTrainer):
    """The stage-clip run: a :class:`~dalle_fast.clip.CLIP` on (image, caption) batches."""

    stage = STAGE
    shown = ("loss", "text_to_image", "image_to_text")

    def __init__(self, config: Config, run_dir: Path, data: TrainData, tokenizer: CaptionTokenizer) -> None:
        self.tokenizer = tokenizer
        super().__init__(config, run_dir, data, config.clip.optim)

    def build_model(self) -> CLIP:
        return CLIP(self.config)

    def parameters(self) -> list[dict[str, Any]]:
        return decay_matrices_only(self.model)

    def forward(self, batch: tuple[torch.Tensor, Sequence[str]], settings: NamedTuple) -> CLIPOutput:
        images, captions = batch
        tokens = self.tokenizer.encode(captions).to(self.device, non_blocking=True)
        images = degrade(images.to(self.device, non_blocking=True), self.config.clip.augment_blur,
                         self.config.clip.augment_noise)
        return self.model(tokens, images)

    def train_metrics(self, output: CLIPOutput) -> dict[str, float]:
        return {"loss": output.loss.item(), "text_to_image": output.text_to_image.item(),
                "image_to_text": output.image_to_text.item(), "logit_scale": self.model.scale().item()}

    def evaluate(self, model: CLIP) -> dict[str, Any]:
        return validate_clip(model, self.tokenizer, self.data.val, self.data.val_attributes, self.config.data.holdout,
                             self.optim.batch_size, self.precision())


def degrade(images: torch.Tensor, blur: float, noise: float) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1], each blurred (2x average-pooled, then bilinearly upsampled)
    with probability ``blur`` and given Gaussian noise of a standard deviation drawn uniformly
    from [0, ``noise``], clamped to [0, 1]: same shape. Draws from torch's RNG on the images'
    device; with ``blur`` and ``noise`` both 0, returns ``images`` and draws nothing."""
    if not blur and not noise:
        return images
    b = len(images)
    blurred = F.interpolate(F.avg_pool2d(images, 2, ceil_mode=True), size=images.shape[-2:], mode="bilinear",
                            align_corners=False)
    picked = torch.rand(b, 1, 1, 1, device=images.device) < blur
    std = torch.rand(b, 1, 1, 1, device=images.device) * noise
    return (torch.where(picked, blurred, images) + std * torch.randn_like(images)).clamp(0, 1)
