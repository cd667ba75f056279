"""K workers spread over torch.distributed ranks: rank r holds a contiguous block of K / W.

Rank r of W holds workers r·K/W … (r+1)·K/W − 1, so the global worker order is rank-major and
every per-worker tensor on a rank is the [w, d] slice of the simulated [K, d] one. Per-worker
random streams belong to the worker (suite.rng), so each worker draws what it would draw in the
simulated backend, and the collectives below are arranged to reproduce the simulated means:

- Compressed messages travel as the compressor's bytes (`gather_messages`, `exchange`).
  Message sizes may differ between workers, so each exchange is two all_gathers: the sizes
  first (int64, one per held worker; the "header"), then every rank's messages concatenated
  and zero-padded to the longest rank's total. Every rank then decodes all K messages in
  global worker order into the same [K, d] tensor the simulated backend holds, so the mean
  (or any aggregate a scheme takes of it) is bit-for-bit the simulated one.
- Dense data (`mean`, `sum`, `all_reduce`: the identity compressor's messages, a scheme's
  linear code) goes through all_reduce of each rank's partial sum, which is what all_reduce
  is for, but sums in a different order than the simulated `.mean(0)` over K rows: equal to
  about one rounding per addition (~1e-16 relative in float64). With
  `dense_collective=all_gather`, `all_reduce` gathers every rank's rows and reduces them in
  global order, and the identity compressor's messages travel as encoded bytes like any
  other compressor's: W times the all_reduce traffic, but bit-identical to the simulation.
- `max` (TernGrad's shared scale) and `max_over_ranks` (timings) are all_reduce MAX: exact.

The step's collectives (`mean`, `sum`, `max`, `all_reduce`, `exchange`; not `max_over_ranks`,
`wire_totals` or the barriers, which are bookkeeping) go into `self.ledger`
(suite.costmodel.Ledger): kind, bytes this rank hands in, and the seconds the collective took
on this rank, so that a run can set the measured time of its collectives beside the cost
model's for the same calls (suite/links.py). The runner pauses the ledger while it evaluates.

Wire accounting, per rank: `wire_bytes` counts the message bytes handed to the collectives
(equal to Σ ceil(bits/8) over the held workers' messages on the all_gather path; the bytes of
the partial sum on the all_reduce path), `wire_header_bytes` the size exchange and
`wire_padding_bytes` the zero padding that all_gather's equal-size rule adds. Collectives that
carry no message (timings, the bit totals, evaluation, TernGrad's 4-byte scale share) are not
counted here.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from suite.costmodel import Ledger
from suite.errors import ConfigError

from .simulated import REDUCE

BACKENDS = ("gloo", "nccl")
DENSE_COLLECTIVES = ("all_reduce", "all_gather")
SIZE_DTYPE = torch.int64  # the size header: one int64 per message
_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
               "min": dist.ReduceOp.MIN}

# --- test-only hook (tests/test_distributed.py) -------------------------------------------
# COMMSGD_TEST_KILL_RANK=r and COMMSGD_TEST_KILL_STEP=t make rank r die abruptly (os._exit(1),
# no Python exception, no cleanup) just before its (t+1)-th up-link round, to test that the
# other ranks and the launcher end the job cleanly. Unset in normal use.
KILL_RANK_ENV, KILL_STEP_ENV = "COMMSGD_TEST_KILL_RANK", "COMMSGD_TEST_KILL_STEP"
# How long `setup_barrier` waits: one rank's bookkeeping (rank 0 creating its MLflow run: a
# first SQLite schema, a server's retries) can outlast the process-group timeout on a busy
# machine, and the other ranks would otherwise time out in their first collective.
SETUP_TIMEOUT_S = 300.0


def worker_block(rank: int, world_size: int, workers: int) -> list[int]:
    """The global ids of the workers rank `rank` holds: a contiguous block of K / W."""
    per = workers // world_size
    return list(range(rank * per, (rank + 1) * per))


def check_hardware(hw: dict, workers: int) -> None:
    """Refuse a distributed hardware config that cannot run, naming the key and the value."""
    name = hw.get("name")
    if hw.get("backend") not in BACKENDS:
        raise ConfigError(f"hardware.backend={hw.get('backend')!r}: allowed values are "
                          f"{', '.join(BACKENDS)}")
    ws = hw.get("world_size")
    if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
        raise ConfigError(f"hardware.world_size={ws!r}: must be an integer >= 1")
    if workers % ws:
        raise ConfigError(
            f"workers={workers} cannot be split over hardware.world_size={ws} ranks: each rank "
            f"holds workers / world_size workers, so workers must be a multiple of {ws} "
            f"(e.g. workers={max(ws, workers - workers % ws)}), or choose a world_size that "
            f"divides {workers}")
    t = hw.get("timeout_s")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ConfigError(f"hardware.timeout_s={t!r}: must be a number of seconds > 0")
    port = hw.get("master_port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 1 <= port <= 65535):
        raise ConfigError(f"hardware.master_port={port!r}: must be null (pick a free port) "
                          "or an integer in 1..65535")
    dense = hw.get("dense_collective", "all_reduce")
    if dense not in DENSE_COLLECTIVES:
        raise ConfigError(f"hardware.dense_collective={dense!r}: allowed values are "
                          f"{', '.join(DENSE_COLLECTIVES)}")
    if hw["backend"] == "nccl" and not str(hw.get("device", "")).startswith("cuda"):
        raise ConfigError(f"hardware={name}: backend nccl needs device cuda, got "
                          f"hardware.device={hw.get('device')!r}")


def ensure_process_group(hw: dict) -> None:
    """Join the process group described by the environment (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT: set by torchrun or by suite.launch), unless this process already has one."""
    if dist.is_initialized():
        if dist.get_world_size() != hw["world_size"]:
            raise ConfigError(
                f"hardware.world_size={hw['world_size']}, but this process group has "
                f"{dist.get_world_size()} ranks; pass hardware.world_size="
                f"{dist.get_world_size()}")
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ConfigError(
            f"hardware={hw.get('name')} runs as torch.distributed ranks, and this process is "
            f"not one ({', '.join(missing)} unset): start it with commsgd-run, which launches "
            f"hardware.world_size ranks itself, or with torchrun")
    env_ws = int(os.environ["WORLD_SIZE"])
    if env_ws != hw["world_size"]:
        raise ConfigError(
            f"the launcher started {env_ws} ranks (WORLD_SIZE={env_ws}) but "
            f"hardware.world_size={hw['world_size']}; pass hardware.world_size={env_ws}")
    if hw["backend"] == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(hw["backend"], init_method="env://",
                            timeout=timedelta(seconds=float(hw["timeout_s"])))


class DistributedBackend:
    name = "distributed"

    def __init__(self, num_workers: int, device="cpu", *, dense_collective: str = "all_reduce",
                 group=None, setup_timeout_s: float = SETUP_TIMEOUT_S):
        if not dist.is_initialized():
            raise RuntimeError("DistributedBackend needs an initialised process group "
                               "(suite.backends.distributed.ensure_process_group)")
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if num_workers % self.world_size:
            raise ConfigError(
                f"workers={num_workers} cannot be split over hardware.world_size="
                f"{self.world_size} ranks: workers must be a multiple of {self.world_size}")
        self.num_workers = num_workers
        self.worker_ids = worker_block(self.rank, self.world_size, num_workers)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        # NCCL reduces device tensors; gloo is used here for host tensors.
        nccl = dist.get_backend(group) == "nccl"
        self.comm_device = device if nccl else torch.device("cpu")
        self.dense_collective = dense_collective
        # A second (gloo) group, used only by setup_barrier, with its own long timeout; made
        # here because every rank constructs its backend at the same point of the run.
        self._setup_group = dist.new_group(backend="gloo",
                                           timeout=timedelta(seconds=setup_timeout_s))
        self.wire_bytes = 0
        self.wire_header_bytes = 0
        self.wire_padding_bytes = 0
        self._rounds = 0
        self.ledger = Ledger(self.world_size)
        # NCCL's collectives return before the device has done them: time them to the end
        self._sync = torch.cuda.synchronize if self.comm_device.type == "cuda" else None
        kill_rank = os.environ.get(KILL_RANK_ENV)
        self._kill_at = (int(os.environ.get(KILL_STEP_ENV, "0"))
                         if kill_rank is not None and int(kill_rank) == self.rank else None)

    # -- collectives ------------------------------------------------------------------------
    def _all_reduce(self, x: torch.Tensor, op) -> torch.Tensor:
        buf = x.detach().to(self.comm_device).contiguous().clone()
        dist.all_reduce(buf, op=op, group=self.group)
        return buf.to(x.device)

    def _all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's x (equal shapes), concatenated along dim 0 in rank order."""
        x = x.to(self.comm_device).contiguous()
        out = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(out, x, group=self.group)
        return torch.cat(out)

    def _timed(self, kind: str, x: torch.Tensor, collective, *args):
        """collective(x, *args), recorded in the ledger as `kind` of x's bytes, with its time."""
        start = time.perf_counter()
        out = collective(x, *args)
        if self._sync is not None:
            self._sync(self.comm_device)
        self.ledger.add(kind, x.numel() * x.element_size(), time.perf_counter() - start)
        return out

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over all K workers of a [w, d] tensor (all_reduce of the partial sums)."""
        return self._timed("all_reduce", x.sum(0), self._all_reduce,
                           dist.ReduceOp.SUM) / self.num_workers

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over all K workers of a [w, ...] tensor."""
        return self._timed("all_reduce", x.sum(0), self._all_reduce, dist.ReduceOp.SUM)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max over all K workers of a [w] tensor."""
        return self._timed("all_reduce", x.max(), self._all_reduce, dist.ReduceOp.MAX)

    def max_over_ranks(self, values: list[float]) -> list[float]:
        """Each value's maximum over ranks, all in one collective."""
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return self._all_reduce(t, dist.ReduceOp.MAX).tolist()

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def setup_barrier(self) -> None:
        """A barrier that waits up to setup_timeout_s: for a rank doing slow work that is not
        communication (rank 0 recording the run), not for the training loop's collectives."""
        dist.barrier(group=self._setup_group)

    def all_reduce(self, x: torch.Tensor, op: str = "sum", *, counted: bool = True
                   ) -> torch.Tensor:
        """x [w, ...] reduced over all K workers by op (sum, mean, max, min).

        dense_collective=all_reduce: each rank's partial reduction, all-reduced (for sum and
        mean another summation order than the simulation's). all_gather: every rank's rows,
        gathered in global worker order and reduced as the simulated backend reduces them,
        bit for bit. `counted`: whether the bytes handed over are message bytes (wire_bytes).
        """
        if self.dense_collective == "all_gather":
            if counted:
                self.wire_bytes += x.numel() * x.element_size()
            return REDUCE[op](self._timed("all_gather", x, self._all_gather).to(x.device))
        partial = REDUCE["sum" if op == "mean" else op](x)
        if counted:
            self.wire_bytes += partial.numel() * partial.element_size()
        out = self._timed("all_reduce", partial, self._all_reduce, _REDUCE_OPS[op])
        return out / self.num_workers if op == "mean" else out

    # -- messages ---------------------------------------------------------------------------
    def begin_round(self) -> None:
        """Called by the channel before every up-link round (the test-only kill hook)."""
        if self._kill_at is not None and self._rounds == self._kill_at:
            # test-only hook, see KILL_RANK_ENV above; the time lets a test measure how fast
            # the job ends after a rank dies
            print(f"{KILL_RANK_ENV}: rank {self.rank} exits at {time.time():.3f}",
                  file=sys.stderr, flush=True)
            os._exit(1)
        self._rounds += 1

    def gather_messages(self, compressor, payload, decoded: torch.Tensor, sample=None
                        ) -> torch.Tensor:
        """All K workers' decoded messages [K, d], global order; `decoded` holds this rank's.
        The messages travel as `compressor.encode(payload)` bytes, and every rank decodes the
        same [K, d] tensor the simulated backend holds.

        With a `sample` (partial participation): the workers not sampled send empty messages
        (their size, 0, still travels in the header) and the m sampled ones are decoded,
        [m, d] in global order, the rows the simulated backend selects."""
        msgs = compressor.encode(payload)
        if sample is not None:
            msgs = [m if keep else b"" for m, keep in zip(msgs, sample.held.tolist(),
                                                          strict=True)]
        msgs = self.exchange(msgs)
        if sample is not None:
            msgs = [msgs[k] for k in sample.mask.nonzero().flatten().tolist()]
        everyone = compressor.decode(msgs, decoded.shape[1], decoded.dtype, self.device)
        return compressor.decompress(everyone)

    def exchange(self, msgs: list[bytes]) -> list[bytes]:
        """All K workers' messages, in global worker order, from this rank's w messages."""
        sizes = torch.tensor([len(m) for m in msgs], dtype=SIZE_DTYPE)
        self.wire_header_bytes += sizes.numel() * sizes.element_size()
        all_sizes = self._timed("all_gather", sizes, self._all_gather).cpu().view(
            self.world_size, -1)
        totals = all_sizes.sum(1)
        longest, own = int(totals.max()), int(totals[self.rank])
        blob = np.zeros(longest, dtype=np.uint8)
        blob[:own] = np.frombuffer(b"".join(msgs), dtype=np.uint8)
        self.wire_bytes += own
        self.wire_padding_bytes += longest - own
        gathered = self._timed("all_gather", torch.from_numpy(blob),
                               self._all_gather).cpu().numpy()
        out = []
        for r, row in enumerate(all_sizes.tolist()):
            offset = r * longest
            for n in row:
                out.append(gathered[offset:offset + n].tobytes())
                offset += n
        return out

    def wire_totals(self) -> dict[str, float]:
        """Bytes handed to the collectives so far, per worker, averaged over all K workers."""
        t = torch.tensor([self.wire_bytes, self.wire_header_bytes, self.wire_padding_bytes],
                         dtype=torch.float64)
        payload, header, padding = (self._all_reduce(t, dist.ReduceOp.SUM)
                                    / self.num_workers).tolist()
        return {"comm/wire_bytes": payload, "comm/wire_header_bytes": header,
                "comm/wire_padding_bytes": padding}
