"""Local SGD: K workers take local SGD steps and average their models every H steps.

    x^k_0 = x_0;   y^k_{t+1} = x^k_t − η_t g^k_t            (g^k_t: minibatch gradient at x^k_t)
    x^k_{t+1} = (1/K) Σ_k' y^k'_{t+1}   if t+1 ∈ I_T (a synchronisation),   else y^k_{t+1}

Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019, arXiv:1805.09767;
docs/theory.md §4. I_T is every H-th step (`local_steps: H`) or an explicit list (`sync_steps`).

Synchronisation through the channel: each worker sends its progress since the last
synchronisation, y^k − x_sync, up-link (compressed by the run's compressor), and the server
broadcasts the mean progress; every worker adds it to x_sync. Sending differences, not models,
keeps the float32 wire rounding relative to the progress (the model itself stays in the task's
precision), and lets a compressor act on a small vector. With the identity compressor this is
exact averaging up to float32 rounding of the messages. Bits and rounds are counted at
synchronisations only; the local steps communicate nothing.

Output (`output`): `last` evaluates the average of the local models (1/K) Σ_k x^k_t; `weighted`
evaluates the theorem's x̂_T = (1/(K S_T)) Σ_k Σ_{t<T} w_t x^k_t with w_t = (a+t)² and
S_T = Σ_{t<T} w_t. Each worker keeps its own running weighted average (updated in place,
numerically safer than a weighted sum), so the output costs no communication until evaluation.

Step sizes (`schedule`): `constant` uses the runner's lr (and lr_schedule). `theorem` uses the
theorem's η_t = 4/(μ(a+t)), a = max(16κ, H) + 1 unless `a` is set. Then the runner's step size is
not used: the theorem function refuses a numeric lr (use lr=theory), and lr=theory resolves to
η_0 = 4/(μa), which is what the runner logs as train/lr; the steps actually taken are η_t.

H = 1 is minibatch SGD with K workers of batch b each: at every step the models agree, and the
averaged step is γ·(1/K) Σ_k g^k, the gradient of a batch of K·b samples.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import sigma_sq

OUTPUTS = ("last", "weighted")
# the analysis averages exact models; an unbiased compressor of the progress only adds variance
COMPRESSOR_KINDS = ("unbiased",)
SCHEDULES = ("constant", "theorem")
# Constant steps: Theorem 2.2's schedule never exceeds η_0 = 4/(μa) < 1/(4L) (a > 16κ); we admit
# the same bound, lr_max = 1/(4L), for a constant step. A documented choice, not a theorem of
# the paper for constant steps.
CONSTANT_STEP_FACTOR = 4.0


class LocalState(NamedTuple):
    xs: torch.Tensor  # [w, d] the held workers' local models
    anchor: torch.Tensor  # [d] the model at the last synchronisation
    avg: torch.Tensor  # [w, d] each worker's running average Σ w_t x^k_t / S_t
    weight_sum: torch.Tensor  # [] S_t = Σ_{s<t} w_s (float64)


def default_a(constants: dict, H: int) -> float:
    """a = max(16κ, H) + 1, the smallest integer-spaced choice with a > max(16κ, H)."""
    return max(16.0 * constants["L"] / constants["mu"], float(H)) + 1.0


def _checked(local_steps, sync_steps, output, schedule, a) -> tuple[int, frozenset | None]:
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise ConfigurationError(f"algorithm.local_steps={local_steps!r}: must be an integer >= 1")
    if output not in OUTPUTS:
        raise ConfigurationError(
            f"algorithm.output={output!r}: allowed values are {', '.join(OUTPUTS)}")
    if schedule not in SCHEDULES:
        raise ConfigurationError(
            f"algorithm.schedule={schedule!r}: allowed values are {', '.join(SCHEDULES)}")
    if a is not None and not (isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0):
        raise ConfigurationError(f"algorithm.a={a!r}: must be a number > 0, or null")
    if sync_steps is None:
        return local_steps, None
    steps = list(sync_steps)
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps) \
            or steps != sorted(set(steps)):
        raise ConfigurationError(
            f"algorithm.sync_steps={sync_steps!r}: must be a non-empty, strictly increasing "
            "list of integers >= 1 (the iterations t+1 after which models are averaged), or null")
    return local_steps, frozenset(steps)


def max_gap(local_steps: int, sync_steps) -> int:
    """gap(I_T): the longest run of local steps between synchronisations (H for every-H)."""
    if sync_steps is None:
        return local_steps
    points = [0, *sorted(sync_steps)]
    return max(b - a for a, b in zip(points[:-1], points[1:], strict=True))


def build(ctx: Context, *, local_steps: int = 1, sync_steps: list | None = None,
          output: str = "last", schedule: str = "constant", a: float | None = None
          ) -> Algorithm:
    H, sync_set = _checked(local_steps, sync_steps, output, schedule, a)
    consts = ctx.task.constants
    a_value = float(a) if a is not None else default_a(consts, max_gap(H, sync_set))
    mu = consts["mu"]
    backend, channel = ctx.channel.backend, ctx.channel
    w = len(backend.worker_ids)

    def synchronises(t: int) -> bool:
        return (t + 1) % H == 0 if sync_set is None else (t + 1) in sync_set

    def init(x0):
        xs = x0.expand(w, -1).clone()
        return LocalState(xs, x0.clone(), xs.clone(),
                          torch.zeros((), dtype=torch.float64, device=x0.device))

    def step(state, t, lr):
        eta = 4.0 / (mu * (a_value + t)) if schedule == "theorem" else lr
        avg, weight_sum = state.avg, state.weight_sum
        if output == "weighted":  # fold x^k_t in with weight w_t = (a+t)²
            wt = (a_value + t) ** 2
            weight_sum = weight_sum + wt
            avg = avg + (wt / weight_sum).to(avg.dtype) * (state.xs - avg)
        xs = state.xs - eta * ctx.grads(state.xs)
        anchor = state.anchor
        if synchronises(t):
            _, progress = channel.send_up(xs - anchor)
            anchor = anchor + channel.broadcast(progress)
            xs = anchor.expand(w, -1).clone()
        return LocalState(xs, anchor, avg, weight_sum)

    def params(state):
        if output == "weighted" and float(state.weight_sum) > 0:
            return backend.mean(state.avg)
        return backend.mean(state.xs)

    return Algorithm("local_sgd", init, step, params)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = 0.0,
            lr: float | None = None, local_steps: int = 1, sync_steps: list | None = None,
            output: str = "last", schedule: str = "constant", a: float | None = None,
            **_) -> Theorem:
    """docs/theory.md §4. Local SGD's theorem (Stich 2019, Theorem 2.2) is a bound in T with
    decaying steps, not a linear rate: `rate` and `floor` are None here and the bound itself is
    `bound(...)` below.

    lr_max: with schedule=theorem, η_0 = 4/(μa) (the runner logs it; the algorithm takes η_t);
    with constant steps 1/(4L), the largest step the theorem's schedule ever takes (documented
    choice, see CONSTANT_STEP_FACTOR). schedule=theorem refuses a numeric lr, since it would be
    ignored.
    """
    H, sync_set = _checked(local_steps, sync_steps, output, schedule, a)
    if schedule == "theorem":
        if lr is not None:
            raise ConfigurationError(
                f"algorithm.schedule=theorem sets its own step sizes η_t = 4/(μ(a+t)); "
                f"lr={lr} would be ignored: set lr=theory, or algorithm.schedule=constant")
        a_value = float(a) if a is not None else default_a(c, max_gap(H, sync_set))
        return Theorem(4.0 / (c["mu"] * a_value), None, None, "subopt",
                       "docs/theory.md §4 (Local SGD Theorem 2.2: see local_sgd.bound)")
    return Theorem(1.0 / (CONSTANT_STEP_FACTOR * c["L"]), None, None, "subopt",
                   "docs/theory.md §4 (Local SGD: constant-step bound 1/(4L), documented choice)")


def bound(constants: dict, T: int, K: int, b: int | None, H: int, G_sq: float, *, r0: float,
          a: float | None = None) -> float:
    """Theorem 2.2 of Stich (2019) as reconstructed in docs/theory.md §4 [M: constants unverified],
    for η_t = 4/(μ(a+t)), a > max(16κ, H), the weighted output x̂_T:

        E f(x̂_T) − f* ≤ μa³r0/(2S_T) + 4T(T+2a)σ²/(μbK·S_T) + 256·T·L·G²·H²/(μ²·S_T),

    S_T = Σ_{t<T} (a+t)². σ² is the per-sample variance (task constant sigma_sq); b = None means
    full local gradients (σ² term 0). G_sq bounds E‖∇f_i(x)‖² along the trajectory; r0 = ‖x0−x*‖².
    """
    mu, L = constants["mu"], constants["L"]
    a_value = float(a) if a is not None else default_a(constants, H)
    t = torch.arange(T, dtype=torch.float64)
    S_T = float(((a_value + t) ** 2).sum())
    noise = sigma_sq(constants, b)  # σ²/b (0 with full gradients)
    return (mu * a_value**3 * r0 / (2 * S_T)
            + 4 * T * (T + 2 * a_value) * noise / (mu * K * S_T)
            + 256 * T * L * G_sq * H**2 / (mu**2 * S_T))
