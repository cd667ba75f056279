"""The α-β cost of the collectives a step performs (Hockney's model: a message of n bytes takes
α + n/β), with the per-rank traffic of the ring algorithms (Thakur, Rabenseifner & Gropp 2005,
"Optimization of collective communication operations in MPICH"), on W ranks:

    collective         rounds      bytes one rank sends           time on a switched link
    all_reduce(n)      2(W − 1)    2(W − 1)/W · n                 2(W − 1)·α + 2(W − 1)/W · n/β
    all_gather(n)      W − 1       (W − 1) · n                    (W − 1)·α + (W − 1) · n/β
    broadcast(n)       W − 1       (W − 1) · n  (the root only)   (W − 1)·α + (W − 1) · n/β

n is what one rank hands to the collective (for an all_gather: its own part, padded to the
longest rank's, as suite.backends.distributed ships it). A round is one message per rank, sent
concurrently; α is the cost of one round's message (software and wire latency), β the payload
bytes per second one rank can send. Broadcast is gloo's flat one: the root sends W − 1 copies.

Two kinds of link:
- switched (a real cluster): every rank has a full-duplex link of its own; concurrent sends do
  not slow each other. The report's projections onto 1, 10, 100 Gbit/s use this.
- shared (`shared=True`): every rank's traffic passes one queue, as on the shaped loopback of
  `hardware.link.rate` (suite/netns.py: one token bucket on `lo` for all ranks and both
  directions). In a round where all W ranks send, the round takes W times as long; the flat
  broadcast, where one rank sends at a time, is unchanged.

A step is described by the collectives it performs: a `Ledger` that the backends fill as they
call them (suite/backends), or a list of (kind, n) pairs that a scheme declares. PowerSGD
(Vogels et al. 2019), for instance, performs two all-reduces a step, of its factors P (m×r) and
Q (n×r): `step_time([("all_reduce", 4*m*r), ("all_reduce", 4*n*r)], W, link)`. The model is
linear in (calls, bytes) per kind, so a ledger of cumulative totals costs what its calls
would cost one by one.

Framing: β is payload bytes per second. TCP over IPv4 carries MTU − 52 payload bytes in a
packet (20 IP + 20 TCP + 12 timestamp option), and each packet costs MTU plus the link's framing
bytes of the rate: 14 on the loopback (tc counts its Ethernet header), 38 on Ethernet (header
14, FCS 4, preamble 8, inter-frame gap 12). At MTU 1500 that is 95.6% of a shaped loopback's
rate and 94.1% of an Ethernet link's.

This module imports nothing from torch, the runner or MLflow: the backends, the launcher, the
calibration and the report (analysis/) all use it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("all_reduce", "all_gather", "broadcast")
TCP_IP_HEADER_BYTES = 52
LOOPBACK_FRAMING_BYTES = 14
ETHERNET_FRAMING_BYTES = 38
DEFAULT_MTU = 1500
# where commsgd-calibrate logs its fits and commsgd-report looks for the latest
CALIBRATION_EXPERIMENT = "calibration"


def payload_fraction(mtu: int, framing_bytes: int) -> float:
    """Payload bytes per byte the link's rate counts, for full-size TCP segments."""
    return (mtu - TCP_IP_HEADER_BYTES) / (mtu + framing_bytes)


@dataclass(frozen=True)
class Link:
    """α (seconds per round's message) and β (payload bytes per second); `shared`: one queue
    for every rank's traffic (the shaped loopback) instead of a full-duplex link per rank."""

    alpha_s: float
    bytes_per_s: float
    shared: bool = False
    label: str = ""

    def __post_init__(self):
        if not (self.alpha_s >= 0 and math.isfinite(self.alpha_s)):
            raise ValueError(f"alpha_s={self.alpha_s!r}: a latency >= 0 seconds")
        if not (self.bytes_per_s > 0):
            raise ValueError(f"bytes_per_s={self.bytes_per_s!r}: a bandwidth > 0")

    @classmethod
    def shaped_loopback(cls, rate_bps: float, *, alpha_s: float, mtu: int = DEFAULT_MTU,
                        label: str = "") -> Link:
        """The loopback shaped to `rate_bps` bits/s by tc (suite/netns.py): shared."""
        beta = rate_bps / 8 * payload_fraction(mtu, LOOPBACK_FRAMING_BYTES)
        return cls(alpha_s, beta, shared=True, label=label or f"loopback {rate_label(rate_bps)}")

    @classmethod
    def ethernet(cls, rate_bps: float, *, alpha_s: float, mtu: int = DEFAULT_MTU,
                 label: str = "") -> Link:
        """A switched full-duplex Ethernet link of `rate_bps` bits/s per rank."""
        beta = rate_bps / 8 * payload_fraction(mtu, ETHERNET_FRAMING_BYTES)
        return cls(alpha_s, beta, shared=False, label=label or rate_label(rate_bps))


def rate_label(rate_bps: float) -> str:
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if rate_bps >= scale:
            return f"{rate_bps / scale:.3g} {unit}"
    return f"{rate_bps:.3g} bit/s"


def _check(kind: str, world_size: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"collective {kind!r}: allowed kinds are {', '.join(KINDS)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: an integer >= 1")


def rounds(kind: str, world_size: int) -> int:
    """Messages in a row on the collective's critical path (each costs α)."""
    _check(kind, world_size)
    return 2 * (world_size - 1) if kind == "all_reduce" else world_size - 1


def sent_bytes(kind: str, nbytes: float, world_size: int) -> float:
    """Bytes one rank sends (the root, for a broadcast) when each hands in `nbytes`."""
    _check(kind, world_size)
    W = world_size
    return 2 * (W - 1) / W * nbytes if kind == "all_reduce" else (W - 1) * nbytes


def queued_bytes(kind: str, nbytes: float, world_size: int, shared: bool) -> float:
    """Bytes that pass the slowest queue: one rank's sends on a switched link; on a shared one
    every rank's (all W send in every round of the ring algorithms; the broadcast's root alone
    sends)."""
    own = sent_bytes(kind, nbytes, world_size)
    return own * world_size if shared and kind != "broadcast" else own


def collective_time(kind: str, nbytes: float, world_size: int, link: Link,
                    calls: int = 1) -> float:
    """Seconds for `calls` collectives of `kind` whose total input per rank is `nbytes`."""
    return (calls * rounds(kind, world_size) * link.alpha_s
            + queued_bytes(kind, nbytes, world_size, link.shared) / link.bytes_per_s)


def step_time(collectives: Iterable[tuple[str, float]], world_size: int, link: Link) -> float:
    """Seconds for a step described as (kind, bytes per rank) pairs, one per collective."""
    return sum(collective_time(kind, n, world_size, link) for kind, n in collectives)


class Ledger:
    """The collectives of one rank's training steps: cumulative calls and bytes handed in per
    kind, and the seconds they took (the distributed backend times them; the simulated one
    performs none and leaves 0).

    `ranks` is W, the number of ranks the collectives run over. The simulated backend keeps a
    ledger too, of what the distributed backend would do with one worker per rank (W = K).
    `add` takes the byte count as an int or as a 0-d tensor (a message size still on the
    device): sums stay lazy, so recording never synchronises a GPU; `totals` reads them.
    Evaluation's collectives are not the step's: the runner evaluates inside `paused()`."""

    __slots__ = ("ranks", "calls", "_bytes", "seconds", "_paused")

    def __init__(self, ranks: int):
        self.ranks = ranks
        self.calls = dict.fromkeys(KINDS, 0)
        self._bytes = dict.fromkeys(KINDS, 0)
        self.seconds = 0.0
        self._paused = 0

    def add(self, kind: str, nbytes, seconds: float = 0.0) -> None:
        if self._paused:
            return
        self.calls[kind] += 1
        self._bytes[kind] = self._bytes[kind] + nbytes
        self.seconds += seconds

    @contextlib.contextmanager
    def paused(self):
        """Collectives made meanwhile (evaluation, bookkeeping) are not recorded."""
        self._paused += 1
        try:
            yield self
        finally:
            self._paused -= 1

    def totals(self) -> dict[str, tuple[int, int]]:
        return {k: (self.calls[k], int(self._bytes[k])) for k in KINDS}

    def time(self, link: Link) -> float:
        """Seconds the model gives for everything recorded so far."""
        return sum(collective_time(k, b, self.ranks, link, calls=c)
                   for k, (c, b) in self.totals().items() if c)

    def metrics(self) -> dict[str, float]:
        """`comm/<kind>_calls` and `comm/<kind>_bytes` (per rank, cumulative) for the kinds
        used so far."""
        out = {}
        for k, (c, b) in self.totals().items():
            if c:
                out[f"comm/{k}_calls"], out[f"comm/{k}_bytes"] = float(c), float(b)
        return out

    def state(self) -> dict:
        """What a checkpoint saves and `load` restores."""
        return {"ranks": self.ranks, "calls": dict(self.calls), "seconds": self.seconds,
                "bytes": {k: b for k, (_, b) in self.totals().items()}}

    def load(self, state: dict) -> None:
        self.calls = {k: int(state["calls"].get(k, 0)) for k in KINDS}
        self._bytes = {k: int(state["bytes"].get(k, 0)) for k in KINDS}
        self.seconds = float(state.get("seconds", 0.0))


LEDGER_KEYS = tuple(f"comm/{k}_{part}" for k in KINDS for part in ("calls", "bytes"))


def time_from_metrics(metrics: dict, world_size: int, link: Link) -> float:
    """The model's seconds for a ledger logged as metrics (`Ledger.metrics`); NaN when the run
    logged none (it predates the ledger)."""
    if not any(key in metrics for key in LEDGER_KEYS):
        return math.nan
    total = 0.0
    for k in KINDS:
        calls = metrics.get(f"comm/{k}_calls", 0.0)
        if calls and math.isfinite(calls):
            total += collective_time(k, metrics[f"comm/{k}_bytes"], world_size, link,
                                     calls=calls)
    return total


# ------------------------------------------------------------------------------ calibration

@dataclass(frozen=True)
class Fit:
    """α and β fitted to measured collectives; errors are |model − measured| / measured, over
    all samples and over the bandwidth-side ones (those β was fitted on)."""

    alpha_s: float
    bytes_per_s: float
    median_rel_error: float
    max_rel_error: float
    bandwidth_median_rel_error: float
    bandwidth_max_rel_error: float
    points: int
    bandwidth_from_bytes: float  # samples queueing at least this many bytes fixed β

    def predict(self, kind: str, nbytes: float, world_size: int, shared: bool) -> float:
        return collective_time(kind, nbytes, world_size,
                               Link(self.alpha_s, self.bytes_per_s, shared))

    def bandwidth_side(self, kind: str, nbytes: float, world_size: int, shared: bool) -> bool:
        return queued_bytes(kind, nbytes, world_size, shared) >= self.bandwidth_from_bytes


BANDWIDTH_DECADES = 1.5  # β from the samples within this many decades of the largest


def _median(xs: list[float]) -> float:
    xs, mid = sorted(xs), len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def fit(samples: Iterable[tuple[str, float, int, float]], shared: bool) -> Fit:
    """α and β of one link from (kind, bytes per rank, W, measured seconds) samples, each side
    from the samples that measure it (Hockney's two regimes):

    - β from the bandwidth side, the samples whose queued bytes q are within
      BANDWIDTH_DECADES of the largest: γ = 1/β minimising Σ (t − r·α − q·γ)², which weighs
      the largest most: their times are the least disturbed, relative to their length, by a
      rank that the machine's other work descheduled for a few milliseconds;
    - α from the latency side, the smaller samples: the median over them of (t − q·γ) / r,
      with r = rounds(kind, W). A median, because a collective of a few kilobytes takes a
      fraction of a millisecond and one descheduled rank adds several (a shared machine).

    The two depend on each other a little (α enters the bandwidth side's residuals, γ the
    latency side's), so the two steps alternate until α settles (a contraction: α moves γ by
    α·Σqr/Σq², a fraction of a per cent of it)."""
    rows = [(rounds(k, W), queued_bytes(k, n, W, shared), t) for k, n, W, t in samples]
    if any(not t > 0 for *_, t in rows):
        raise ValueError("fit needs positive times")
    largest = max((q for _, q, _ in rows), default=0.0)
    cut = largest / 10 ** BANDWIDTH_DECADES
    big = [row for row in rows if row[1] >= cut and row[1] > 0]
    small = [row for row in rows if row[1] < cut]
    if len(big) < 2 or len({q for _, q, _ in big}) < 2:
        raise ValueError("fit needs samples of at least two sizes near the largest")
    alpha = 0.0
    for _ in range(100):
        gamma = sum(q * (t - r * alpha) for r, q, t in big) / sum(q * q for _, q, _ in big)
        if not gamma > 0:
            raise ValueError("fit gave a non-positive 1/β: the times do not grow with size")
        previous = alpha
        alpha = max(0.0, _median([(t - q * gamma) / r for r, q, t in small])) if small else 0.0
        if abs(alpha - previous) <= 1e-15 + 1e-13 * alpha:
            break
    errors = [abs(r * alpha + q * gamma - t) / t for r, q, t in rows]
    bound = [abs(r * alpha + q * gamma - t) / t for r, q, t in big]
    return Fit(alpha, 1.0 / gamma, _median(errors), max(errors), _median(bound), max(bound),
               len(rows), cut)
