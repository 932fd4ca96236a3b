"""Seeded epoch orders: what a training data order is a function of, so that a run resumes exactly."""
from __future__ import annotations

import numpy as np
import torch


def epoch_permutation(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch`` over ``size`` items: a (size,) int64 permutation drawn from a
    generator seeded with ``(seed, epoch)``, the same on every machine and in every process."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.randperm(size, generator=torch.Generator().manual_seed(state))
