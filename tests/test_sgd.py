"""Parallel SGD on logistic regression against docs/theory.md §2."""

from __future__ import annotations

import math

import pytest

from suite.runner import Run, execute
from tests.conftest import make_cfg

PROBLEM = ("task.dataset=breast_cancer", "task.l2=0.01", "workers=4")


def test_full_batch_sgd_with_theory_step_converges_linearly_to_f_star():
    """γ = 1/L, full gradients: E‖x_t − x*‖² ≤ (1 − μ/L)^t r0, so
    f(x_t) − f* ≤ (L/2)(1 − μ/L)^t ‖x0 − x*‖². The budget T is the smallest t at which the
    bound falls below 1e-8; the run must get there, and stay under the bound all the way."""
    run = Run(make_cfg(*PROBLEM, "batch_size=full"))
    c = run.task.constants
    r0 = float(run.task.x_star.dot(run.task.x_star))  # x0 = 0
    rho = 1 - c["mu"] / c["L"]
    budget = math.ceil(math.log(1e-8 / (c["L"] / 2 * r0)) / math.log(rho))
    result = execute(make_cfg(*PROBLEM, "batch_size=full", f"steps={budget}",
                              f"eval_every={budget // 20}"))
    assert result.status == "FINISHED"
    assert result.final["train/suboptimality"] < 1e-8
    curve = [(step, v) for key, v, step in result.history if key == "train/suboptimality"]
    assert len(curve) >= 20
    for step, gap in curve:
        # the messages travel as float32: allow the bound a relative 1e-6 of slack
        assert gap <= (c["L"] / 2) * rho**step * r0 * (1 + 1e-6) + 1e-15


def test_constant_step_sgd_stalls_at_a_floor_that_scales_with_the_batch():
    """Minibatch SGD with a constant step reaches a noise floor ∝ γσ²/(μKb) (docs/theory.md §2):
    quadrupling b must lower the tail suboptimality (by ~4×; we assert more than 2×)."""
    tails = {}
    for b in (2, 8):
        res = execute(make_cfg(*PROBLEM, f"batch_size={b}", "steps=4000", "eval_every=20",
                               "lr=0.2"))
        gaps = [v for key, v, step in res.history
                if key == "train/suboptimality" and step >= 2000]
        tails[b] = sum(gaps) / len(gaps)
    assert tails[2] > 2 * tails[8]


def test_runs_are_bit_reproducible():
    a = execute(make_cfg(*PROBLEM, "steps=200", "eval_every=10"))
    b = execute(make_cfg(*PROBLEM, "steps=200", "eval_every=10"))
    strip = lambda h: [(k, v, s) for k, v, s in h if not k.startswith("time/")]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c = execute(make_cfg(*PROBLEM, "steps=200", "eval_every=10", "seed=1"))
    assert strip(a.history) != strip(c.history)


def test_decaying_schedule_is_logged_every_step():
    res = execute(make_cfg(*PROBLEM, "steps=50", "eval_every=25", "lr=0.4",
                           "lr_schedule=decaying", "lr_offset=10"))
    lrs = {step: v for key, v, step in res.history if key == "train/lr"}
    assert sorted(lrs) == list(range(50))
    for t, v in lrs.items():
        assert v == pytest.approx(0.4 * 10 / (10 + t), rel=1e-15)


def test_bits_are_counted_per_worker_per_step():
    res = execute(make_cfg(*PROBLEM, "steps=30", "eval_every=10"))
    d = 30
    assert res.final["comm/bits_up"] == 30 * 32 * d
    assert res.final["comm/bits_down"] == 30 * 32 * d
    assert res.final["comm/rounds"] == 30


def test_divergence_is_detected_and_reported():
    res = execute(make_cfg(*PROBLEM, "steps=200", "eval_every=5", "lr=500"))
    assert res.status == "FAILED"
    assert "diverged" in res.reason


def test_schedules_follow_their_formulas():
    from suite.schedules import make_schedule

    cos = make_schedule("warmup_cosine", 1.0, steps=110, warmup_steps=10)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.5)
    assert cos(109) < 1e-3
    step = make_schedule("step", 2.0, steps=100, milestones=(0.5, 0.75), gamma=0.1)
    assert [step(t) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [2.0, 2.0, 0.2, 0.2, 0.02, 0.02])
