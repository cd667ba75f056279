"""TernGrad (Wen, Xu, Yan, Wu, Wang, Chen & Li, NeurIPS 2017): parallel SGD with ternary
messages whose scale is shared across workers, i.e. `sgd` (suite/algorithms/sgd.py) with an
unbiased compressor, the TernGrad compressor by default (docs/theory.md §6)."""

from .sgd import build, theorem

# TernGrad with its paper's clipping (compressor.clip) is biased; it runs, without a theorem
COMPRESSOR_KINDS = ("unbiased", "biased")
DEFAULT_COMPRESSOR = "terngrad"

__all__ = ["build", "theorem", "COMPRESSOR_KINDS", "DEFAULT_COMPRESSOR"]
