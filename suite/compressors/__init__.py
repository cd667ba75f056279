"""Compressors: one module each, all built through `build_compressor(name, **hyperparams)`.

Every option is an entry point of the group `commsgd.compressors` (suite/plugins.py), the
suite's own in its pyproject.toml, naming a factory that returns a stateless `Compressor`
(suite/compressors/base.py; the channel adapts it, suite/comm/adapter.py) or a scheme of its
own (`suite.comm.Uplink`: state, its own collective and aggregate).
"""

from __future__ import annotations

from suite.errors import PluginError
from suite.plugins import COMPRESSORS as REGISTRY

from .base import Compressor, CompressorError


def build_compressor(name: str, **hyperparams):
    """The compressor option `name` built from its hyper-parameters: a Compressor or an
    Uplink scheme."""
    from suite.comm.protocol import Uplink

    if name not in REGISTRY:
        raise CompressorError(
            f"compressor={name!r} is not known; allowed: {REGISTRY.allowed()}"
        )
    made = REGISTRY[name](**hyperparams)
    if not isinstance(made, (Compressor, Uplink)):
        raise PluginError(
            f"compressor plugin {name!r} ({REGISTRY.entry(name).describe()}) returned a "
            f"{type(made).__name__}; a compressor factory returns a "
            f"suite.compressors.Compressor or a suite.comm.Uplink")
    return made


def of_kind(kind: str) -> list[str]:
    """The compressors that are of this kind at their default hyper-parameters."""
    out = []
    for name in REGISTRY:
        try:
            if build_compressor(name).kind == kind:
                out.append(name)
        except Exception:  # noqa: S112 - a plugin needing a key: not a suggestion
            continue
    return out


__all__ = ["Compressor", "CompressorError", "REGISTRY", "build_compressor", "of_kind"]
