"""Exact Bernoulli draws ξ ~ Bern(p) from finite-precision uniforms, in cache-sized chunks.

Why. A float32 uniform has 24 random bits: it is u = U·2^-24 with U uniform on {0, …, 2^24 − 1}
(torch's CPU uniforms are exactly this; `WorkerStreams.fill_grid` makes them so elsewhere). The
test [u < p] then fires with probability ⌈p·2^24⌉/2^24, not p: up to 2^-24 too often, at every
coordinate, in the same direction at every step. For a coordinate 1e-10 of the norm that is
a relative bias of 6e5, and over a long vector of small coordinates it adds up (docs/theory.md
§1a). float64's 53 bits only shrink the same bias.

How. Write p·2^G = t (G = 24 or 53, `rng.grid_bits`). [U < ⌊t⌋] and [U > ⌊t⌋] are decided by U
alone; only the one cell U = ⌊t⌋ (probability 2^-G) needs the fractional part of t, and there ξ
is a fresh Bernoulli of that fraction, drawn the same way with new uniforms from the same
worker's stream. The result is exactly Bernoulli(p), for the p that floating point computed.
In floating point the whole decision is z = u − p:

- ξ = [z < 0]: the sign of a difference is exact in IEEE arithmetic;
- the cell is −2^-G < z < 0, and there z is exact too (Sterbenz: u = 0, or u ≥ 2^-G and
  u < p < u + 2^-G ≤ 2u), so the fraction f = −z·2^G is exact and the next draw sees it whole.

Cells are rare (probability 2^-G per coordinate and round), so the refinement runs on a few
coordinates, after all the bulk draws: each worker's stream then holds its d bulk uniforms in
order followed by its cells' draws in column order, whatever the chunking and however workers
are spread over processes (the simulated and distributed runs draw the same numbers).

Chunks. On the CPU the elementwise work runs on column chunks of about CHUNK elements with
buffers reused across chunks: they stay in cache, and no temporary as large as the vector is
ever allocated (each costs as much as copying it, in page faults). That is what lets the exact
kernel keep the speed of the old single-pass one (docs/performance.md, "Exact Bernoulli draws").
On other devices the vector is one chunk.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from suite.rng import grid_bits

CHUNK = 1 << 18  # elements per chunk on the CPU: four float32 buffers of 1 MiB


class Chunk(NamedTuple):
    c0: int  # columns [c0, c1)
    c1: int
    b0: int  # the blocks they lie in, [b0, b1), with
    b1: int
    block: int  # the block length to split the chunk by (the chunk itself if it is in one)


def column_chunks(d: int, B: int, w: int, device: torch.device) -> list[Chunk]:
    """The chunks for a [w, d] batch in blocks of length B: a chunk covers whole blocks, or
    lies inside one block, so each block's scale applies to it as one broadcast."""
    if device.type != "cpu" or w * d <= CHUNK:
        return [Chunk(0, d, 0, -(-d // B), B)]
    width = max(1, CHUNK // w)
    if B >= d:  # one block
        return [Chunk(c, min(d, c + width), 0, 1, min(d, c + width) - c)
                for c in range(0, d, width)]
    if B <= width:  # whole blocks per chunk
        step = width // B * B
        return [Chunk(c, min(d, c + step), c // B, -(-min(d, c + step) // B), B)
                for c in range(0, d, step)]
    out = []  # blocks longer than a chunk: pieces of one block each
    for b, start in enumerate(range(0, d, B)):
        end = min(d, start + B)
        out += [Chunk(c, min(end, c + width), b, b + 1, min(end, c + width) - c)
                for c in range(start, end, width)]
    return out


def cells_of(q: torch.Tensor) -> torch.Tensor:
    """Where q = clamp((u − p)·2^G, −1, 0) lies strictly inside (−1, 0): the undecided cells."""
    return (q > -1.0).logical_and_(q < 0.0)


def has_cells(q: torch.Tensor, scratch: torch.Tensor) -> bool:
    """Whether any q = clamp((u − p)·2^G, −1, 0) lies strictly inside (−1, 0), from one float
    pass and one reduction (comparisons into bool tensors cost ten times a float pass on the
    CPU, and cells are rare).

    q(1 + q) < 0 exactly inside: 1 + q is exact (Sterbenz) or a rounded number in (1/2, 1],
    and |q(1 + q)| ≥ |q|/2 ≥ 2^G·(smallest subnormal)/2 never underflows; at q = −1 and q = 0
    the product is exactly 0.
    """
    return torch.addcmul(q, q, q, out=scratch).amin().item() < 0


def resolve(f: torch.Tensor, rows: torch.Tensor, streams) -> torch.Tensor:
    """ξ for the cells, given the exact fraction f ∈ (0, 1) of t = p·2^G in each (sorted by
    row, then column): True where the refined draw fires. Each row draws from its own stream,
    again and again while a draw lands in a cell of its own."""
    G = grid_bits(f.dtype)
    f = f.clone()
    xi = torch.empty(f.shape, dtype=torch.bool, device=f.device)
    pending = torch.arange(f.numel(), device=f.device)
    held = len(streams)
    while pending.numel():
        counts = torch.bincount(rows[pending], minlength=held).tolist()
        q = streams.grid_uniform_each(counts, dtype=f.dtype).sub_(f[pending])
        q.mul_(2.0**G).clamp_(-1.0, 0.0)
        again = cells_of(q)
        xi[pending] = q < 0
        f[pending[again]] = q[again].neg()
        pending = pending[again]
    return xi
