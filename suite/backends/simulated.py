"""All K workers in one process: every collective is a reduction over dimension 0.

No bytes move, but the ledger (suite.costmodel.Ledger) records the collectives that the
distributed backend would perform with one worker per rank (W = K): an all_reduce of the
[d] partial sum for `mean`, `sum` and identity messages, of the scalar for `max`; for
compressed messages an all_gather of the int64 size, then one of the longest message's bytes
(each rank's part is padded to it). The report projects a run onto real links from it.
"""

from __future__ import annotations

import torch

from suite.costmodel import Ledger

SIZE_BYTES = 8  # the distributed backend's int64 size header, one per message

# Reductions over the worker axis (dimension 0); the distributed backend reduces the same way
# within a rank, then across ranks.
REDUCE = {
    "sum": lambda x: x.sum(0),
    "mean": lambda x: x.mean(0),
    "max": lambda x: x.amax(0),
    "min": lambda x: x.amin(0),
}


class SimulatedBackend:
    name = "simulated"

    def __init__(self, num_workers: int, device="cpu"):
        self.num_workers = num_workers
        self.worker_ids = list(range(num_workers))
        self.device = torch.device(device)
        self.rank, self.world_size = 0, 1
        # Bytes handed to collectives; the simulated backend hands none (they are counted by the
        # compressor's accounting only), the distributed one counts real payloads here.
        self.wire_bytes = 0
        self.ledger = Ledger(num_workers)

    def _reduced(self, x: torch.Tensor) -> int:
        """Bytes of one rank's partial sum of the [w, ...] tensor x (an all_reduce's input)."""
        return x[0].numel() * x.element_size()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over all K workers of a [w, d] tensor."""
        self.ledger.add("all_reduce", self._reduced(x))
        return x.mean(0)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        """Max over all K workers of a [w] tensor."""
        self.ledger.add("all_reduce", x.element_size())
        return x.max()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over all K workers of a [w, ...] tensor."""
        self.ledger.add("all_reduce", self._reduced(x))
        return x.sum(0)

    def all_reduce(self, x: torch.Tensor, op: str = "sum", *, counted: bool = True
                   ) -> torch.Tensor:
        """x [w, ...] reduced over all K workers by op (sum, mean, max, min)."""
        self.ledger.add("all_reduce", self._reduced(x))
        if op == "mean":  # the identity compressor's messages, every step: no table lookup
            return x.mean(0)
        return REDUCE[op](x)

    def gather_messages(self, compressor, payload, decoded: torch.Tensor, sample=None
                        ) -> torch.Tensor:
        """Every worker's decoded message [K, d] (with a `sample`, the sampled workers' [m, d],
        global order). In one process the decoded batch is already here; the distributed
        backend ships `compressor.encode(payload)` instead."""
        self.ledger.add("all_gather", SIZE_BYTES)
        self.ledger.add("all_gather", _longest_message(compressor, payload, decoded.shape[1]))
        return decoded if sample is None else decoded[sample.mask]

    def exchange(self, msgs: list[bytes]) -> list[bytes]:
        """All K workers' messages: in one process, the ones given."""
        self.ledger.add("all_gather", SIZE_BYTES)
        self.ledger.add("all_gather", max((len(m) for m in msgs), default=0))
        return list(msgs)

    def max_over_ranks(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def barrier(self) -> None:
        pass


def _longest_message(codec, payload, d: int):
    """Bytes of the longest of the workers' encoded messages: what each rank's part of the
    message all_gather is padded to. From the codec's own size where it declares one (a
    fixed size, or bits per message); a scheme's codec that declares neither is encoded."""
    fixed = getattr(codec, "fixed_bits", None)
    if fixed is not None:
        return (fixed(d) + 7) // 8
    bits = getattr(codec, "bits", None)
    if bits is not None:
        return ((bits(payload) + 7) // 8).max()  # a 0-d tensor: summed lazily
    return max((len(m) for m in codec.encode(payload)), default=0)
