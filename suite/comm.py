"""The channel between workers and server: compression, collectives and exact bit accounting.

Up-link: every worker compresses its message; the server receives the decoded messages and
averages them. Down-link: the server broadcasts a dense float32 vector (no algorithm here
compresses its broadcast; an algorithm that did would declare it). Bits are counted from the
compressor's encoded size, per worker, cumulatively; the simulation continues from the decoded
values, so what is simulated is what would be sent.
"""

from __future__ import annotations

import torch

from suite.timing import Stopwatch

DOWNLINK_BITS_PER_COORDINATE = 32


class Channel:
    def __init__(self, backend, compressor, streams, stopwatch: Stopwatch):
        self.backend, self.compressor, self.streams = backend, compressor, streams
        self.stopwatch = stopwatch
        w = len(backend.worker_ids)
        device = backend.device
        # Cumulative bits per held worker, for messages whose size depends on their content.
        self.bits_up = torch.zeros(w, dtype=torch.int64, device=device)
        self.entropy_bits_up = torch.zeros(w, dtype=torch.int64, device=device)
        # Σ ceil(bits/8) per worker: the compressor's accounting in whole bytes, which a
        # distributed backend's count of the bytes it actually ships must equal.
        self.bytes_up = torch.zeros(w, dtype=torch.int64, device=device)
        # Messages of a fixed size (a dense float vector, the broadcast) cost every worker the
        # same: they are counted in Python integers, exactly, and spare the hot path three
        # tensor updates per step. `counters()` adds both parts.
        self._fixed_bits_up = 0
        self._fixed_bytes_up = 0
        self._bits_down = 0
        self.rounds = 0

    def send_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each worker sends C(x_k). Returns (own decoded messages [w, d], their mean over all
        K workers [d])."""
        c = self.compressor
        scale = None
        if c.needs_shared_scale:
            # TernGrad shares one scale across workers (max of the local max-norms): a
            # collective, so it goes through the backend like every other exchange, and its
            # time is communication, not compression.
            with self.stopwatch.time("compress"):
                local = c.local_scale(x)
            with self.stopwatch.time("comm"):
                scale = self.backend.max(local)
        with self.stopwatch.time("compress"):
            payload = c.compress(x, self.streams) if scale is None else c.compress(
                x, self.streams, scale)
            own = c.decompress(payload)
        with self.stopwatch.time("comm"):
            mean = self.backend.mean_of_messages(c, payload, own)
        self._count_up(c, payload, x.shape[1])
        self.rounds += 1
        return own, mean

    def _count_up(self, c, payload, d: int) -> None:
        fixed = c.fixed_bits(d) if c.fixed_bits is not None else None
        if fixed is not None:
            self._fixed_bits_up += fixed
            self._fixed_bytes_up += (fixed + 7) // 8
            return
        bits = c.bits(payload).to(self.bits_up.device)
        self.bits_up += bits
        self.bytes_up += (bits + 7) // 8
        entropy = bits if c.entropy_bits is None else c.entropy_bits(payload)
        self.entropy_bits_up += entropy.to(self.bits_up.device)

    def broadcast(self, v: torch.Tensor) -> torch.Tensor:
        """The server sends the dense vector v [d] to every worker as float32."""
        self._bits_down += DOWNLINK_BITS_PER_COORDINATE * v.numel()
        return v.to(torch.float32).to(v.dtype)

    def counters(self) -> dict[str, torch.Tensor]:
        """Cumulative per-worker counts [w] (int64): bits_up, entropy_bits_up, bits_down and
        bytes_up. What a checkpoint saves and `load_counters` restores."""
        return {
            "bits_up": self.bits_up + self._fixed_bits_up,
            "entropy_bits_up": self.entropy_bits_up + self._fixed_bits_up,
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
        self._fixed_bits_up = self._fixed_bytes_up = 0

    def totals(self) -> dict[str, float]:
        """The cumulative counts, logged as (one collective; README "What every run logs"):

        - comm/bits_up: uplink bits per worker, summed over steps, averaged over all K
          workers: what one worker has sent, in the compressor's wire format;
        - comm/bits_up_total: the same summed over all K workers: every uplink bit that has
          crossed the network (K · comm/bits_up);
        - comm/bits_up_alt_code: comm/bits_up with each message in the compressor's
          alternative code instead (QSGD: Elias-ω; ternary messages: base 3; others: the
          wire size). A different code, not a bound: it can be larger than comm/bits_up;
        - comm/bits_down: downlink bits each worker has received (the broadcasts);
        - comm/rounds: the number of uplink rounds.

        A backend that ships real bytes (`wire_totals`, the distributed one) adds what it
        handed to the collectives beside `comm/bytes_up`, the compressor's Σ ceil(bits/8).
        """
        K = self.backend.num_workers
        c = self.counters()
        stacked = torch.stack([c["bits_up"], c["entropy_bits_up"], c["bits_down"],
                               c["bytes_up"]], 1)
        summed = self.backend.sum(stacked.double())
        up, alt_up, down, bytes_up = (summed / K).tolist()
        out = {
            "comm/bits_up": up,
            "comm/bits_up_total": float(summed[0]),
            "comm/bits_up_alt_code": alt_up,
            "comm/bits_down": down,
            "comm/rounds": float(self.rounds),
        }
        wire_totals = getattr(self.backend, "wire_totals", None)
        if wire_totals is not None:
            out["comm/bytes_up"] = bytes_up
            out.update(wire_totals())
        return out
