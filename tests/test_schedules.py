"""Schedules: the cosine, the learning rate with warmup, and the dVAE's tau / KL weight / lr,
against closed-form values and the paper's numbers (Ramesh et al. 2021, appendix A.2)."""
import dataclasses
import itertools
import math

import pytest

from dalle_fast.config import preset
from dalle_fast.schedules import cosine, learning_rate, vae_schedule


def test_cosine_endpoints_and_middle():
    assert cosine(1.0, 0.25, 0, 100) == 1.0
    assert cosine(1.0, 0.25, 100, 100) == 0.25
    assert cosine(1.0, 0.25, 1000, 100) == 0.25
    assert cosine(1.0, 0.25, 50, 100) == pytest.approx(0.625)
    assert cosine(1.0, 0.25, 25, 100) == pytest.approx(0.25 + 0.75 * (1 + math.sqrt(0.5)) / 2)
    assert cosine(0.0, 2.0, 75, 100) == pytest.approx(2.0 * (1 + math.sqrt(0.5)) / 2)  # 85% of the way
    assert cosine(3.0, 5.0, 0, 0) == 5.0  # a zero-length schedule is at its end from the start


@pytest.mark.parametrize("start, end", [(1.0, 1 / 16), (0.0, 6.6)])
def test_cosine_is_monotone(start, end):
    values = [cosine(start, end, step, 37) for step in range(50)]
    pairs = list(itertools.pairwise(values))
    assert all(b < a for a, b in pairs[:37]) if start > end else all(b > a for a, b in pairs[:37])
    assert values[37:] == [end] * 13


def test_paper_preset_schedules_are_the_papers():
    """KL weight 0 -> 6.6 over the first 5000 updates, tau 1 -> 1/16 over the first 150000."""
    vae = preset("paper").vae
    assert vae_schedule(vae, 0) == (1.0, 0.0, vae.optim.lr)
    assert vae_schedule(vae, 2_500).kl_weight == pytest.approx(3.3)
    assert vae_schedule(vae, 5_000).kl_weight == 6.6
    assert vae_schedule(vae, 75_000).tau == pytest.approx((1 + 1 / 16) / 2)
    assert vae_schedule(vae, 150_000).tau == 1 / 16
    assert vae_schedule(vae, 1_500_000).lr == pytest.approx((1e-4 + 1.25e-6) / 2)
    assert vae_schedule(vae, 3_000_000) == (1 / 16, 6.6, 1.25e-6)


def test_tiny_schedule_values():
    vae = preset("tiny").vae  # 300 steps; tau over half of them, KL weight over a tenth
    assert vae_schedule(vae, 75).tau == pytest.approx(1 / 16 + (15 / 16) / 2)
    assert vae_schedule(vae, 15).kl_weight == pytest.approx(vae.kl_weight / 2)
    schedules = [vae_schedule(vae, step) for step in range(vae.optim.steps + 1)]
    assert all(b.tau <= a.tau and b.kl_weight >= a.kl_weight and b.lr <= a.lr
               for a, b in itertools.pairwise(schedules))
    assert schedules[150].tau == schedules[-1].tau == vae.tau_end
    assert schedules[-1].lr == vae.optim.lr_min


def test_learning_rate_warms_up_linearly_then_decays_along_a_cosine():
    optim = dataclasses.replace(preset("tiny").vae.optim, steps=110, lr=1e-3, lr_min=1e-5, warmup_fraction=10 / 110)
    assert [learning_rate(optim, s) for s in range(10)] == pytest.approx([1e-4 * (s + 1) for s in range(10)])
    assert learning_rate(optim, 10) == 1e-3
    assert learning_rate(optim, 60) == pytest.approx((1e-3 + 1e-5) / 2)
    assert learning_rate(optim, 35) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.sqrt(0.5)) / 2)
    assert learning_rate(optim, 110) == learning_rate(optim, 500) == 1e-5


@pytest.mark.parametrize("step, error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError)])
def test_bad_steps_raise(step, error):
    vae = preset("tiny").vae
    with pytest.raises(error, match="step"):
        vae_schedule(vae, step)
    with pytest.raises(error, match="step"):
        cosine(1.0, 0.0, step, 10)


def test_negative_total_raises():
    with pytest.raises(ValueError, match="total"):
        cosine(1.0, 0.0, 0, -1)
