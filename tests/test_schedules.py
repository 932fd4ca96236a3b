"""Schedules: the cosine, the learning rate with warmup, and the dVAE's tau / KL weight / lr,
against closed-form values and the paper's numbers (Ramesh et al. 2021, appendix A.2); the
plateau halving of B.2 on constructed loss curves."""
import dataclasses
import itertools
import json
import math

import pytest

from dalle_fast.config import OptimConfig, preset
from dalle_fast.schedules import PlateauHalving, cosine, learning_rate, vae_schedule


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


def plateau_optim(**changes) -> OptimConfig:
    return OptimConfig(**{"steps": 1000, "batch_size": 8, "lr": 1e-3, "warmup_fraction": 0.1, "lr_schedule": "plateau",
                          "plateau_window": 4, "plateau_threshold": 0.05, "plateau_halvings": 2, **changes})


def test_plateau_learning_rate_holds_then_halves():
    optim = plateau_optim()
    assert learning_rate(optim, 0) == pytest.approx(1e-5)  # the same warmup as the cosine
    assert learning_rate(optim, 99) == pytest.approx(1e-3)
    assert learning_rate(optim, 100) == learning_rate(optim, 999) == 1e-3  # held, no cosine
    assert learning_rate(optim, 500, halvings=3) == pytest.approx(1e-3 / 8)
    assert learning_rate(optim, 50, halvings=3) == pytest.approx(learning_rate(optim, 50))  # warmup ignores it
    cosine_optim = dataclasses.replace(optim, lr_schedule="cosine")
    assert learning_rate(cosine_optim, 999, halvings=3) == learning_rate(cosine_optim, 999) < 1e-3


def test_plateau_halving_on_constructed_losses():
    halving = PlateauHalving(plateau_optim())
    improving = [4.0, 4.2, 3.8, 4.0, 3.0, 3.2, 2.8, 3.0]  # window means 4.0, then 3.0: 25% better
    assert [halving.observe(x) for x in improving] == [False] * 8 and halving.halvings == 0
    flat = [2.95, 3.05, 2.9, 3.1]  # mean 3.0: not 5% below the best 3.0 -> a plateau, at its last loss
    assert [halving.observe(x) for x in flat] == [False, False, False, True] and halving.halvings == 1
    # after a halving the best restarts: the next window sets it, whatever its level
    assert [halving.observe(x) for x in [3.5] * 4] == [False] * 4 and halving.best == 3.5
    assert [halving.observe(x) for x in [3.4] * 4][-1] is True and halving.halvings == 2
    for x in [3.3] * 4 + [3.3] * 4:  # the limit of 2 halvings is reached: no more
        assert halving.observe(x) is False
    assert halving.halvings == 2
    assert learning_rate(plateau_optim(), 500, halving.halvings) == pytest.approx(2.5e-4)


def test_plateau_halving_resumes_from_its_state():
    losses = [5, 4, 4.1, 3.9, 4, 4, 4, 4, 3, 3.1, 2.9, 3, 3, 3, 3.01, 2.99, 3, 3]
    whole = PlateauHalving(plateau_optim())
    decisions = [whole.observe(x) for x in losses]
    first = PlateauHalving(plateau_optim())
    head = [first.observe(x) for x in losses[:6]]  # stopped inside a window
    resumed = PlateauHalving(plateau_optim())
    resumed.restore(json.loads(json.dumps(first.state())))  # through the checkpoint's JSON
    assert head + [resumed.observe(x) for x in losses[6:]] == decisions and resumed.state() == whole.state()
    assert sum(decisions) >= 1


def test_plateau_config_checks_and_the_paper_preset():
    for field, value in [("plateau_window", 0), ("plateau_threshold", 1.0), ("plateau_threshold", -0.1),
                         ("plateau_halvings", -1), ("lr_schedule", "step")]:
        with pytest.raises(ValueError, match=field):
            plateau_optim(**{field: value})
    with pytest.raises(ValueError, match="loss"):
        PlateauHalving(plateau_optim()).observe(float("nan"))
    paper = preset("paper").transformer.optim
    assert paper.lr_schedule == "plateau" and paper.plateau_halvings == 5  # B.2: lr ends 32x lower
    assert preset("demo").transformer.optim.lr_schedule == "cosine"
