"""The channel between workers and server: it runs the schemes, holds their state and counts
every bit exactly.

    own, mean = channel.send_up(x)    # x: [w, d] -> (own decoded [w, d], aggregate [d])
    v_hat     = channel.broadcast(v)  # v: [d] -> what every worker receives (down-link)

The up-link scheme comes from the run's compressor (a stateless Compressor through the adapter,
suite/comm/adapter.py, or an Uplink of its own); the down-link is the dense float32 broadcast
unless a Downlink is given. The schemes' states live here, between rounds, one pair per *lane*:
an algorithm that sends two kinds of message (a model difference and a control variate; a dense
round and a compressed one) opens a lane for each, `channel.lane(name, uplink=..., downlink=...)`,
so that a stateful scheme never mixes them; `channel.send_up` is the main lane's. Every lane's
bits and rounds add to the same counters.

Bits are counted from what the schemes report (`Sent.bits`, `Received.bits`: the encoded size),
per worker, cumulatively; the simulation continues from the decoded values, so what is simulated
is what would be sent. Time: a scheme's collectives are "comm" (the link times them); the rest of
its `up` (compressing, decoding, aggregating) is "compress".
"""

from __future__ import annotations

import math
import time

import torch

from suite.rng import SharedStream
from suite.timing import Stopwatch

from .adapter import as_downlink, as_uplink, dense_downlink
from .link import Link
from .participation import Sample
from .protocol import Env

DOWNLINK_BITS_PER_COORDINATE = 32
MAIN_LANE = "main"


class Lane:
    """One stream of messages: its schemes and their current states (None until first use)."""

    __slots__ = ("channel", "name", "uplink", "downlink", "up_state", "down_state")

    def __init__(self, channel, name, uplink, downlink):
        self.channel, self.name = channel, name
        self.uplink, self.downlink = uplink, downlink
        self.up_state = self.down_state = None

    def send_up(self, x: torch.Tensor, *, sampled: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.channel._send_up(self, x, sampled)

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        return self.channel._broadcast(self, v)


class Channel:
    def __init__(self, backend, compressor, streams, stopwatch: Stopwatch, *, downlink=None,
                 seed: int = 0, shared: SharedStream | None = None,
                 server: SharedStream | None = None, shapes=None):
        self.backend, self.streams, self.stopwatch = backend, streams, stopwatch
        self.seed = seed
        self.shapes = None if shapes is None else tuple(tuple(int(n) for n in s) for s in shapes)
        self.uplink = as_uplink(compressor)
        self.downlink = dense_downlink(DOWNLINK_BITS_PER_COORDINATE) if downlink is None \
            else as_downlink(downlink)
        ids, K, device = list(backend.worker_ids), backend.num_workers, backend.device
        self.shared = shared or SharedStream(seed, "communication", ids, K, device)
        self.server = server or SharedStream(seed, "downlink", [0], 1, device)
        self.link = Link(backend, stopwatch, streams, self.shared, self.server)
        self._begin_round = getattr(backend, "begin_round", None)
        w = len(ids)
        self._holds_all = ids == list(range(K))
        self._held_index = torch.as_tensor(ids, dtype=torch.int64, device=device)
        # Cumulative bits per held worker, for messages whose size depends on their content.
        self.bits_up = torch.zeros(w, dtype=torch.int64, device=device)
        self.entropy_bits_up = torch.zeros(w, dtype=torch.int64, device=device)
        # Σ ceil(bits/8) per worker: the schemes' accounting in whole bytes, which a
        # distributed backend's count of the bytes it actually ships must equal.
        self.bytes_up = torch.zeros(w, dtype=torch.int64, device=device)
        # Messages of a fixed size (a dense float vector, the broadcast) cost every worker the
        # same: they are counted in Python integers, exactly, and spare the hot path three
        # tensor updates per step. `counters()` adds both parts.
        self._fixed_bits_up = 0
        self._fixed_entropy_up = 0
        self._fixed_bytes_up = 0
        self._bits_down = 0
        self.rounds = 0
        self.lanes: dict[str, Lane] = {}
        self._main = self.lane(MAIN_LANE)

    @property
    def compressor(self):
        """The main up-link scheme (its kind, ω, δ, name: what algorithms admit it by)."""
        return self.uplink

    def lane(self, name: str, *, uplink=None, downlink=None) -> Lane:
        """A new lane: its own scheme states, the channel's schemes unless others are given
        (a Compressor or an Uplink/Downlink). Open lanes when the algorithm is built, so that
        a checkpoint's states find them on restore."""
        if name in self.lanes:
            raise ValueError(f"channel lane {name!r} exists already")
        lane = Lane(self, name, self.uplink if uplink is None else as_uplink(uplink),
                    self.downlink if downlink is None else as_downlink(downlink))
        self.lanes[name] = lane
        return lane

    # -- the hot path ----------------------------------------------------------------------------
    def send_up(self, x: torch.Tensor, *, sampled: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each held worker sends its row of x [w, d] through the main lane. Returns (own
        decoded messages [w, d], the server's aggregate over all K workers [d]).

        `sampled`: a [K] bool mask, identical on every rank (suite/comm/participation.py),
        for a round that only those workers take part in: the others send nothing (0 bits)
        and the aggregate is over the sampled messages."""
        return self._send_up(self._main, x, sampled)

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        """The server sends v [d] to every worker through the main lane's down-link."""
        return self._broadcast(self._main, v)

    def _env(self, d: int, dtype, device) -> Env:
        shapes = self.shapes
        if shapes is not None and sum(math.prod(s) for s in shapes) != d:
            shapes = None  # a message that is not the model
        return Env(d, dtype, device, tuple(self.backend.worker_ids), self.backend.num_workers,
                   self.seed, shapes)

    def _send_up(self, lane: Lane, x: torch.Tensor, sampled=None):
        state = lane.up_state
        if state is None:
            state = lane.uplink.init(self._env(x.shape[1], x.dtype, x.device))
        if sampled is not None:
            self.link.sample = self._sample(lane, sampled)
        if self._begin_round is not None:
            self._begin_round()
        sw = self.stopwatch
        totals = sw.totals
        sw.sync()
        started, comm_before = time.perf_counter(), totals["comm"]
        try:
            # a Sent, or a tuple of its five fields in its order (the adapter's, on the hot path)
            own, aggregate, lane.up_state, bits, entropy = lane.uplink.up(x, state, self.link)
        finally:
            self.link.sample = None
        sw.sync()
        # the scheme's collectives timed themselves as comm; the rest of `up` is compression
        totals["compress"] += time.perf_counter() - started - (totals["comm"] - comm_before)
        self._count_up(bits, entropy)
        self.rounds += 1
        return own, aggregate

    def _sample(self, lane: Lane, mask: torch.Tensor) -> Sample:
        if not lane.uplink.participation:
            raise ValueError(
                f"the up-link scheme {lane.uplink.name!r} (lane {lane.name!r}) does not "
                f"support partial participation (Uplink.participation is False): it would "
                f"count and aggregate every worker's message")
        K = self.backend.num_workers
        if mask.dtype != torch.bool or mask.shape != (K,):
            raise ValueError(f"sampled: expected a [{K}] bool mask over all workers, got "
                             f"{mask.dtype} of shape {tuple(mask.shape)}")
        count = int(mask.sum())
        if count == 0:
            raise ValueError("sampled: a round needs at least one sampled worker")
        held = mask if self._holds_all else mask[self._held_index]
        return Sample(mask, held, count)

    def _count_up(self, bits, entropy) -> None:
        if isinstance(bits, int):
            self._fixed_bits_up += bits
            self._fixed_bytes_up += (bits + 7) // 8
            self._fixed_entropy_up += bits if entropy is None else int(entropy)
            return
        bits = bits.to(self.bits_up.device)
        self.bits_up += bits
        self.bytes_up += (bits + 7) // 8
        self.entropy_bits_up += bits if entropy is None else entropy.to(self.bits_up.device)

    def _broadcast(self, lane: Lane, v: torch.Tensor) -> torch.Tensor:
        state = lane.down_state
        if state is None:
            state = lane.downlink.init(self._env(v.numel(), v.dtype, v.device))
        value, lane.down_state, bits = lane.downlink.down(v, state, self.link)  # a Received
        self._bits_down += bits
        return value

    # -- accounting --------------------------------------------------------------------------
    def counters(self) -> dict[str, torch.Tensor]:
        """Cumulative per-worker counts [w] (int64): bits_up, entropy_bits_up, bits_down and
        bytes_up. What a checkpoint saves and `load_counters` restores."""
        return {
            "bits_up": self.bits_up + self._fixed_bits_up,
            "entropy_bits_up": self.entropy_bits_up + self._fixed_entropy_up,
            "bits_down": torch.full_like(self.bits_up, self._bits_down),
            "bytes_up": self.bytes_up + self._fixed_bytes_up,
        }

    def load_counters(self, counters: dict[str, torch.Tensor]) -> None:
        for name in ("bits_up", "entropy_bits_up", "bytes_up"):
            getattr(self, name).copy_(counters[name])
        down = counters["bits_down"]
        if down.numel() and not bool((down == down[0]).all()):
            raise ValueError("checkpoint: bits_down differs between workers; every worker "
                             "receives the same broadcasts")
        self._bits_down = int(down[0]) if down.numel() else 0
        self._fixed_bits_up = self._fixed_entropy_up = self._fixed_bytes_up = 0

    def scheme_state(self) -> dict:
        """The schemes' states, lane by lane, and the shared streams' generator states: what
        a checkpoint saves beside the counters and `load_scheme_state` restores."""
        return {
            "lanes": {name: (lane.up_state, lane.down_state) for name, lane in self.lanes.items()},
            "shared": self.shared.get_state(),
            "server": self.server.get_state(),
        }

    def load_scheme_state(self, saved: dict) -> None:
        """Put back what `scheme_state` returned (its tensors already on this run's device)."""
        unknown = set(saved["lanes"]) - set(self.lanes)
        if unknown:
            raise ValueError(f"checkpoint holds channel lanes {sorted(unknown)} that this run "
                             f"does not open (it opens {sorted(self.lanes)})")
        for name, (up, down) in saved["lanes"].items():
            self.lanes[name].up_state, self.lanes[name].down_state = up, down
        self.shared.set_state(saved["shared"])
        self.server.set_state(saved["server"])

    def totals(self) -> dict[str, float]:
        """The cumulative counts, logged as (one collective; README "What every run logs"):

        - comm/bits_up: uplink bits per worker, summed over steps, averaged over all K
          workers: what one worker has sent, in the schemes' wire format;
        - comm/bits_up_total: the same summed over all K workers: every uplink bit that has
          crossed the network (K · comm/bits_up);
        - comm/bits_up_alt_code: comm/bits_up with each message in the compressor's
          alternative code instead (QSGD: Elias-ω; ternary messages: base 3; others: the
          wire size). A different code, not a bound: it can be larger than comm/bits_up;
        - comm/bits_down: downlink bits each worker has received (the broadcasts);
        - comm/rounds: the number of uplink rounds.

        A backend that ships real bytes (`wire_totals`, the distributed one) adds what it
        handed to the collectives beside `comm/bytes_up`, the schemes' Σ ceil(bits/8).
        """
        K = self.backend.num_workers
        c = self.counters()
        stacked = torch.stack([c["bits_up"], c["entropy_bits_up"], c["bits_down"],
                               c["bytes_up"]], 1)
        # one transfer of the four sums; the division by K is Python's, correctly rounded as
        # a float64 tensor's on the CPU, and the same on every device
        summed = self.backend.sum(stacked.double()).tolist()
        up, alt_up, down, bytes_up = (total / K for total in summed)
        out = {
            "comm/bits_up": up,
            "comm/bits_up_total": summed[0],
            "comm/bits_up_alt_code": alt_up,
            "comm/bits_down": down,
            "comm/rounds": float(self.rounds),
        }
        wire_totals = getattr(self.backend, "wire_totals", None)
        if wire_totals is not None:
            out["comm/bytes_up"] = bytes_up
            out.update(wire_totals())
        return out

