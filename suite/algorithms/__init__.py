"""Algorithms: one module per family, each with its update rule and its theorem.

Adding an algorithm is one module exposing `build(ctx, **hyper)` and `theorem(constants, ...)`
plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import delayed, diana, ef_sgd, local_sgd, sgd
from .base import Algorithm, ConfigurationError, Context, Theorem


class AlgorithmSpec(NamedTuple):
    build: Callable[..., Algorithm]
    theorem: Callable[..., Theorem]
    # which compressor kinds the algorithm's analysis admits
    compressor_kinds: tuple[str, ...] = ("unbiased", "contractive")
    # the compressor the algorithm group's YAML selects by default (documentation only)
    default_compressor: str = "identity"
    full_gradients_only: bool = False


REGISTRY: dict[str, AlgorithmSpec] = {
    # compressed SGD runs with any compressor (its theorem only covers unbiased ones)
    "sgd": AlgorithmSpec(sgd.build, sgd.theorem, ("unbiased", "contractive", "biased")),
    "qsgd": AlgorithmSpec(sgd.build, sgd.theorem, ("unbiased",), "qsgd"),
    # TernGrad with its paper's clipping (compressor.clip) is biased; it runs, without a theorem
    "terngrad": AlgorithmSpec(sgd.build, sgd.theorem, ("unbiased", "biased"), "terngrad"),
    "dqgd": AlgorithmSpec(sgd.build, sgd.theorem, ("unbiased",), "quant_p",
                          full_gradients_only=True),
    # any compressor; the YAML keeps identity (select one: compressor=topk, sign, ...)
    "ef_sgd": AlgorithmSpec(ef_sgd.build, ef_sgd.theorem, ("unbiased", "contractive")),
    # the delay analysis is for exact messages; an unbiased compressor only adds variance
    "delayed_sgd": AlgorithmSpec(delayed.build, delayed.theorem, ("unbiased",)),
    "local_sgd": AlgorithmSpec(local_sgd.build, local_sgd.theorem, ("unbiased",)),
    "diana": AlgorithmSpec(diana.build, diana.theorem, ("unbiased",), "quant_p"),
}


def get_spec(name: str) -> AlgorithmSpec:
    if name not in REGISTRY:
        raise ConfigurationError(
            f"algorithm={name!r} is not known; allowed: {', '.join(sorted(REGISTRY))}"
        )
    return REGISTRY[name]


def build_algorithm(name: str, ctx: Context, **hyper) -> Algorithm:
    spec = get_spec(name)
    compressor = ctx.channel.compressor
    if compressor.kind not in spec.compressor_kinds:
        settings = ", ".join(f"{k}={v}" for k, v in compressor.hyperparams if v is not None)
        raise ConfigurationError(
            f"algorithm={name} needs an {' or '.join(spec.compressor_kinds)} compressor; "
            f"compressor={compressor.name}{f' ({settings})' if settings else ''} is "
            f"{compressor.kind}. Use an unbiased compressor "
            f"(identity, qsgd, terngrad without clip, quant_p, randk with scaled=true, natural) "
            f"or an algorithm that accepts {compressor.kind} ones ("
            + ", ".join(n for n, s in REGISTRY.items() if compressor.kind in s.compressor_kinds)
            + ")"
        )
    if spec.full_gradients_only and ctx.batch_size is not None:
        raise ConfigurationError(
            f"algorithm={name} is defined with full local gradients; batch_size="
            f"{ctx.batch_size} is not allowed: set batch_size=full"
        )
    return spec.build(ctx, **hyper)


__all__ = ["Algorithm", "AlgorithmSpec", "ConfigurationError", "Context", "Theorem",
           "REGISTRY", "build_algorithm", "get_spec"]
