"""The one adapter from a stateless `Compressor` (suite/compressors/base.py) to the protocol.

Up-link, `uplink_of(c)`: every held worker compresses its row with its own stream; the server
receives every worker's decoded message and takes their mean. The collective is today's:

- the identity compressor's dense messages are all-reduced (hardware.dense_collective=
  all_reduce, the default; in one process that is the mean over the worker axis);
- every other message, and identity with dense_collective=all_gather, travels as the
  compressor's encoded bytes (`link.gather`), and the mean is taken over the same [K, d]
  decoded tensor in every process layout, so it is bit-for-bit the simulated one;
- TernGrad's shared scale (`c.local_scale`) is the max over all workers of each worker's own
  scale, one small all-reduce (MAX, exact) before compressing; its 32 bits are inside every
  message's count already, so the collective is not counted as message bytes;
- in a round of partial participation (`link.sample`, suite/comm/participation.py) only the
  sampled workers send: the others' messages are empty and cost 0 bits, and the aggregate is
  the mean of the m sampled messages (all-reduced as a masked sum over m, or gathered).

Bits: the compressor's exact encoded size (`c.bits`), or `c.fixed_bits(d)` where every message
has the same size (counted as a Python int, without reading the payload), and `c.entropy_bits`
where it declares an entropy-coded size.

Down-link, `downlink_of(c)`: the server compresses its vector as a one-row batch with the
server stream (identical on every rank, so every rank decodes the same broadcast), and every
worker receives the decoded vector; bits are that one message's size. `dense_downlink(width)`
is the uncompressed broadcast at a float width, the suite's default: `width·d` bits.
"""

from __future__ import annotations

import torch

from suite.compressors.identity import _WIRE_DTYPES
from suite.errors import CompressorError

from .protocol import Downlink, Received, Uplink, stateless


def uplink_of(c) -> Uplink:
    """The up-link scheme of a stateless compressor: compress, ship, mean."""
    fixed, entropy = c.fixed_bits, c.entropy_bits
    shared_scale, identity = c.local_scale is not None, c.is_identity

    def up(x, state, link):
        if shared_scale:
            scale = link.all_reduce(c.local_scale(x), "max", counted=False)
            payload = c.compress(x, link.streams, scale)
        else:
            payload = c.compress(x, link.streams)
        own = c.decompress(payload)
        if link.sample is not None:
            return sampled_round(x, own, payload, state, link)
        if identity and link.dense_collective == "all_reduce":
            aggregate = link.all_reduce(own, "mean")
        else:
            aggregate = link.gather(c, payload, own).mean(0)
        # plain tuples in Sent's field order: the channel unpacks by position, and building
        # a NamedTuple with a default costs about a microsecond, a few per cent of a small step
        if fixed is not None:
            return own, aggregate, state, fixed(x.shape[1]), None
        return own, aggregate, state, c.bits(payload), \
            None if entropy is None else entropy(payload)

    def sampled_round(x, own, payload, state, link):
        """A round of partial participation: every held worker compressed its row (so each
        worker's stream advances alike in every round and every process layout), but only
        the sampled ones send: the others' messages are empty, cost 0 bits and stay out of
        the aggregate, the mean of the m sampled messages. A TernGrad scale shared by all K
        workers is a simplification here (the sampled workers' own max would do)."""
        sample = link.sample
        held = sample.held
        if identity and link.dense_collective == "all_reduce":
            kept = torch.where(held[:, None], own, own.new_zeros(()))
            aggregate = link.all_reduce(kept, "sum") / sample.count
        else:
            aggregate = link.gather(c, payload, own, sample).mean(0)
        sent = held.to(torch.int64)
        if fixed is not None:
            return own, aggregate, state, sent * fixed(x.shape[1]), None
        bits = c.bits(payload)
        return own, aggregate, state, bits * sent.to(bits.device), \
            None if entropy is None else entropy(payload) * sent.to(bits.device)

    return Uplink(name=c.name, kind=c.kind, omega=c.omega, delta=c.delta, init=stateless,
                  up=up, check_dim=c.check_dim, data_dependent=c.data_dependent,
                  hyperparams=c.hyperparams, compressor=c, participation=True)


def downlink_of(c) -> Downlink:
    """The down-link scheme of a stateless compressor: the server's vector as one message."""
    fixed = c.fixed_bits

    def down(v, state, link):
        payload = c.compress(v.reshape(1, -1), link.server)
        value = c.decompress(payload)[0]
        bits = fixed(v.numel()) if fixed is not None else int(c.bits(payload)[0])
        return Received(value, state, bits)

    return Downlink(name=c.name, kind=c.kind, omega=c.omega, delta=c.delta, init=stateless,
                    down=down, check_dim=c.check_dim, hyperparams=c.hyperparams, compressor=c)


def dense_downlink(width: int = 32) -> Downlink:
    """The uncompressed broadcast: v cast to the float wire width and back, width·d bits.

    No range or finiteness check: a diverging run's broadcast is the runner's to notice (by
    its loss), not the wire's."""
    if width not in _WIRE_DTYPES:  # the identity compressor's wire widths
        raise CompressorError(f"downlink width={width!r}: allowed values are "
                              f"{', '.join(map(str, _WIRE_DTYPES))}")
    wire = _WIRE_DTYPES[width]

    def down(v, state, link):
        return v.to(wire).to(v.dtype), state, width * v.numel()  # a Received, as a tuple

    return Downlink(name="dense", kind="unbiased", omega=lambda d: 0.0, delta=None,
                    init=stateless, down=down, hyperparams=(("width", width),))


def _adapted(obj, scheme_type, adapt, what: str):
    if isinstance(obj, scheme_type):
        return obj
    if callable(getattr(obj, "compress", None)) and callable(getattr(obj, "decompress", None)):
        return adapt(obj)
    raise TypeError(f"expected a Compressor or {what} scheme, got {type(obj).__name__}")


def as_uplink(obj) -> Uplink:
    """A Compressor through the adapter; an Uplink as it is."""
    return _adapted(obj, Uplink, uplink_of, "an Uplink")


def as_downlink(obj) -> Downlink:
    """A Compressor through the adapter; a Downlink as it is."""
    return _adapted(obj, Downlink, downlink_of, "a Downlink")
