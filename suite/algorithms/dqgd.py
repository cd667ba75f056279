"""DQGD (Khirirat, Feyzmahdavian & Johansson 2018): gradient descent with full local gradients,
quantized messages and a fixed step, i.e. `sgd` (suite/algorithms/sgd.py) with batch_size=full
and an unbiased compressor, DIANA's p-norm quantizer by default (docs/theory.md §6)."""

from .sgd import build, theorem

COMPRESSOR_KINDS = ("unbiased",)
DEFAULT_COMPRESSOR = "quant_p"
FULL_GRADIENTS_ONLY = True

__all__ = ["build", "theorem", "COMPRESSOR_KINDS", "DEFAULT_COMPRESSOR", "FULL_GRADIENTS_ONLY"]
