"""Compressors: one module each, all built through `build_compressor(name, **hyperparams)`."""

from __future__ import annotations

from .base import Compressor, CompressorError
from .identity import identity
from .natural import natural
from .qsgd import qsgd
from .quant_p import quant_p
from .randk import randk
from .sign import sign
from .terngrad import terngrad
from .topk import topk

# name -> factory(**hyperparams). Adding a compressor is one module plus one line here.
REGISTRY = {
    "identity": identity,
    "qsgd": qsgd,
    "terngrad": terngrad,
    "quant_p": quant_p,
    "topk": topk,
    "randk": randk,
    "sign": sign,
    "natural": natural,
}


def build_compressor(name: str, **hyperparams) -> Compressor:
    if name not in REGISTRY:
        raise CompressorError(
            f"compressor={name!r} is not known; allowed: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name](**hyperparams)


__all__ = ["Compressor", "CompressorError", "REGISTRY", "build_compressor"]
