"""The `downlink` config group: the server-to-worker broadcast as a compressor option.

`downlink=<compressor>` takes any compressor option (the `compressor` group's registry, with
its keys under `downlink.`) and turns it into the run's `Downlink` (suite/comm/protocol.py):

- `identity` (the default, `downlink.width: 32`): the uncompressed broadcast at that float
  width, `width·d` bits: exactly the broadcast every algorithm had before the group existed;
- an unbiased compressor Q ∈ U(ω): the broadcast Q(v), one compressed message that every
  worker decodes alike (`downlink_of`, with the server's stream `link.server`);
- a contractive compressor C ∈ C(δ): EF21-P (Gruntkowska, Tyurin & Richtárik, "EF21-P and
  Friends: Improved Theoretical Communication Complexity for Distributed Optimization with
  Bidirectional Compression", ICML 2023, arXiv:2209.15218), `ef21p_downlink` below.

EF21-P. The server keeps the true model x; the workers keep a shifted model w, at which they
compute their gradients, and the server sends the compressed difference:

    x_{t+1} = x_t − u_t,    w_{t+1} = w_t + C(x_{t+1} − w_t),    w_0 = x_0.

Every algorithm here broadcasts an increment v_t that the workers integrate (a mean gradient
that they multiply by γ, an EF step, Local SGD's mean progress, a server optimizer's step). In
increments, EF21-P is error feedback at the server: with e_t = (x_t − w_t) in the broadcast's
units (e_0 = 0),

    sent_t = C(e_t + v_t),    e_{t+1} = e_t + v_t − sent_t,

and the workers receive sent_t in place of v_t. Then x_t − w_t = e_t exactly for an integrated
increment (Local SGD's progress, FedAvg's server step), and = γ·e_t for a gradient broadcast
with a constant step γ and a positively homogeneous C (top-k, rand-k, scaled sign:
C(γz) = γC(z)); docs/theory.md §14 has the derivation and the theorem. The memory e [d] is the
scheme's `state.server`: every rank keeps the same one, so checkpoints save it and every
process layout broadcasts the same vector. Unlike the shifted broadcast h + C(v − h) (EF21 on
the broadcast vector, tests/comm_schemes.py), the error of the integrated model does not
accumulate: whatever C drops now is sent later.

Bits: the encoded size of the one message per broadcast (`c.fixed_bits(d)` or `c.bits`), which
every worker receives: `comm/bits_down` adds it per worker.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from suite.errors import ConfigError

from .adapter import dense_downlink, downlink_of
from .protocol import CommState, Downlink, Received, Uplink

DEFAULT = {"name": "identity", "width": 32}  # conf/downlink/identity.yaml


class ServerMemory(NamedTuple):
    e: torch.Tensor  # [d]: what the workers' model still misses of the server's


def ef21p_downlink(c) -> Downlink:
    """EF21-P's compressed broadcast with a contractive compressor `c` (module docstring)."""
    fixed = c.fixed_bits

    def init(env):
        return CommState((), ServerMemory(torch.zeros(env.d, dtype=env.dtype,
                                                      device=env.device)))

    def down(v, state, link):
        p = state.server.e + v
        payload = c.compress(p.reshape(1, -1), link.server)
        value = c.decompress(payload)[0]
        bits = fixed(v.numel()) if fixed is not None else int(c.bits(payload)[0])
        return Received(value, CommState((), ServerMemory(p - value)), bits)

    return Downlink(name=f"ef21p_{c.name}", kind=c.kind, omega=c.omega, delta=c.delta,
                    init=init, down=down, check_dim=c.check_dim, hyperparams=c.hyperparams,
                    compressor=c)


def downlink_scheme(c, name: str) -> Downlink:
    """The run's Downlink for the `downlink=<name>` option's built compressor `c`."""
    if isinstance(c, Uplink):
        raise ConfigError(
            f"downlink={name}: this option is an up-link scheme (its own collective and "
            f"aggregate), not a compressor of one vector; use a compressor option "
            f"(identity, topk, randk, qsgd, ...)")
    if c.is_identity:
        return dense_downlink(dict(c.hyperparams)["width"])
    if c.kind == "contractive":
        return ef21p_downlink(c)
    return downlink_of(c)


def is_dense(downlink: Downlink) -> bool:
    """The uncompressed broadcast (any float width), for which the algorithms' own theorems
    hold as stated."""
    return downlink.compressor is None and downlink.name == "dense"


__all__ = ["DEFAULT", "ServerMemory", "ef21p_downlink", "downlink_scheme", "is_dense"]
