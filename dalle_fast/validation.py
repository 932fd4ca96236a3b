"""The validation metrics that training and evaluation share: how well the dVAE's images survive
the round trip through tokens (:func:`validate_vae`), and the transformer's losses on captioned
image tokens (:func:`transformer_losses`)."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from .data.shapes_spec import Attributes
from .dvae import DiscreteVAE
from .eval_mode import eval_mode
from .metrics import attribute_agreement, codebook_usage, psnr
from .model import DALLE
from .tokenizer import CaptionTokenizer

GRID_IMAGES = 8  # val images shown in the sample grid


class VAEValidation(NamedTuple):
    """``metrics``: psnr (dB, mean over the val set), codes_used (fraction of the codebook among
    all val tokens), perplexity (of those tokens' distribution) and, for the shapes data,
    attribute_agreement (fraction of reconstructions whose read attributes all match) and, when
    some val images show held-out (color, shape) pairs, attribute_agreement_heldout (the same
    fraction over those images alone).
    ``originals`` and ``reconstructions``: the first ``GRID_IMAGES`` val images, (N, 3, H, W)."""

    metrics: dict[str, Any]
    originals: torch.Tensor
    reconstructions: torch.Tensor


@torch.no_grad()
def validate_vae(model: DiscreteVAE, val: Dataset, attributes: list[Attributes] | None, batch_size: int,
                 precision: contextlib.AbstractContextManager,
                 holdout: Collection[tuple[str, str]] = ()) -> VAEValidation:
    """Encode every image of ``val`` to tokens (argmax) and decode them again, under the
    ``precision`` context, in eval mode; ``attributes[i]`` describes ``val[i]`` (or None);
    ``holdout``: the (color, shape) pairs kept out of training. Draws nothing from torch's
    global RNG."""
    device = next(model.parameters()).device
    loader = DataLoader(val, batch_size=batch_size, generator=torch.Generator())  # generator: see docstring
    seen, psnr_sum = 0, 0.0
    agreeing = {False: 0.0, True: 0.0}  # held-out pair? -> reconstructions keeping all four attributes
    counted = {False: 0, True: 0}  # held-out pair? -> images
    tokens, originals, reconstructions = [], [], []
    with eval_mode(model):
        for images, _ in loader:
            images = images.to(device)
            with precision:
                batch_tokens = model.encode(images)
                decoded = model.decode(batch_tokens).float()
            psnr_sum += float(psnr(decoded, images).sum())
            if attributes is not None:
                batch = attributes[seen:seen + len(images)]
                for heldout in (False, True):
                    chosen = [k for k, a in enumerate(batch) if ((a.color, a.shape) in holdout) == heldout]
                    if chosen:
                        share = attribute_agreement(decoded[chosen], [batch[k] for k in chosen])
                        agreeing[heldout] += share * len(chosen)
                        counted[heldout] += len(chosen)
            tokens.append(batch_tokens.cpu())
            shown = max(0, GRID_IMAGES - seen)
            originals.append(images[:shown].cpu())
            reconstructions.append(decoded[:shown].cpu())
            seen += len(images)
    usage = codebook_usage(torch.cat(tokens), model.codebook.shape[0])
    metrics = {"psnr": psnr_sum / seen, "codes_used": float(usage.fraction_used), "perplexity": float(usage.perplexity)}
    if attributes is not None:
        metrics["attribute_agreement"] = (agreeing[False] + agreeing[True]) / seen
        if counted[True]:
            metrics["attribute_agreement_heldout"] = agreeing[True] / counted[True]
    return VAEValidation(metrics, torch.cat(originals), torch.cat(reconstructions))


def summary(metrics: dict[str, Any]) -> str:
    """One line from the val ``metrics`` of :func:`validate_vae`."""
    line = (f"val PSNR {metrics['psnr']:.2f} dB, codes used {100 * metrics['codes_used']:.1f}% "
            f"(perplexity {metrics['perplexity']:.1f})")
    if "attribute_agreement" in metrics:
        line += f", attribute agreement {100 * metrics['attribute_agreement']:.1f}%"
    if "attribute_agreement_heldout" in metrics:
        line += f" (held-out pairs {100 * metrics['attribute_agreement_heldout']:.1f}%)"
    return line


@torch.no_grad()
def transformer_losses(model: DALLE, tokenizer: CaptionTokenizer, image_tokens: torch.Tensor,
                       captions: Sequence[str], batch_size: int,
                       precision: contextlib.AbstractContextManager) -> dict[str, float]:
    """Mean ``loss``, ``text_loss`` and ``image_loss`` (nats) of ``model`` in eval mode over image
    tokens (N, grid_size**2) with one caption each (N strings), in batches of ``batch_size`` under
    ``precision``, and ``image_bits_per_token`` (image_loss / ln 2)."""
    if len(captions) != len(image_tokens):
        raise ValueError(f"captions: expected one per image ({len(image_tokens)}), got {len(captions)}")
    device = model.text_position.device
    totals = torch.zeros(3, dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, len(image_tokens), batch_size):
            image = image_tokens[start:start + batch_size].long()
            text = tokenizer.encode(list(captions[start:start + batch_size]))
            with precision:
                output = model(text.to(device), image.to(device))
            totals += torch.stack([output.loss.double().cpu(), output.text_loss.double().cpu(),
                                   output.image_loss.double().cpu()]) * len(image)
    loss, text_loss, image_loss = (totals / len(image_tokens)).tolist()
    return {"loss": loss, "text_loss": text_loss, "image_loss": image_loss,
            "image_bits_per_token": image_loss / math.log(2)}
