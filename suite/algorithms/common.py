"""Small helpers shared by the algorithm modules: noise levels, the contraction constant, and the
"no theorem" marker.

The runner resolves `lr=theory` from `theorem(...).lr_max`. Where no theorem covers a
configuration (a biased compressor without error feedback, for example), the theorem function
returns `no_theorem(...)`: its `lr_max` is NaN, and the algorithm's step refuses a NaN step size
with the reason (`check_lr`). A numeric `lr` still runs. Raising inside `theorem()` instead would
also refuse numeric step sizes, because the runner evaluates the theorem once without `lr`
before it knows whether `lr` is a number.
"""

from __future__ import annotations

import math

from .base import ConfigurationError, Theorem


def sigma_sq(constants: dict, batch_size: int | None) -> float:
    """Per-worker minibatch variance at x*: σ²/b, or 0 with full local gradients (b = None)."""
    return 0.0 if batch_size is None else constants["sigma_sq"] / batch_size


def no_theorem(reason: str) -> Theorem:
    """A Theorem that admits no step size: lr=theory becomes NaN and the step refuses it."""
    return Theorem(math.nan, None, None, "subopt", f"no theorem: {reason}")


def theorem_missing(name: str):
    """The theorem of an algorithm module that declares none: no step size for lr=theory,
    and the report's theory table says why."""

    def theorem(constants: dict, **_) -> Theorem:
        return no_theorem(f"algorithm={name} declares no theorem")

    return theorem


def check_lr(lr: float, name: str, why: str) -> None:
    """Refuse a NaN step size (lr=theory where no theorem applies), saying why."""
    if isinstance(lr, float) and math.isnan(lr):
        raise ConfigurationError(
            f"algorithm={name}: lr=theory, but no theorem admits a step size here ({why}); "
            f"set lr to a number"
        )


def contraction_delta(omega: float | None, delta: float | None, *, scale_unbiased: bool
                      ) -> float | None:
    """δ of the compressor as error feedback sees it (docs/theory.md §1).

    - contractive C(δ): δ;
    - unbiased U(ω), scaled by 1/(ω+1): δ = 1/(ω+1);
    - unbiased U(ω), unscaled: E‖Q(x) − x‖² ≤ ω‖x‖² = (1 − (1 − ω))‖x‖², so δ = 1 − ω when
      ω < 1 and no contraction (None) otherwise.
    """
    if omega is not None:
        if scale_unbiased:
            return 1.0 / (omega + 1.0)
        return 1.0 - omega if omega < 1.0 else None
    return delta
