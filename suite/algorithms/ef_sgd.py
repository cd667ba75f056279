"""EC-SGD: SGD with compressed messages and error feedback (error compensation).

Each worker k keeps an error memory e^k (e^k_0 = 0), the part of its past steps that
compression has not yet delivered, and adds it back before compressing the next one:

    p^k_t     = e^k_t + γ_t g^k_t                  (g^k_t: worker k's minibatch gradient at x_t)
    v^k_t     = C(p^k_t)                           (sent up-link)
    e^k_{t+1} = p^k_t − v^k_t
    x_{t+1}   = x_t − (1/K) Σ_k v^k_t              (the server broadcasts the mean, dense)

Stich & Karimireddy, "The Error-Feedback Framework: Better Rates for SGD with Delayed Gradients
and Compressed Communication", arXiv:1909.05350 (JMLR 2020); docs/theory.md §3. The memory is what
makes a biased compressor safe: the virtual iterate x̃_t = x_t − (1/K) Σ_k e^k_t follows plain
SGD exactly, so compression only perturbs the point at which gradients are taken.

Compressors. Any compressor runs. A contractive C ∈ C(δ) is used as is. An unbiased Q ∈ U(ω) is
not contractive when ω ≥ 1 (its error can exceed the message), so with error feedback the
message is scaled to Q/(ω+1) ∈ C(1/(ω+1)) (`scale_unbiased: true`, the default): the receiver
knows ω from the config, so the scaling costs no bits, and it is applied to the decoded message.
With `scale_unbiased: false` the unbiased compressor is used unscaled, which the theorem covers
only for ω < 1 (δ = 1 − ω).

`error_feedback: false` drops the memory (e ≡ 0): compressed SGD without error feedback, the
baseline EF is measured against; the unbiased scaling is not applied then (it would only bias an
unbiased compressor), so this is `sgd` with that compressor, with γ applied before compression.

A low-rank scheme (`compressor=powersgd`, kind "low_rank", Vogels et al. 2019) is admitted
too: its decoded message is a projection of the sent one, so the memory keeps what the
projection drops, which is PowerSGD's own Algorithm 2 (without its momentum). It declares no δ
(none is proven, docs/theory.md §12), so no theorem covers it: lr=theory is refused, a numeric
lr runs.

With the identity compressor this is SGD: the memory then holds only the float32 rounding of the
wire, which it feeds back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import sgd
from .base import Algorithm, ConfigurationError, Context, Theorem
from .common import check_lr, contraction_delta, no_theorem

# Any ω/δ compressor, and PowerSGD's low-rank scheme, whose analysis is that of a biased
# compressor with error feedback (docs/theory.md §12)
COMPRESSOR_KINDS = ("unbiased", "contractive", "low_rank")

# docs/theory.md §3 states the admissible step γ ≤ δ/(c·L·(M+1)) with an unverified absolute
# constant c [M]. We take c = 12: in the framework's virtual-iterate argument, the memory bound
# E‖e‖² ≲ 6γ²‖∇f‖²/δ² (docs/theory.md §3) with ‖∇f‖² ≤ 2L(f − f*) keeps the perturbation term
# 3Lγ·E‖e‖² below (γ/4)(f − f*) once γ ≤ δ/(12L), which also implies γ ≤ 1/(4L). A sketch,
# not the paper's constant: tests check the scaling in δ, never this number.
EF_CONSTANT = 12.0
# Noise model E‖ξ‖² ≤ M‖∇f‖² + σ²: we take M = 0, with σ² the minibatch variance at x*.
NOISE_M = 0.0


class EFState(NamedTuple):
    x: torch.Tensor  # [d] the model (replicated on every worker)
    e: torch.Tensor  # [w, d] each held worker's error memory


def build(ctx: Context, *, error_feedback: bool = True, scale_unbiased: bool = True
          ) -> Algorithm:
    if not isinstance(error_feedback, bool):
        raise ConfigurationError(
            f"algorithm.error_feedback={error_feedback!r}: allowed values are true, false")
    if not isinstance(scale_unbiased, bool):
        raise ConfigurationError(
            f"algorithm.scale_unbiased={scale_unbiased!r}: allowed values are true, false")
    compressor = ctx.channel.compressor
    scale = 1.0
    if error_feedback and scale_unbiased and compressor.unbiased:
        scale = 1.0 / (compressor.omega(ctx.task.dim) + 1.0)
    w = len(ctx.channel.backend.worker_ids)

    def init(x0):
        return EFState(x0.clone(), x0.new_zeros(w, x0.numel()))

    def step(state, t, lr):
        check_lr(lr, "ef_sgd", "compressed SGD without error feedback can diverge")
        g = ctx.grads(state.x)
        p = state.e + lr * g if error_feedback else lr * g
        own, mean = ctx.channel.send_up(p)
        if scale != 1.0:
            own, mean = own * scale, mean * scale
        e = p - own if error_feedback else state.e
        return EFState(state.x - ctx.channel.broadcast(mean), e)

    return Algorithm("ef_sgd", init, step, lambda s: s.x)


def theorem(c: dict, *, workers: int, batch_size: int | None, omega: float | None = None,
            delta: float | None = None, lr: float | None = None, error_feedback: bool = True,
            scale_unbiased: bool = True, **_) -> Theorem:
    """docs/theory.md §3, EF with δ [M: structure from the paper, constant c documented above]:

        E f(x_out) − f* = Õ((L(M+1)/δ)·r0·exp[−δμT/(cL(M+1))] + σ²/(μT) + Lσ²/(δμ²T²)),

    for γ ≤ lr_max = δ/(c·L·(M+1)), c = EF_CONSTANT, M = NOISE_M. The transient contracts by
    exp(−γμ) per step at γ = lr_max; we report rate = 1 − γμ for γ ≤ lr_max (quantity: subopt).
    No floor: docs/theory.md states none for EF (its stochastic terms decay with T).

    δ: the compressor's own for a contractive one; 1/(ω+1) for an unbiased one scaled by
    1/(ω+1); 1 − ω for an unscaled one with ω < 1. Without error feedback: `sgd`'s theorem
    for an unbiased compressor, none for a biased one.
    """
    if not error_feedback:
        if omega is None:
            return no_theorem("compressed SGD with a biased compressor and no error feedback "
                              "can diverge")
        return sgd.theorem(c, workers=workers, batch_size=batch_size, omega=omega, lr=lr)
    if omega is None and delta is None:
        return no_theorem("the compressor declares no δ (a low-rank code such as PowerSGD: "
                          "docs/theory.md §12 proves no contraction for it)")
    d = contraction_delta(omega, delta, scale_unbiased=scale_unbiased)
    if d is None or not d > 0:
        return no_theorem(f"an unscaled unbiased compressor with ω={omega} ≥ 1 is not "
                          "contractive; set algorithm.scale_unbiased=true")
    lr_max = d / (EF_CONSTANT * c["L"] * (NOISE_M + 1.0))
    gamma = lr_max if lr is None else lr
    rate = 1.0 - gamma * c["mu"] if gamma <= lr_max else None
    return Theorem(lr_max, rate, None, "subopt", "docs/theory.md §3 (EF-SGD, c=12 [M])")
