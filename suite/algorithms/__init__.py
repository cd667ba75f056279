"""Algorithms: one module per algorithm, each with its update rule and its theorem.

Every option is an entry point of the group `commsgd.algorithms` (suite/plugins.py), the
suite's own in its pyproject.toml: adding an algorithm is one module exposing
`build(ctx, **hyper)` and, optionally, `theorem(constants, ...)`, plus one entry point; its
config node (`algorithm=<name>` and its keys) is generated from build's keyword arguments.
"""

from __future__ import annotations

from suite.plugins import ALGORITHMS as REGISTRY

from .base import Algorithm, AlgorithmSpec, ConfigurationError, Context, Theorem


def get_spec(name: str) -> AlgorithmSpec:
    if name not in REGISTRY:
        raise ConfigurationError(
            f"algorithm={name!r} is not known; allowed: {REGISTRY.allowed()}")
    return REGISTRY[name]


def admitting(kind: str) -> list[str]:
    """The algorithms whose analysis admits a compressor of this kind."""
    return [name for name in REGISTRY if kind in REGISTRY[name].compressor_kinds]


def _non_default(compressor) -> list[tuple[str, object]]:
    """The compressor's hyper-parameters that differ from its factory's defaults: the ones
    that may have decided its kind (TernGrad's clip), worth naming in a refusal."""
    import inspect

    from suite.compressors import REGISTRY as COMPRESSORS

    try:
        params = inspect.signature(COMPRESSORS[compressor.name]).parameters
    except Exception:  # noqa: BLE001 - not a registered factory: name every set value
        return [(k, v) for k, v in compressor.hyperparams if v is not None]
    return [(k, v) for k, v in compressor.hyperparams
            if k not in params or params[k].default != v]


def build_algorithm(name: str, ctx: Context, **hyper) -> Algorithm:
    spec = get_spec(name)
    compressor = ctx.channel.compressor
    if compressor.kind not in spec.compressor_kinds:
        from suite.compressors import of_kind

        wanted = " or ".join(spec.compressor_kinds)
        suggestions = sorted({c for kind in spec.compressor_kinds for c in of_kind(kind)})
        settings = ", ".join(f"{k}={v}" for k, v in _non_default(compressor))
        raise ConfigurationError(
            f"algorithm={name} needs an {wanted} compressor; "
            f"compressor={compressor.name}{f' ({settings})' if settings else ''} is "
            f"{compressor.kind}. Use an {wanted} compressor ({', '.join(suggestions)}, at their "
            f"defaults) or an algorithm that accepts {compressor.kind} ones "
            f"({', '.join(admitting(compressor.kind)) or 'none is registered'})"
        )
    if spec.full_gradients_only and ctx.batch_size is not None:
        raise ConfigurationError(
            f"algorithm={name} is defined with full local gradients; batch_size="
            f"{ctx.batch_size} is not allowed: set batch_size=full"
        )
    return spec.build(ctx, **hyper)


__all__ = ["Algorithm", "AlgorithmSpec", "ConfigurationError", "Context", "Theorem",
           "REGISTRY", "admitting", "build_algorithm", "get_spec"]
