"""The compressor interface.

A compressor is a small frozen record of pure functions, in the spirit of optax's gradient
transformations: a factory closes over the hyper-parameters and returns a `Compressor`. It
holds no state; randomness arrives as explicit per-worker generators (`suite.rng.WorkerStreams`).

Every function works on a batch [w, d], one message per worker row:

    payload = c.compress(x, streams)          # x: [w, d]; payload: a NamedTuple of [w, ...] tensors
    y       = c.decompress(payload)           # [w, d], in x's dtype: what the receiver reconstructs
    msgs    = c.encode(payload)               # list of w `bytes`, the bit-packed wire format
    payload = c.decode(msgs, d, dtype, device)
    bits    = c.bits(payload)                 # [w] int64: exact encoded size in bits

`len(msgs[k]) == ceil(bits[k] / 8)`: the wire format has no header beyond what `bits` counts
(the receiver knows d and the compressor's hyper-parameters from the run's config). Every message
is a run of little-endian float32 scalars (norms, scales, kept values) followed by one bit-packed
run of equal-width unsigned fields, most significant bit first (`bitpack.py`); the last byte is
zero-padded, and that padding is the only difference between `8·len(msg)` and `bits`.

Wire precision. Scales travel as float32, so `decompress` reconstructs from the float32 scale
(computed in float32, or float64 for float64 inputs, then cast to the input dtype): what the
simulation continues from is exactly what a receiver would rebuild, and
`decompress(decode(encode(p), ...)) == decompress(p)` bit for bit. Scales that set Bernoulli
probabilities are rounded *up* to float32, so probabilities stay ≤ 1 and unbiasedness survives
the rounding.

Dimension checks. `check_dim(d)`, where a compressor has one, refuses a task dimension its
hyper-parameters cannot serve (e.g. top-k with k > d). The runner calls it once before the run;
`compress` calls it too, so a direct call cannot slip past it.

Classes (docs/theory.md §1):
- unbiased, U(ω):      E C(x) = x,  E‖C(x) − x‖² ≤ ω(d)·‖x‖²
- contractive, C(δ):   E‖C(x) − x‖² ≤ (1 − δ(d))·‖x‖²
- biased:              neither (TernGrad with clipping: unbiased for clip(x), not for x)
A compressor's kind may depend on its hyper-parameters; the algorithms admit kinds, not names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from suite.errors import CompressorError, MessageRangeError

Kind = Literal["unbiased", "contractive", "biased"]


@dataclass(frozen=True)
class Compressor:
    name: str
    kind: Kind
    # ω(d) for the unbiased class, δ(d) for the contractive class; the other is None. A biased
    # compressor that is unbiased for a transform of x (TernGrad's clip) may keep the ω of its
    # variance around that mean; nothing uses it as U(ω), since its kind says otherwise.
    omega: Callable[[int], float] | None
    delta: Callable[[int], float] | None
    compress: Callable[..., Any]
    decompress: Callable[[Any], torch.Tensor]
    encode: Callable[[Any], list]
    decode: Callable[..., Any]
    bits: Callable[[Any], torch.Tensor]
    # A second, entropy-coded size where the compressor has one (QSGD's Elias coding).
    entropy_bits: Callable[[Any], torch.Tensor] | None = None
    # Where every message has the same size whatever it holds: that size in bits for a
    # dimension d, equal to `bits(payload)[k]` for every payload. The channel then counts it
    # without reading the payload.
    fixed_bits: Callable[[int], int] | None = None
    # TernGrad shares its scale (the max-norm) across workers: the backend computes
    # max over all workers of `local_scale(x)` and passes it to compress(..., scale=).
    local_scale: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Set where the declared constant depends on the data rather than on d alone.
    data_dependent: str | None = None
    # Refuses a dimension the hyper-parameters cannot serve; raises CompressorError naming
    # the key, its value and the allowed range. The runner calls it once with the task's d.
    check_dim: Callable[[int], None] | None = None
    is_identity: bool = False
    hyperparams: tuple = ()

    @property
    def unbiased(self) -> bool:
        return self.kind == "unbiased"

    @property
    def needs_shared_scale(self) -> bool:
        return self.local_scale is not None

    def roundtrip(self, x: torch.Tensor, streams, scale: torch.Tensor | None = None):
        """compress → decompress, returning (decoded [w, d], bits [w])."""
        payload = self.compress(x, streams, scale) if self.needs_shared_scale else self.compress(
            x, streams
        )
        return self.decompress(payload), self.bits(payload)


def check_batch(x: torch.Tensor, name: str) -> None:
    """Refuse what is not a floating-point [workers, d] batch."""
    if x.dim() != 2:
        raise CompressorError(f"{name}: expected a [workers, d] batch, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise CompressorError(f"{name}: expected a floating-point batch, got dtype {x.dtype}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Refuse NaN/inf input: a compressed NaN would silently poison every worker's model."""
    check_batch(x, name)
    if not all_finite(x):
        raise MessageRangeError(f"{name}: input holds NaN or inf; refusing to compress it")


def all_finite(x: torch.Tensor) -> bool:
    """Whether x holds no NaN or ±inf.

    Fast path: one reduction and no temporary (isfinite(x) would allocate a mask as large as
    x). NaN or ±inf anywhere makes the sum NaN or ±inf; a finite x does so only when the sum
    overflows, and then the exact check decides.
    """
    return math.isfinite(x.sum().item()) or bool(torch.isfinite(x).all())
