"""A run's theorem when its server-to-worker broadcast is compressed (`downlink=<compressor>`).

The algorithms' own theorems assume the uncompressed broadcast. With a compressed one
(suite/comm/downlinks.py) the run's theorem is the one below where docs/theory.md §14 derives
one, and none elsewhere (lr=theory is then refused with the reason):

- SGD with an uncompressed up-link (ω = 0) and no momentum, contractive down-link C ∈ C(δ)
  through EF21-P (Gruntkowska, Tyurin & Richtárik, ICML 2023, arXiv:2209.15218) [D]: for
  γ ≤ δ/(8L), with Ψ_t = ‖x_t − x*‖² + (12Lγ/δ)‖x_t − w_t‖² (x the server's model, w the
  workers'), E Ψ_t ≤ (1 − γμ/2)^t r0 + F with F = 2γσ̄²(1 + 12Lγ/δ)/μ, σ̄² = σ²/(bK); the
  workers' model, which the run evaluates, has E‖w − x*‖² ≤ 3F asymptotically.
- SGD as above with an unbiased down-link Q ∈ U(ω_d) [D]: for γ ≤ 1/(L(1 + ω_d)),
  E‖w_t − x*‖² ≤ (1 − γμ)^t r0 + γ(1 + ω_d)σ̄²/μ.

`run_theorem` is what the runner (lr=theory, the theorem it logs) and the analysis package
(the prediction beside the measured rate) both call, so nothing is written twice.
"""

from __future__ import annotations

from typing import NamedTuple

from . import sgd
from .base import Theorem
from .common import no_theorem, sigma_sq

# The constants of the derivation in docs/theory.md §14: γ ≤ δ/(EF21P_STEP·L), Lyapunov
# weight EF21P_WEIGHT·Lγ/δ, and the workers' model floor EF21P_FLOOR × the Lyapunov floor.
EF21P_STEP, EF21P_WEIGHT, EF21P_FLOOR = 8.0, 12.0, 3.0


class DownlinkConstants(NamedTuple):
    """What a theorem needs of a compressed down-link."""

    name: str  # the compressor option
    kind: str  # unbiased | contractive
    omega: float | None
    delta: float | None


def downlink_constants(name: str, hyper: dict, d: int) -> DownlinkConstants | None:
    """The down-link option `name` with keys `hyper` at dimension d, or None for the
    uncompressed (identity) broadcast."""
    from suite.compressors import build_compressor

    c = build_compressor(name, **hyper)
    if getattr(c, "is_identity", False):
        return None
    return DownlinkConstants(name, c.kind, c.omega(d) if c.kind == "unbiased" else None,
                             c.delta(d) if c.delta is not None else None)


def run_theorem(spec, constants: dict, *, downlink: DownlinkConstants | None = None,
                **kwargs) -> Theorem:
    """The theorem of a run of algorithm `spec` (an AlgorithmSpec): its own when the
    broadcast is uncompressed, docs/theory.md §14's for a compressed one."""
    if downlink is None:
        return spec.theorem(constants, **kwargs)
    return with_compressed_downlink(spec, constants, downlink, **kwargs)


def with_compressed_downlink(spec, c: dict, down: DownlinkConstants, *, workers: int,
                             batch_size: int | None, omega: float | None = 0.0,
                             lr: float | None = None, momentum: float = 0.0, **_) -> Theorem:
    """docs/theory.md §14: SGD (an uncompressed up-link, no momentum) with a compressed
    down-link; no theorem for any other combination."""
    if spec.theorem is not sgd.theorem or omega != 0.0 or momentum:
        return no_theorem(f"downlink={down.name}: docs/theory.md §14 bounds SGD with an "
                          "uncompressed up-link and no momentum only")
    noise = sigma_sq(c, batch_size) / workers  # σ̄² = σ²/(bK); 0 with full gradients
    L, mu = c["L"], c["mu"]
    source = f"docs/theory.md §14 (SGD, downlink={down.name}"
    if down.kind == "contractive":
        delta = down.delta
        lr_max = delta / (EF21P_STEP * L)
        gamma = lr_max if lr is None else lr
        if gamma > lr_max:
            return Theorem(lr_max, None, None, "dist_sq", source + ", EF21-P)")
        weight = EF21P_WEIGHT * L * gamma / delta
        floor = EF21P_FLOOR * 2.0 * gamma * noise * (1.0 + weight) / mu
        return Theorem(lr_max, 1.0 - gamma * mu / 2.0, floor, "dist_sq", source + ", EF21-P)")
    if down.kind == "unbiased":
        lr_max = 1.0 / (L * (1.0 + down.omega))
        gamma = lr_max if lr is None else lr
        if gamma > lr_max:
            return Theorem(lr_max, None, None, "dist_sq", source + ")")
        return Theorem(lr_max, 1.0 - gamma * mu, gamma * (1.0 + down.omega) * noise / mu,
                       "dist_sq", source + ")")
    return no_theorem(f"downlink={down.name} is of kind {down.kind!r}: neither unbiased nor "
                      "contractive")


__all__ = ["DownlinkConstants", "downlink_constants", "run_theorem",
           "with_compressed_downlink"]
