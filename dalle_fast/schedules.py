"""Training schedules, as functions of the 0-based optimizer step (the number of updates done).

The dVAE follows the paper (Ramesh et al. 2021, appendix A.2), with lengths given as fractions of
the preset's ``optim.steps`` so that they scale with the run: the Gumbel-softmax temperature
anneals from ``tau_start`` (1) to ``tau_end`` (1/16), the KL weight rises from 0 to ``kl_weight``
(beta), and the learning rate decays from ``optim.lr`` to ``optim.lr_min``, each along a cosine.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import NamedTuple

from .config import OptimConfig, VAEConfig


class VAESchedule(NamedTuple):
    """The dVAE's scheduled values for one update: Gumbel-softmax temperature, KL weight, learning
    rate, and whether the update trains the decoder alone (``VAEConfig.decoder_finetune_fraction``)."""

    tau: float
    kl_weight: float
    lr: float
    decoder_only: bool = False


def _check_step(step: int, name: str = "step") -> int:
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(step).__name__}") from None
    if step < 0:
        raise ValueError(f"{name}: must be >= 0, got {step}")
    return step


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at step ``total`` and after:
    ``end + (start - end) * (1 + cos(pi * step / total)) / 2``. ``total = 0`` gives ``end``."""
    step, total = _check_step(step), _check_step(total, "total")
    if step >= total:
        return end
    return end + (start - end) * (1 + math.cos(math.pi * step / total)) / 2


def fraction_of(steps: int, fraction: float) -> int:
    """The length, in whole steps, of ``fraction`` of a run of ``steps`` updates."""
    return round(fraction * steps)


def learning_rate(optim: OptimConfig, step: int) -> float:
    """Learning rate of update ``step``: a linear warmup over ``W = warmup_fraction * steps``
    updates (``lr * (step + 1) / W``), then a cosine from ``lr`` at step ``W`` to ``lr_min`` at
    ``steps``."""
    step = _check_step(step)
    warmup = fraction_of(optim.steps, optim.warmup_fraction)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    return cosine(optim.lr, optim.lr_min, step - warmup, optim.steps - warmup)


def decoder_finetune_start(vae: VAEConfig) -> int:
    """The first update of the dVAE's decoder fine-tuning: the last
    ``decoder_finetune_fraction`` of ``optim.steps`` (at least one update trains the whole model)."""
    steps = vae.optim.steps
    return steps - min(fraction_of(steps, vae.decoder_finetune_fraction), steps - 1)


def vae_schedule(vae: VAEConfig, step: int) -> VAESchedule:
    """The dVAE's temperature, KL weight and learning rate for update ``step`` (0-based). The
    temperature and KL weight follow their cosines over the whole run; the learning rate follows
    :func:`learning_rate` up to :func:`decoder_finetune_start`, then a fresh cosine from
    ``decoder_finetune_lr`` to ``optim.lr_min`` over the fine-tuning updates."""
    step, steps, start = _check_step(step), vae.optim.steps, decoder_finetune_start(vae)
    if step < start:
        lr = learning_rate(dataclasses.replace(vae.optim, steps=start), step)
    else:
        lr = cosine(vae.decoder_finetune_lr, vae.optim.lr_min, step - start, steps - start)
    return VAESchedule(
        tau=cosine(vae.tau_start, vae.tau_end, step, fraction_of(steps, vae.tau_anneal_fraction)),
        kl_weight=cosine(0.0, vae.kl_weight, step, fraction_of(steps, vae.kl_warmup_fraction)),
        lr=lr,
        decoder_only=start <= step and start < steps,
    )
