"""Schemes written against the protocol (suite/comm/protocol.py) that no stateless compressor
can express, used by tests/test_protocol.py to prove it; each is a real scheme with exact bits.

- `shared_randk(k)`: rand-k with a seed shared by all workers. Every worker keeps the same k
  coordinates, drawn from `link.shared` (identical on every rank), so no indices are sent
  (32k bits per worker) and the code is linear: the server's aggregate is one all-reduce of
  the [w, k] kept values, not a gather of messages.
- `majority_vote()`: signSGD with majority vote (Bernstein et al., ICLR 2019,
  arXiv:1810.05291): each worker sends sign(x) (1 bit per coordinate, 0 sent as +), and the
  aggregate is the sign of the sum of the K signs, not their mean: a custom aggregate over the
  gathered messages.
- `error_feedback(c)`: a compressor with an error memory inside the scheme (EF, Stich &
  Karimireddy 2019): per-worker state e [w, d], p = e + x, send C(p), e ← p − C(p). Stateful,
  so it proves that state is initialised per held worker, saved, and identical across layouts.
- `shifted_downlink(c)`: a compressed down-link with a shift h [d] kept identically on every
  rank: the server sends C(v − h) and every worker reconstructs h + C(v − h), which becomes the
  next shift (the shifted compression of EF21-P, Gruntkowska et al. 2023, without its model
  step).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from suite.comm import STATELESS, CommState, Downlink, Received, Sent, Uplink, stateless
from suite.compressors import bitpack


def shared_randk(k: int) -> Uplink:
    """Scaled rand-k, unbiased with ω = d/k − 1 for each worker's message (the K messages
    share their coordinates, so their errors are not independent)."""

    def up(x, state, link):
        w, d = x.shape
        u = link.shared.common_uniform(d, dtype=torch.float64)
        idx = torch.topk(u, k, largest=False, sorted=False).indices
        # float32 on the wire, the simulation continues from what the receiver rebuilds
        values = x[:, idx].to(torch.float32).to(x.dtype) * (d / k)
        own = x.new_zeros(w, d)
        own[:, idx] = values
        aggregate = x.new_zeros(d)
        aggregate[idx] = link.all_reduce(values, "mean")
        return Sent(own, aggregate, state, 32 * k)

    return Uplink(name="shared_randk", kind="unbiased", omega=lambda d: d / k - 1.0,
                  delta=None, init=stateless, up=up, hyperparams=(("k", k),))


class _Signs(NamedTuple):
    negative: torch.Tensor  # [w, d] bool
    out_dtype: torch.dtype


class _SignCodec:
    """The 1-bit wire format of `majority_vote`, as `link.gather` wants it."""

    @staticmethod
    def encode(p: _Signs) -> list[bytes]:
        return bitpack.join_rows(bitpack.pack_fields(p.negative, 1))

    @staticmethod
    def decode(msgs, d, dtype, device="cpu") -> _Signs:
        (body,) = bitpack.split_rows(msgs, [bitpack.packed_nbytes(d, 1)])
        negative = torch.from_numpy(bitpack.unpack_fields(body, d, 1).view(np.bool_))
        return _Signs(negative.to(device), dtype)

    @staticmethod
    def decompress(p: _Signs) -> torch.Tensor:
        return 1.0 - 2.0 * p.negative.to(p.out_dtype)


def majority_vote() -> Uplink:
    def up(x, state, link):
        payload = _Signs(x < 0, x.dtype)
        own = _SignCodec.decompress(payload)
        everyone = link.gather(_SignCodec, payload, own)  # [K, d] of ±1
        return Sent(own, torch.sign(everyone.sum(0)), state, x.shape[1])

    return Uplink(name="majority_vote", kind="sign", omega=None, delta=None, init=stateless,
                  up=up)


class ErrorMemory(NamedTuple):
    e: torch.Tensor  # [w, d]


def error_feedback(c) -> Uplink:
    def init(env):
        return CommState(ErrorMemory(torch.zeros(len(env.worker_ids), env.d, dtype=env.dtype,
                                                 device=env.device)), ())

    def up(x, state, link):
        p = state.workers.e + x
        payload = c.compress(p, link.streams)
        own = c.decompress(payload)
        aggregate = link.gather(c, payload, own).mean(0)
        bits = c.fixed_bits(x.shape[1]) if c.fixed_bits is not None else c.bits(payload)
        return Sent(own, aggregate, CommState(ErrorMemory(p - own), ()), bits)

    return Uplink(name=f"ef_{c.name}", kind="contractive", omega=None, delta=c.delta,
                  init=init, up=up, compressor=None)


def ef_topk(*, k: int = 2) -> Uplink:
    """`error_feedback` of top-k as a compressor option's factory (keyword hyper-parameters)."""
    from suite.compressors import build_compressor

    return error_feedback(build_compressor("topk", k=k, ratio=None))


class Shift(NamedTuple):
    h: torch.Tensor  # [d]


def shifted_downlink(c) -> Downlink:
    def init(env):
        return CommState((), Shift(torch.zeros(env.d, dtype=env.dtype, device=env.device)))

    def down(v, state, link):
        h = state.server.h
        payload = c.compress((v - h).reshape(1, -1), link.server)
        value = h + c.decompress(payload)[0]
        return Received(value, CommState((), Shift(value)), int(c.bits(payload)[0]))

    return Downlink(name=f"shifted_{c.name}", kind="contractive", omega=None, delta=c.delta,
                    init=init, down=down)


__all__ = ["shared_randk", "majority_vote", "error_feedback", "ef_topk", "shifted_downlink",
           "STATELESS"]
