"""The algorithms of issue 4: what each reduces to, what its update rule does, its theorem's
formulas, and the configurations it refuses (docs/theory.md §2–§6).

Problems are small and seeded (synthetic logistic regression, d = 12, 4 workers), so every test
runs in well under a second. Trajectories are stepped through `Run` directly, which is what the
runner's loop does, minus evaluation and logging.
"""

from __future__ import annotations

import math

import pytest
import torch

from suite import checkpoint
from suite.algorithms import REGISTRY, ConfigurationError, diana, local_sgd
from suite.algorithms.common import contraction_delta
from suite.algorithms.diana import soft_threshold
from suite.runner import Run, execute
from tests.conftest import make_cfg

# One thread: these problems are tiny, and on a shared 2-core machine torch's thread pool
# costs far more than it saves (a [4, 60, 12] bmm goes from µs to ms under contention).
SMALL = ("task.dataset=synthetic", "task.n_samples=240", "task.dim=12", "task.l2=0.05",
         "workers=4", "hardware.threads=1")
D = 12
TOP2 = ("compressor=topk", "compressor.k=2", "compressor.ratio=null")  # top-2 of 12


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def build(*overrides: str) -> Run:
    return Run(make_cfg(*SMALL, *overrides))


def trajectory(*overrides: str, steps: int = 30):
    """The evaluated point after each of `steps` steps, [steps, d], and the final state."""
    run = build(*overrides, f"steps={steps}")
    state = run.algorithm.init(run.task.x0())
    points = []
    for t in range(steps):
        state = run.algorithm.step(state, t, run.schedule(t))
        points.append(run.algorithm.params(state))
    return torch.stack(points), state, run


# -- reduces-to ----------------------------------------------------------------------------

@pytest.mark.parametrize("error_feedback", ["true", "false"])
def test_ef_sgd_with_the_identity_compressor_is_sgd(error_feedback):
    """EF with C = identity: v = p, so e stays 0 and x_{t+1} = x_t − γ·mean g. Not bit-equal:
    EF rounds γg to float32 on the wire where SGD rounds g (and then multiplies by γ), and the
    memory feeds that rounding back; so the iterates agree to float32 precision, ~1e-7
    relative per step, and the memory holds only rounding residue."""
    common = ("batch_size=4", "lr=0.5")
    sgd_xs, _, _ = trajectory("algorithm=sgd", *common)
    ef_xs, state, _ = trajectory("algorithm=ef_sgd", f"algorithm.error_feedback={error_feedback}",
                                 *common)
    scale = sgd_xs.abs().max()
    assert (ef_xs - sgd_xs).abs().max() <= 1e-6 * scale
    assert state.e.abs().max() <= 1e-7 * scale  # rounding residue only (0 without EF)


@pytest.mark.parametrize("delay", [("algorithm.delay=0",),
                                   ("algorithm.mode=random", "algorithm.max_delay=0")])
def test_delayed_sgd_with_zero_delay_is_sgd(delay):
    """τ = 0: the same gradient at the same point through the same channel: bit-identical."""
    sgd_xs, _, _ = trajectory("algorithm=sgd", "batch_size=4", "lr=0.5")
    delayed_xs, _, _ = trajectory("algorithm=delayed_sgd", *delay, "batch_size=4", "lr=0.5")
    assert torch.equal(delayed_xs, sgd_xs)


def test_local_sgd_with_one_local_step_is_minibatch_sgd_with_batch_K_times_b():
    """H = 1: every step ends with a synchronisation, so all K models equal x_t and the new
    model is x_t − γ·(1/K) Σ_k g_k, the gradient of the K·b samples the workers drew, i.e.
    parallel SGD with K workers of batch b (= one batch of K·b). Same sampling streams, so the
    same samples: the iterates agree up to the float32 wire, which carries the model progress
    −γg_k here and the gradient g_k in SGD."""
    sgd_xs, _, _ = trajectory("algorithm=sgd", "batch_size=4", "lr=0.5")
    local_xs, state, _ = trajectory("algorithm=local_sgd", "algorithm.local_steps=1",
                                    "batch_size=4", "lr=0.5")
    assert (local_xs - sgd_xs).abs().max() <= 1e-6 * sgd_xs.abs().max()
    assert torch.equal(state.xs, state.anchor.expand_as(state.xs))  # models agree after sync


@pytest.mark.parametrize("compressor", ["qsgd", "terngrad", "quant_p"])
def test_diana_with_alpha_zero_is_compressed_sgd(compressor):
    """α = 0 keeps h_i = h = 0, so ĝ = (1/K) Σ Q(g_i): QSGD / TernGrad / DQGD, bit for bit
    (the same compression streams draw the same randomness)."""
    common = (f"compressor={compressor}", "batch_size=4", "lr=0.3")
    sgd_xs, _, _ = trajectory("algorithm=sgd", *common)
    diana_xs, state, _ = trajectory("algorithm=diana", "algorithm.alpha=0", *common)
    assert torch.equal(diana_xs, sgd_xs)
    assert not state.h_workers.any() and not state.h.any()


def test_diana_with_identity_and_full_gradients_is_gradient_descent():
    """Identity messages, full local gradients: ĝ = h + (1/K) Σ (∇f_i − h_i) = ∇f(x), so
    x_{k+1} = x_k − γ∇f(x_k). Compared with GD computed from task.full_grad; the only
    difference is the float32 rounding of messages and broadcast (relative ~6e-8 per step)."""
    xs, _, run = trajectory("algorithm=diana", "compressor=identity", "batch_size=full",
                            "lr=0.8", steps=40)
    x = run.task.x0()
    reference = []
    for _ in range(40):
        x = x - 0.8 * run.task.full_grad(x)
        reference.append(x)
    reference = torch.stack(reference)
    assert (xs - reference).abs().max() <= 1e-6 * reference.abs().max()


# -- what each update rule does ------------------------------------------------------------

def test_delayed_sgd_applies_the_gradient_taken_at_x_t_minus_tau():
    """x_{t+1} = x_t − γ∇f(x_{t−τ}), nothing applied (or sent) while t < τ."""
    tau, steps, lr = 3, 12, 0.8
    xs, state, run = trajectory("algorithm=delayed_sgd", f"algorithm.delay={tau}",
                                "batch_size=full", f"lr={lr}", steps=steps)
    history = [run.task.x0()]
    for t in range(steps):
        g = run.task.full_grad(history[t - tau]) if t >= tau else torch.zeros(D).double()
        history.append(history[t] - lr * g)
    reference = torch.stack(history[1:])
    assert torch.equal(xs[:tau], run.task.x0().expand(tau, -1))
    assert (xs - reference).abs().max() <= 1e-6 * reference.abs().max()
    assert run.channel.rounds == steps - tau
    assert state.past.shape == (tau, D)  # the queue a checkpoint saves
    assert torch.equal(state.past[0], xs[-2]) and torch.equal(state.past[-1], xs[-1 - tau])


def test_random_delays_are_seeded_and_change_the_trajectory():
    common = ("algorithm=delayed_sgd", "algorithm.mode=random", "algorithm.max_delay=4",
              "batch_size=4", "lr=0.3")
    a, state, _ = trajectory(*common, "seed=3")
    b, _, _ = trajectory(*common, "seed=3")
    c, _, _ = trajectory(*common, "seed=4")
    fixed, _, _ = trajectory("algorithm=delayed_sgd", "algorithm.delay=4", "batch_size=4",
                             "lr=0.3", "seed=3")
    sgd, _, _ = trajectory("algorithm=sgd", "batch_size=4", "lr=0.3", "seed=3")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, fixed) and not torch.equal(a, sgd)
    assert state.past.shape == (4, D)


def test_local_sgd_communicates_only_at_synchronisations():
    H, steps = 4, 20
    _, state, run = trajectory("algorithm=local_sgd", f"algorithm.local_steps={H}",
                               "batch_size=2", "lr=0.3", steps=steps)
    totals = run.channel.totals()
    assert totals["comm/rounds"] == steps // H
    assert totals["comm/bits_up"] == steps // H * 32 * D  # identity: 32 bits a coordinate
    assert totals["comm/bits_down"] == steps // H * 32 * D
    # between synchronisations the local models drift apart; right after one they agree
    mid = build("algorithm=local_sgd", f"algorithm.local_steps={H}", "batch_size=2", "lr=0.3")
    s = mid.algorithm.init(mid.task.x0())
    for t in range(H - 1):
        s = mid.algorithm.step(s, t, 0.3)
    assert (s.xs[0] - s.xs[1]).abs().max() > 0
    s = mid.algorithm.step(s, H - 1, 0.3)
    assert torch.equal(s.xs[0], s.xs[1])


def test_local_sgd_synchronises_at_an_explicit_list():
    _, _, run = trajectory("algorithm=local_sgd", "algorithm.sync_steps=[3,10,11,50]",
                           "batch_size=2", "lr=0.3", steps=20)
    assert run.channel.rounds == 3  # after iterations 3, 10 and 11; 50 is beyond T


def test_local_sgd_weighted_output_is_the_theorems_average():
    """x̂_T = Σ_{t<T} w_t x̄_t / Σ_{t<T} w_t with w_t = (a+t)², x̄_t the mean of local models
    (the output does not change the dynamics, so the same seed gives the same x̄_t)."""
    common = ("algorithm=local_sgd", "algorithm.local_steps=3", "algorithm.a=7",
              "batch_size=2", "lr=0.3")
    xs, _, run = trajectory(*common, steps=25)
    weighted, _, _ = trajectory(*common, "algorithm.output=weighted", steps=25)
    means = torch.cat([run.task.x0()[None], xs[:-1]])  # x̄_0 … x̄_{T−1}
    w = (7.0 + torch.arange(25, dtype=torch.float64)) ** 2
    expected = (w[:, None] * means).sum(0) / w.sum()
    assert torch.allclose(weighted[-1], expected, rtol=1e-12, atol=1e-15)


def test_local_sgd_theorem_schedule_takes_its_own_steps():
    """schedule=theorem: η_t = 4/(μ(a+t)), which is the runner's decaying schedule with
    lr = 4/(μa) and offset a; a numeric lr is refused (it would be ignored)."""
    with pytest.raises(ConfigurationError, match="schedule=theorem.*lr=theory"):
        build("algorithm=local_sgd", "algorithm.schedule=theorem", "lr=0.1")
    a, mu = 40.0, 0.05
    ours, _, run = trajectory("algorithm=local_sgd", "algorithm.schedule=theorem",
                              f"algorithm.a={a}", "algorithm.local_steps=2", "batch_size=2",
                              "lr=theory")
    assert run.lr0 == pytest.approx(4 / (mu * a), rel=1e-12)
    runners, _, _ = trajectory("algorithm=local_sgd", f"algorithm.a={a}",
                               "algorithm.local_steps=2", "batch_size=2", f"lr={4 / (mu * a)}",
                               "lr_schedule=decaying", f"lr_offset={a}")
    assert torch.allclose(ours, runners, rtol=1e-12, atol=1e-14)


def test_diana_shifts_learn_the_local_gradients_at_the_optimum():
    """With full gradients h_i → ∇f_i(x*) (heterogeneous: these are far from 0), which is why
    DIANA's compression noise vanishes at the optimum."""
    _, state, run = trajectory("algorithm=diana", "compressor=quant_p", "task.split=by_label",
                               "batch_size=full", "lr=theory", steps=600)
    target = run.task.grads(run.task.x_star, None)
    assert target.norm() > 0.1
    assert (state.h_workers - target).norm() <= 1e-6 * target.norm()
    assert torch.allclose(state.h, state.h_workers.mean(0), atol=1e-12)


def test_soft_threshold_is_the_l1_prox():
    y = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0], dtype=torch.float64)
    assert torch.equal(soft_threshold(y, 1.0),
                       torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_diana_with_l1_converges_to_the_prox_gradient_fixed_point():
    """R = l1·‖x‖₁: the limit solves x = prox_{γR}(x − γ∇f(x)), and is sparse for a large l1."""
    lr, l1 = 0.8, 0.02
    _, state, run = trajectory("algorithm=diana", "compressor=identity", "batch_size=full",
                               f"lr={lr}", f"algorithm.l1={l1}", steps=300)
    x = state.x
    fixed_point = soft_threshold(x - lr * run.task.full_grad(x), lr * l1)
    assert (fixed_point - x).norm() <= 1e-6 * x.norm()
    assert 0 < int((x == 0).sum()) < D  # some, not all, coordinates are exactly zero


def test_ef_memory_holds_exactly_what_top_k_dropped():
    """One EF step with top-k from e = 0: v_k = top-k(γg_k), e_k = γg_k − v_k, x_1 = x_0 −
    mean_k v_k. The memory equals γg_k on the d − k dropped coordinates and holds only the
    float32 wire rounding on the k sent ones."""
    lr = 0.5
    run = build("algorithm=ef_sgd", *TOP2, "batch_size=full", f"lr={lr}")
    x0 = run.task.x0()
    state = run.algorithm.step(run.algorithm.init(x0), 0, lr)
    p = lr * run.task.grads(x0, None)
    kept = torch.zeros_like(p, dtype=torch.bool)
    kept.scatter_(1, p.abs().topk(2, dim=1).indices, True)
    assert torch.equal(state.e[~kept], p[~kept])
    assert (state.e[kept].abs() <= 1e-7 * p[kept].abs()).all()
    sent = torch.where(kept, p.to(torch.float32).to(p.dtype), torch.zeros_like(p))
    assert torch.allclose(state.x, x0 - sent.mean(0), rtol=1e-6, atol=1e-12)


def test_ef_sgd_scales_an_unbiased_compressor_into_a_contraction():
    """With EF, Q ∈ U(ω) is used as Q/(ω+1) ∈ C(1/(ω+1)): the step is the decoded mean over
    (ω+1). Same compression stream, so compare with SGD's step on the same messages."""
    lr = 0.5
    ef = build("algorithm=ef_sgd", "compressor=quant_p", "batch_size=full", f"lr={lr}")
    sg = build("algorithm=sgd", "compressor=quant_p", "batch_size=full", f"lr={lr}")
    x0 = ef.task.x0()
    omega = ef.compressor.omega(D)
    ef_step = ef.algorithm.step(ef.algorithm.init(x0), 0, lr).x - x0
    sgd_step = sg.algorithm.step(sg.algorithm.init(x0), 0, lr).x - x0
    # quant_p is scale-equivariant up to the float32 wire norm: Q(γg) = γQ(g)
    assert torch.allclose(ef_step, sgd_step / (omega + 1), rtol=1e-5, atol=1e-12)


# -- theorems ------------------------------------------------------------------------------

CONSTS = {"L": 2.0, "L_max": 3.0, "mu": 0.1, "sigma_sq": 4.0, "zeta_sq": 1.0}


def test_ef_theorem_step_size_scales_with_delta():
    ef = REGISTRY["ef_sgd"].theorem
    a = ef(CONSTS, workers=4, batch_size=8, omega=None, delta=0.1)
    b = ef(CONSTS, workers=4, batch_size=8, omega=None, delta=0.2)
    assert b.lr_max == pytest.approx(2 * a.lr_max)
    assert a.rate == pytest.approx(1 - a.lr_max * CONSTS["mu"]) and a.floor is None
    # an unbiased compressor counts as δ = 1/(ω+1) (scaled), or 1 − ω unscaled (ω < 1 only)
    assert contraction_delta(3.0, None, scale_unbiased=True) == 0.25
    assert contraction_delta(0.5, None, scale_unbiased=False) == 0.5
    assert contraction_delta(3.0, None, scale_unbiased=False) is None
    unscaled = ef(CONSTS, workers=4, batch_size=8, omega=3.0, scale_unbiased=False)
    assert math.isnan(unscaled.lr_max)


def test_delayed_theorem_step_size_scales_with_one_over_tau_plus_one():
    th = REGISTRY["delayed_sgd"].theorem
    t0 = th(CONSTS, workers=4, batch_size=8, delay=0)
    t7 = th(CONSTS, workers=4, batch_size=8, delay=7)
    t_random = th(CONSTS, workers=4, batch_size=8, mode="random", max_delay=7)
    assert t0.lr_max == pytest.approx(8 * t7.lr_max)
    assert t_random.lr_max == t7.lr_max  # random delays: the worst case max_delay


def test_diana_theorem_matches_theory_section_5():
    K, omega, b = 4, 3.0, 8
    th = diana.theorem(CONSTS, workers=K, batch_size=b, omega=omega)
    gamma = 1 / (CONSTS["L_max"] * (1 + 6 * omega / K))
    alpha = 1 / (omega + 1)
    m = min(gamma * CONSTS["mu"], alpha / 2)
    assert th.lr_max == pytest.approx(gamma)
    assert th.rate == pytest.approx(1 - m)
    assert th.floor == pytest.approx(
        gamma**2 * (1 + omega) * (1 + 4 * alpha * omega) * (CONSTS["sigma_sq"] / b) / (K * m))
    assert th.quantity == "dist_sq"
    assert diana.theorem(CONSTS, workers=K, batch_size=None, omega=omega).floor == 0.0
    # outside the theorem's conditions there is no rate
    assert diana.theorem(CONSTS, workers=K, batch_size=b, omega=omega, alpha=0.5).rate is None
    assert diana.theorem(CONSTS, workers=K, batch_size=b, omega=omega, momentum=0.9).rate is None
    assert diana.theorem(CONSTS, workers=K, batch_size=b, omega=omega,
                         lr=2 * gamma).rate is None


def test_local_sgd_bound_has_the_theorems_terms():
    """bound(T) falls with T; its drift term grows as H²; the noise term falls as 1/(Kb)."""
    base = dict(K=4, b=8, H=2, G_sq=5.0, r0=1.0)
    bound = local_sgd.bound
    assert bound(CONSTS, 4000, **base) < bound(CONSTS, 1000, **base)
    no_noise = dict(CONSTS, sigma_sq=0.0)
    drift = lambda H: bound(no_noise, 1000, **dict(base, H=H), a=200.0) \
        - bound(no_noise, 1000, **dict(base, H=H, G_sq=0.0), a=200.0)  # noqa: E731
    assert drift(8) == pytest.approx(16 * drift(2))
    noise = lambda K: bound(CONSTS, 1000, **dict(base, K=K, G_sq=0.0), a=200.0) \
        - bound(no_noise, 1000, **dict(base, K=K, G_sq=0.0), a=200.0)  # noqa: E731
    assert noise(8) == pytest.approx(noise(4) / 2)
    th = local_sgd.theorem(CONSTS, workers=4, batch_size=8, schedule="theorem", a=200.0)
    assert th.lr_max == pytest.approx(4 / (CONSTS["mu"] * 200.0)) and th.rate is None


def test_a_biased_compressor_without_error_feedback_runs_only_with_a_numeric_lr():
    """No theorem covers compressed SGD with top-k: lr=theory is refused before the run
    starts, naming the reason; a numeric lr runs."""
    from suite.config import ConfigError

    for algo in (("algorithm=sgd",), ("algorithm=ef_sgd", "algorithm.error_feedback=false")):
        with pytest.raises(ConfigError, match="lr=theory: no theorem.*set lr to a number"):
            build(*algo, *TOP2, "lr=theory")
        xs, _, _ = trajectory(*algo, *TOP2, "lr=0.3", steps=5)
        assert torch.isfinite(xs).all()


# -- configurations refused before the run starts ------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (("algorithm=diana", "compressor=topk"), r"diana needs an unbiased compressor.*topk"),
    (("algorithm=diana", "compressor=sign"), r"diana needs an unbiased compressor.*sign"),
    (("algorithm=local_sgd", "compressor=topk"), r"local_sgd needs an unbiased"),
    (("algorithm=delayed_sgd", "compressor=sign"), r"delayed_sgd needs an unbiased"),
    (("algorithm=qsgd", "compressor=topk"), r"qsgd needs an unbiased"),
    (("algorithm=dqgd", "compressor=quant_p", "batch_size=4"), r"dqgd.*batch_size=full"),
    (("algorithm=local_sgd", "algorithm.local_steps=0"), r"local_steps=0"),
    (("algorithm=local_sgd", "algorithm.sync_steps=[5,3]"), r"sync_steps=\[5, 3\]"),
    (("algorithm=local_sgd", "algorithm.output=best"), r"output='best'.*last, weighted"),
    (("algorithm=delayed_sgd", "algorithm.mode=async"), r"mode='async'.*fixed, random"),
    (("algorithm=delayed_sgd", "algorithm.mode=random"), r"needs algorithm.max_delay"),
    (("algorithm=delayed_sgd", "algorithm.delay=-1"), r"delay=-1"),
    (("algorithm=diana", "compressor=quant_p", "algorithm.momentum=1.0"), r"momentum=1.0"),
    (("algorithm=diana", "compressor=quant_p", "algorithm.alpha=2"), r"alpha=2"),
    (("algorithm=ef_sgd", "algorithm.error_feedback=maybe"), r"error_feedback='maybe'"),
])
def test_bad_configurations_are_refused_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        build(*overrides)


@pytest.mark.parametrize("algorithm, compressor, batch", [
    ("qsgd", "qsgd", 16), ("terngrad", "terngrad", 16), ("dqgd", "quant_p", "full"),
    ("diana", "quant_p", 16), ("sgd", "identity", 16), ("ef_sgd", "identity", 16),
    ("delayed_sgd", "identity", 16), ("local_sgd", "identity", 16),
])
def test_algorithm_options_select_their_default_compressor(algorithm, compressor, batch):
    """An algorithm option picks its compressor (and DQGD its full batches) through
    `override /compressor` in its defaults list; conf/config.yaml lists compressor before
    algorithm, which Hydra needs for that override to apply."""
    cfg = make_cfg(f"algorithm={algorithm}")
    assert cfg.algorithm.name == algorithm and cfg.compressor.name == compressor
    assert cfg.batch_size == batch
    assert REGISTRY[algorithm].default_compressor == compressor
    # the command line wins over the option's default
    cfg = make_cfg(f"algorithm={algorithm}", "compressor=terngrad", "batch_size=4")
    assert cfg.compressor.name == "terngrad" and cfg.batch_size == 4


# -- every algorithm through the runner ----------------------------------------------------

RUNS = {
    "sgd": (),
    "qsgd": ("compressor=qsgd",),
    "terngrad": ("compressor=terngrad",),
    "dqgd": ("compressor=quant_p", "batch_size=full"),
    "ef_sgd": TOP2,
    "delayed_sgd": ("algorithm.mode=random", "algorithm.max_delay=3"),
    "local_sgd": ("algorithm.local_steps=3", "algorithm.output=weighted"),
    "diana": ("compressor=quant_p", "algorithm.momentum=0.5"),
    "ef21": TOP2,
    "marina": ("compressor=randk", "compressor.k=3", "compressor.ratio=null", "batch_size=full"),
    # sign steps move every coordinate by γ: a decaying γ_t = 0.2/(1 + t) at lr=0.2
    "majority_vote": ("algorithm.momentum=0.9", "lr_schedule=decaying", "lr_offset=1"),
    "fedavg": ("algorithm.local_steps=3", "algorithm.participation=0.5",
               "algorithm.server_momentum=0.9", "algorithm.nesterov=true"),
    "scaffold": ("algorithm.local_steps=3", "algorithm.participation=0.5"),
}
# bits each broadcast costs every worker: the dense float32 broadcast, except the vote's
DOWN_BITS = {"majority_vote": D}


def test_every_registered_algorithm_is_exercised_here():
    assert set(RUNS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_algorithm_runs_through_the_runner_and_counts_bits(name, tmp_path):
    cfg = make_cfg(*SMALL, f"algorithm={name}", "batch_size=4", *RUNS[name], "lr=0.2",
                   "steps=12", "eval_every=6")
    result = execute(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
    assert result.status == "FINISHED", result.reason
    final = result.final
    assert final["train/suboptimality"] < math.log(2)  # it moved towards the optimum
    assert final["comm/rounds"] >= 1 and final["comm/bits_up"] > 0
    assert final["comm/bits_down"] == final["comm/rounds"] * DOWN_BITS.get(name, 32 * D)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_state_holds_everything_a_checkpoint_needs(name, tmp_path):
    """10 steps, checkpoint, restore into a fresh Run, 10 more steps == 20 straight steps,
    bit for bit: error memories, shifts, queues and local models are all in the state."""
    overrides = (f"algorithm={name}", "batch_size=4", *RUNS[name], "lr=0.2", "steps=20")
    straight, _, _ = trajectory(*overrides, steps=20)
    first = build(*overrides)
    state = first.algorithm.init(first.task.x0())
    for t in range(10):
        state = first.algorithm.step(state, t, first.schedule(t))
    assert all(isinstance(v, torch.Tensor) for v in state)
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, run=first, state=state, step=10, wall=0.0, initial_loss=1.0,
                    run_id=None, config_hash="x")
    second = build(*overrides)
    state = checkpoint.restore(checkpoint.load(path, config_hash="x"), second)
    for t in range(10, 20):
        state = second.algorithm.step(state, t, second.schedule(t))
    assert torch.equal(second.algorithm.params(state), straight[-1])


def test_sgd_heavy_ball_momentum_follows_its_recursion():
    """v_{t+1} = βv_t + ḡ_t, x_{t+1} = x_t − γv_{t+1}: the iterates equal a by-hand recursion
    over the task's full gradients (cast to the float32 wire as the channel does), and differ
    from the momentum-free iterates; lr=theory is refused with momentum."""
    from suite.runner import Run
    from tests.conftest import make_cfg

    common = ("batch_size=full", "workers=2", "task.l2=0.01", "lr=0.5")
    run = Run(make_cfg(*common, "algorithm.momentum=0.9"))
    state = run.algorithm.init(run.task.x0())
    x, v = run.task.x0().clone(), torch.zeros(run.task.dim, dtype=torch.float64)
    for t in range(5):
        state = run.algorithm.step(state, t, 0.5)
        g = run.task.grads(x, None).to(torch.float32).to(torch.float64).mean(0)
        v = 0.9 * v + g.to(torch.float32).to(torch.float64)
        x = x - 0.5 * v
        torch.testing.assert_close(state.x, x, rtol=1e-12, atol=1e-14)
    plain = Run(make_cfg(*common))
    s0 = plain.algorithm.step(plain.algorithm.init(plain.task.x0()), 0, 0.5)
    s1 = plain.algorithm.step(s0, 1, 0.5)
    assert not torch.equal(s1.x, state.x)
    with pytest.raises(Exception, match="lr=theory: no theorem"):
        Run(make_cfg("algorithm.momentum=0.9"))
