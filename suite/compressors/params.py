"""Hyper-parameter checks shared by the compressor factories.

Every refusal names the key as the user wrote it (`compressor.<key>`), the value and the allowed
range, in the torch.optim style: checked once, when the factory runs, not deep inside a step.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .base import CompressorError


def _is_int(v) -> bool:
    # bool is an Integral in Python; `levels: true` in a YAML is a mistake, not the number 1.
    return isinstance(v, Integral) and not isinstance(v, bool)


def require_int(key: str, value, lo: int, hi: int | None = None) -> int:
    """An integer lo <= value <= hi (hi None: no upper bound)."""
    upper = "" if hi is None else f" <= {hi}"
    if not _is_int(value) or value < lo or (hi is not None and value > hi):
        raise CompressorError(
            f"compressor.{key}={value!r}: allowed an integer {lo} <= {key}{upper}"
        )
    return int(value)


def optional_int(key: str, value, lo: int) -> int | None:
    """null, or an integer >= lo (bucket and block sizes: null means one bucket/block)."""
    if value is None:
        return None
    if not _is_int(value) or value < lo:
        raise CompressorError(
            f"compressor.{key}={value!r}: allowed null (one {key.split('_')[0]}) "
            f"or an integer {key} >= {lo}"
        )
    return int(value)


def k_or_ratio(k, ratio) -> tuple[int | None, float | None]:
    """Exactly one of k (an integer >= 1) and ratio (a float in (0, 1]) is set."""
    if (k is None) == (ratio is None):
        raise CompressorError(
            f"compressor.k={k!r}, compressor.ratio={ratio!r}: set exactly one of them and the "
            "other to null (e.g. `compressor.k=10 compressor.ratio=null`)"
        )
    if k is not None:
        return require_int("k", k, 1), None
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 < ratio <= 1:
        raise CompressorError(f"compressor.ratio={ratio!r}: allowed 0 < ratio <= 1")
    return None, float(ratio)


def resolve_k(k: int | None, ratio: float | None, d: int) -> int:
    """The number of kept coordinates for dimension d; refuses k > d.

    From a ratio: the nearest integer to ratio·d, at least 1 (nearest rather than ceil, so that
    ratio=0.1, d=30 gives 3 and not 4 through 0.1·30 = 3.0000000000000004).
    """
    require_dim(d)
    if k is None:
        return min(d, max(1, math.floor(ratio * d + 0.5)))
    if k > d:
        raise CompressorError(f"compressor.k={k} exceeds d={d}; allowed 1 <= k <= d")
    return k


def require_dim(d: int) -> int:
    if not _is_int(d) or d < 1:
        raise CompressorError(f"dimension d={d!r}: compressors need an integer d >= 1")
    return int(d)


def parse_p(p) -> float:
    """DIANA's norm order: 1, 2 or inf (the YAML string "inf" and float('inf') both accepted)."""
    if isinstance(p, str) and p.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    if not isinstance(p, bool) and isinstance(p, Real) and float(p) in (1.0, 2.0, math.inf):
        return float(p)
    raise CompressorError(f"compressor.p={p!r}: allowed values are 1, 2, inf")


def optional_positive_float(key: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
        raise CompressorError(
            f"compressor.{key}={value!r}: allowed null (off) or a finite float {key} > 0"
        )
    return float(value)


def require_bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise CompressorError(f"compressor.{key}={value!r}: allowed true or false")
    return value
