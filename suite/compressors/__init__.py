"""Compressors: one module each, all built through `build_compressor(name, **hyperparams)`."""

from __future__ import annotations

from .base import Compressor, CompressorError
from .identity import identity

# name -> factory(**hyperparams). Adding a compressor is one module plus one line here.
REGISTRY = {
    "identity": identity,
}


def build_compressor(name: str, **hyperparams) -> Compressor:
    if name not in REGISTRY:
        raise CompressorError(
            f"compressor={name!r} is not known; allowed: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name](**hyperparams)


__all__ = ["Compressor", "CompressorError", "REGISTRY", "build_compressor"]
