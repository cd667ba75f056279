"""PowerSGD: rank-r compression by one step of power iteration, warm-started, aggregated by two
all-reduces (Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression
for Distributed Optimization", NeurIPS 2019, arXiv:1905.13727; docs/theory.md §12).

Each message x_k ∈ R^d of worker k is viewed as matrices (below); for each matrix M_k ∈ R^{n×m}
and rank r' = min(r, n, m), with Q ∈ R^{m×r'} the warm start every worker holds:

    P_k = M_k Q                       worker k's left factor                 (sent: n·r' floats)
    P   = (1/K) Σ_k P_k               all-reduce no. 1 (every P of the message in one buffer)
    P̂   = orthonormal basis of P      (reduced QR, computed identically by every worker)
    Q_k = M_kᵀ P̂                      worker k's right factor                (sent: m·r' floats)
    Q'  = (1/K) Σ_k Q_k               all-reduce no. 2 (every Q, and the dense part, in one buffer)
    own_k     = P̂ Q_kᵀ = P̂P̂ᵀ M_k     worker k's message as the server decodes it
    aggregate = P̂ Q'ᵀ  = P̂P̂ᵀ M̄       the decoded mean; Q' is the next round's warm start Q

The code is linear in the M_k once P̂ is fixed, so the aggregate is the mean of the K own
messages and two all-reduces carry every message (no gather). Used with error feedback
(`algorithm=ef_sgd`, whose memory e_k = p_k − own_k is the paper's Algorithm 2; the paper's
momentum is not part of it).

Matrices. With a network's parameter shapes (`Env.shapes`: the message is the model), every
tensor of two or more dimensions is one matrix, [shape[0], prod(shape[1:])] (a convolution's
output channels by its fan-in, as the paper does), and every tensor of fewer dimensions (biases,
BatchNorm scales) is sent uncompressed at 32 bits per coordinate, as in the paper. Without
shapes (a d-vector such as logistic regression's), the vector is viewed row-major as one n×m
matrix with m = ⌈√d⌉ columns and n = ⌈d/m⌉ ≤ m rows, zero-padded to n·m ≥ d (fewer than m pad
entries); the padding is never decoded into the message. n ≤ m, as for every convolution, so
that rank r = n reproduces each message, not only their mean.

Bits per worker and round: Σ over matrices 32·r'·(n + m), plus 32 per uncompressed
coordinate, exactly (the factors travel as float32, and the simulation continues from the
float32 values).

Warm start and its randomness. Q is replicated: after all-reduce no. 2 every worker holds the
same Q', the paper's warm start, so the scheme keeps one copy in `state.server` rather than K
identical rows. Its first value is Gaussian from a stream seeded by the run's seed alone
(suite.rng.derive_seed(seed, "powersgd", -1)), identical on every rank, as every worker must
start from the same Q for P to be the mean of the M_k Q.

Orthogonalisation: torch.linalg.qr (Householder), which stays finite where P is rank-deficient
or zero (the paper's Gram–Schmidt would divide by zero there); P̂P̂ᵀ does not depend on QR's
sign convention. Matrices of equal shape are batched: one matmul and one QR per shape, not per
layer.

Constants. Kind "low_rank": no ω and no δ are declared. The projection P̂P̂ᵀ gives
‖own_k − M_k‖² ≤ ‖M_k‖², i.e. only δ = 0, and the paper proves no contraction of the
warm-started iteration, so no ω/δ theorem admits it and `lr=theory` is refused
(docs/theory.md §12).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from suite.comm.protocol import CommState, Sent, Uplink
from suite.rng import derive_seed

from .params import require_dim, require_int

WIRE = torch.float32  # the factors' width on the wire
WIRE_BITS = 32


class Block(NamedTuple):
    """`count` matrices of one shape: rows × cols at rank r' (= rank)."""

    rows: int
    cols: int
    rank: int
    index: torch.Tensor  # [count, rows·cols] positions in the message (d: the zero pad slot)

    @property
    def count(self) -> int:
        return self.index.shape[0]


class Layout(NamedTuple):
    d: int
    blocks: tuple[Block, ...]
    dense: torch.Tensor  # [n_dense] coordinates sent uncompressed
    padded: bool  # some block positions are the zero pad slot d
    bits: int  # per worker and round


class PowerState(NamedTuple):
    q: tuple  # per block [count, cols, rank]: the warm start, identical on every rank
    shapes: torch.Tensor  # int64 [tensors, max ndim] (−1 padded), or [0, 0]: the message's layout


def matrix_shape(d: int) -> tuple[int, int]:
    """The n×m view of a d-vector: m = ⌈√d⌉ columns, n = ⌈d/m⌉ ≤ m rows (n·m ≥ d,
    n·m − d < m)."""
    cols = math.isqrt(d - 1) + 1 if d > 1 else 1
    return -(-d // cols), cols


def layout(d: int, shapes, rank: int, device=None) -> Layout:
    """Where every matrix of the message lies, grouped by shape (first appearance first)."""
    if shapes is None:
        rows, cols = matrix_shape(d)
        pos = torch.arange(rows * cols, device=device)
        index = torch.where(pos < d, pos, d)[None]  # the pad entries read the zero slot d
        groups = {(rows, cols): [index]}
        dense = torch.zeros(0, dtype=torch.int64, device=device)
        padded = rows * cols > d
    else:
        groups, dense_parts, offset = {}, [], 0
        for shape in shapes:
            numel = math.prod(shape)
            span = torch.arange(offset, offset + numel, device=device)
            if len(shape) >= 2:
                groups.setdefault((shape[0], numel // shape[0]), []).append(span[None])
            else:
                dense_parts.append(span)
            offset += numel
        if offset != d:
            raise ValueError(f"powersgd: the shapes hold {offset} numbers, the message {d}")
        dense = torch.cat(dense_parts) if dense_parts else torch.zeros(0, dtype=torch.int64,
                                                                       device=device)
        padded = False
    blocks = tuple(Block(r, c, min(rank, r, c), torch.cat(parts))
                   for (r, c), parts in groups.items())
    bits = sum(WIRE_BITS * b.count * b.rank * (b.rows + b.cols) for b in blocks) \
        + WIRE_BITS * dense.numel()
    return Layout(d, blocks, dense, padded, bits)


def _encode_shapes(shapes) -> torch.Tensor:
    if shapes is None:
        return torch.zeros(0, 0, dtype=torch.int64)
    width = max((len(s) for s in shapes), default=0)
    return torch.tensor([list(s) + [-1] * (width - len(s)) for s in shapes],
                        dtype=torch.int64).reshape(len(shapes), width)


def _decode_shapes(t: torch.Tensor):
    if t.shape[0] == 0 and t.shape[1] == 0:
        return None
    return tuple(tuple(n for n in row if n >= 0) for row in t.tolist())


def _wire(t: torch.Tensor) -> torch.Tensor:
    """What the receiver rebuilds from t sent at the wire width."""
    return t.to(WIRE).to(t.dtype)


def _pack(parts: list[torch.Tensor], w: int) -> torch.Tensor:
    return torch.cat([p.reshape(w, -1) for p in parts], 1)


def _unpack(flat: torch.Tensor, like: list[tuple[int, ...]]) -> list[torch.Tensor]:
    out, at = [], 0
    for shape in like:
        n = math.prod(shape)
        out.append(flat[at:at + n].view(shape))
        at += n
    return out


def powersgd(*, rank: int = 2) -> Uplink:
    rank = require_int("rank", rank, 1)
    layouts: dict = {}  # (d, shapes, device) -> Layout; the layout is a pure function of them

    def layout_of(d: int, shapes, device) -> Layout:
        key = (d, shapes, str(device))
        if key not in layouts:
            layouts[key] = layout(d, shapes, rank, device)
        return layouts[key]

    def check_dim(d: int) -> None:
        require_dim(d)

    def init(env) -> CommState:
        check_dim(env.d)
        lay = layout_of(env.d, env.shapes, env.device)
        g = torch.Generator().manual_seed(derive_seed(env.seed, "powersgd", -1))
        q = tuple(torch.randn(b.count, b.cols, b.rank, generator=g).to(env.dtype)
                  .to(env.device) for b in lay.blocks)
        return CommState((), PowerState(q, _encode_shapes(env.shapes)))

    # the last state's shapes tensor and its layout: the hot path skips decoding the shapes
    last: list = [None, None]

    def up(x, state, link):
        w, d = x.shape
        server = state.server
        if last[0] is server.shapes and last[1].d == d:
            lay = last[1]
        else:  # first round, or a state restored from a checkpoint
            lay = layout_of(d, _decode_shapes(server.shapes), x.device)
            last[0], last[1] = server.shapes, lay
        source = torch.cat([x, x.new_zeros(w, 1)], 1) if lay.padded else x
        mats = [source[:, b.index].view(w, b.count, b.rows, b.cols) for b in lay.blocks]
        # all-reduce no. 1: every worker's P = M Q, as float32 messages
        ps = [_wire(m @ q) for m, q in zip(mats, server.q, strict=True)]
        p_mean = _unpack(link.all_reduce(_pack(ps, w), "mean"),
                         [(b.count, b.rows, b.rank) for b in lay.blocks])
        p_hat = [torch.linalg.qr(p).Q for p in p_mean]
        # all-reduce no. 2: every worker's Q = Mᵀ P̂ and its uncompressed coordinates
        qs = [_wire(m.transpose(-1, -2) @ ph) for m, ph in zip(mats, p_hat, strict=True)]
        dense_own = _wire(x[:, lay.dense])
        reduced = link.all_reduce(_pack([*qs, dense_own], w), "mean")
        *q_mean, dense_mean = _unpack(reduced, [*((b.count, b.cols, b.rank) for b in lay.blocks),
                                                (lay.dense.numel(),)])
        own = x.new_empty(w, d + lay.padded)
        aggregate = x.new_empty(d + lay.padded)
        for b, ph, qk, qm in zip(lay.blocks, p_hat, qs, q_mean, strict=True):
            # pad positions all write the slot d, which is cut off below
            own[:, b.index] = (ph @ qk.transpose(-1, -2)).reshape(w, b.count, -1)
            aggregate[b.index] = (ph @ qm.transpose(-1, -2)).reshape(b.count, -1)
        own[:, lay.dense] = dense_own
        aggregate[lay.dense] = dense_mean
        if lay.padded:
            own, aggregate = own[:, :d], aggregate[:d]
        new = CommState((), PowerState(tuple(q_mean), server.shapes))
        return Sent(own, aggregate, new, lay.bits)

    return Uplink(name="powersgd", kind="low_rank", omega=None, delta=None, init=init, up=up,
                  check_dim=check_dim, hyperparams=(("rank", rank),))
