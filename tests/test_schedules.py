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
    assert vae_schedule(vae, 0) == (1.0, 0.0, vae.optim.lr, False)
    assert vae_schedule(vae, 2_500).kl_weight == pytest.approx(3.3)
    assert vae_schedule(vae, 5_000).kl_weight == 6.6
    assert vae_schedule(vae, 75_000).tau == pytest.approx((1 + 1 / 16) / 2)
    assert vae_schedule(vae, 150_000).tau == 1 / 16
    assert vae_schedule(vae, 1_500_000).lr == pytest.approx((1e-4 + 1.25e-6) / 2)
    assert vae_schedule(vae, 3_000_000) == (1 / 16, 6.6, 1.25e-6, False)


def test_tiny_schedule_values():
    vae = preset("tiny").vae  # 300 steps; tau over half of them, KL weight over a tenth
    assert vae_schedule(vae, 75).tau == pytest.approx(1 / 16 + (15 / 16) / 2)
    assert vae_schedule(vae, 15).kl_weight == pytest.approx(vae.kl_weight / 2)
    schedules = [vae_schedule(vae, step) for step in range(vae.optim.steps + 1)]
    assert all(b.tau <= a.tau and b.kl_weight >= a.kl_weight and b.lr <= a.lr
               for a, b in itertools.pairwise(schedules))
    assert schedules[150].tau == schedules[-1].tau == vae.tau_end
    assert schedules[-1].lr == vae.optim.lr_min


def test_decoder_finetuning_takes_the_last_fraction_of_the_steps_with_a_cosine_of_its_own():
    plain = preset("tiny").vae  # 300 steps
    vae = dataclasses.replace(plain, decoder_finetune_fraction=0.2, decoder_finetune_lr=3e-4)  # the last 60
    schedules = [vae_schedule(vae, step) for step in range(301)]
    assert [s.decoder_only for s in schedules[:300]] == [False] * 240 + [True] * 60
    main_phase = dataclasses.replace(vae.optim, steps=240)
    assert [s.lr for s in schedules[:240]] == [learning_rate(main_phase, step) for step in range(240)]
    assert schedules[240].lr == 3e-4
    assert schedules[270].lr == pytest.approx((3e-4 + vae.optim.lr_min) / 2)
    assert schedules[300].lr == vae.optim.lr_min
    assert [(s.tau, s.kl_weight) for s in schedules] == [vae_schedule(plain, step)[:2] for step in range(301)]
    assert not any(vae_schedule(plain, step).decoder_only for step in range(301))
    one_step = dataclasses.replace(vae, decoder_finetune_fraction=0.9,
                                   optim=dataclasses.replace(vae.optim, steps=1))
    assert not vae_schedule(one_step, 0).decoder_only  # at least one update trains the whole model


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
