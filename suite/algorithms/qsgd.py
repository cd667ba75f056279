"""QSGD (Alistarh, Grubic, Li, Tomioka & Vojnovic, NeurIPS 2017): parallel SGD with the QSGD
quantizer and no error feedback, i.e. `sgd` (suite/algorithms/sgd.py) with an unbiased
compressor, QSGD's own by default (docs/theory.md §6)."""

from .sgd import build, theorem

COMPRESSOR_KINDS = ("unbiased",)
DEFAULT_COMPRESSOR = "qsgd"

__all__ = ["build", "theorem", "COMPRESSOR_KINDS", "DEFAULT_COMPRESSOR"]
