"""Training schedules, as functions of the 0-based optimizer step (the number of updates done).

The dVAE follows the paper (Ramesh et al. 2021, appendix A.2), with lengths given as fractions of
the preset's ``optim.steps`` so that they scale with the run: the Gumbel-softmax temperature
anneals from ``tau_start`` (1) to ``tau_end`` (1/16), the KL weight rises from 0 to ``kl_weight``
(beta), and the learning rate decays from ``optim.lr`` to ``optim.lr_min``, each along a cosine.

The transformer can instead follow appendix B.2 (``optim.lr_schedule = "plateau"``): warm up, then
hold ``optim.lr`` and halve it each time the training loss stops improving
(:class:`PlateauHalving`), at most ``optim.plateau_halvings`` times (five in the paper, ending at
a 32 times smaller rate).
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any, NamedTuple

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


def warmup_steps(optim: OptimConfig) -> int:
    """The updates of ``optim``'s linear warmup: ``warmup_fraction`` of ``steps``."""
    return fraction_of(optim.steps, optim.warmup_fraction)


def learning_rate(optim: OptimConfig, step: int, halvings: int = 0) -> float:
    """Learning rate of update ``step``: a linear warmup over ``W = warmup_fraction * steps``
    updates (``lr * (step + 1) / W``), then under ``lr_schedule = "cosine"`` a cosine from ``lr``
    at step ``W`` to ``lr_min`` at ``steps``; under ``"plateau"``, ``lr / 2**halvings`` (the
    ``halvings`` a :class:`PlateauHalving` has made so far)."""
    step, warmup = _check_step(step), warmup_steps(optim)
    if step < warmup:
        return optim.lr * (step + 1) / warmup
    if optim.lr_schedule == "plateau":
        return optim.lr / 2 ** _check_step(halvings, "halvings")
    return cosine(optim.lr, optim.lr_min, step - warmup, optim.steps - warmup)


class PlateauHalving:
    """When to halve the learning rate under ``optim.lr_schedule = "plateau"`` (the paper's
    B.2: "halved each time the training loss appeared to plateau").

    It is fed the training loss of every logged step (:meth:`observe`, the same value on every
    process: the records average the processes) and judges them in windows of
    ``optim.plateau_window`` losses, by their mean (one batch's loss is noisy). A window whose
    mean is not below the best window mean so far by the share ``optim.plateau_threshold`` is a
    plateau: the rate halves (up to ``optim.plateau_halvings`` times) and the best restarts from
    the next window, so the lower rate is judged on its own. Its state (:meth:`state`) goes into
    the checkpoint, so a resumed run halves where the uninterrupted one does."""

    def __init__(self, optim: OptimConfig) -> None:
        self.window, self.threshold, self.limit = optim.plateau_window, optim.plateau_threshold, optim.plateau_halvings
        self.halvings = 0
        self.best: float | None = None  # the best window mean since the last halving
        self.losses: list[float] = []  # the current window's losses so far

    def observe(self, loss: float) -> bool:
        """Take one logged training loss; True when it ends a plateau window and the rate halves."""
        if not math.isfinite(loss):
            raise ValueError(f"loss: must be finite, got {loss!r}")
        self.losses.append(float(loss))
        if len(self.losses) < self.window:
            return False
        mean, self.losses = sum(self.losses) / len(self.losses), []
        if self.best is None or mean < self.best * (1 - self.threshold):
            self.best = mean if self.best is None else min(self.best, mean)
            return False
        if self.halvings >= self.limit:
            return False
        self.halvings, self.best = self.halvings + 1, None
        return True

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs (JSON-serializable)."""
        return {"halvings": self.halvings, "best": self.best, "losses": list(self.losses)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` of the same config."""
        self.halvings, self.best = int(state["halvings"]), state["best"]
        self.losses = [float(x) for x in state["losses"]]


def decoder_finetune_start(vae: VAEConfig) -> int:
    """The first update of the dVAE's decoder fine-tuning: the last
    ``decoder_finetune_fraction`` of ``optim.steps`` (at least one update trains the whole model)."""
    steps = vae.optim.steps
    return steps - min(fraction_of(steps, vae.decoder_finetune_fraction), steps - 1)


def vae_schedule(vae: VAEConfig, step: int, halvings: int = 0) -> VAESchedule:
    """The dVAE's temperature, KL weight and learning rate for update ``step`` (0-based). The
    temperature and KL weight follow their cosines over the whole run; the learning rate follows
    :func:`learning_rate` (with the plateau ``halvings`` so far) up to
    :func:`decoder_finetune_start`, then a fresh cosine from ``decoder_finetune_lr`` to
    ``optim.lr_min`` over the fine-tuning updates."""
    step, steps, start = _check_step(step), vae.optim.steps, decoder_finetune_start(vae)
    if step < start:
        lr = learning_rate(dataclasses.replace(vae.optim, steps=start), step, halvings)
    else:
        lr = cosine(vae.decoder_finetune_lr, vae.optim.lr_min, step - start, steps - start)
    return VAESchedule(
        tau=cosine(vae.tau_start, vae.tau_end, step, fraction_of(steps, vae.tau_anneal_fraction)),
        kl_weight=cosine(0.0, vae.kl_weight, step, fraction_of(steps, vae.kl_warmup_fraction)),
        lr=lr,
        decoder_only=start <= step and start < steps,
    )
