"""Random streams that do not depend on how workers are laid out over processes.

A worker draws the same numbers whether the simulated backend holds all K workers in one
process or torch.distributed spreads them over ranks; that is what makes the simulated and
distributed runs produce identical iterates. Two ways to get there, for two sizes of draw:

- `WorkerStreams`: every worker owns one `torch.Generator`, seeded from (run seed, stream name,
  global worker id), and one generator call per held worker fills that worker's row. Used for
  compression, whose draws are d numbers per worker: each rank draws only its own rows.
- `SharedStream`: one generator, seeded from (run seed, stream name), drawn for all K workers at
  once on every rank; a rank keeps its own rows. Used for minibatch sampling, whose draws are b
  numbers per worker: drawing all K·b of them everywhere costs nothing, and one generator call
  replaces K of them on the hot path (at K = 16 the per-worker calls were a fifth of a step).
  `common_uniform` draws numbers every worker shares (a shared seed's indices, a coin, a sample
  of clients): the channel's `link.shared` and `link.server` are such streams.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, stream: str, worker: int) -> int:
    """A 63-bit seed for `stream` of `worker`, stable across Python versions and processes."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SharedStream:
    """One stream for all K workers: each draw is [K, ...], and a process keeps its held rows.

    Every rank draws the same [K, ...] block, so its generator stays in step with every other
    rank's and a worker's row does not depend on which rank holds it.
    """

    def __init__(self, seed: int, stream: str, worker_ids: list[int], num_workers: int,
                 device="cpu"):
        self.worker_ids = list(worker_ids)
        self.num_workers = num_workers
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(seed, stream, -1))  # -1: no single worker
        first = self.worker_ids[0] if self.worker_ids else 0
        contiguous = self.worker_ids == list(range(first, first + len(self.worker_ids)))
        # held rows as a slice where possible (a view, no copy); an index otherwise
        self._rows = (slice(first, first + len(self.worker_ids)) if contiguous else
                      torch.as_tensor(self.worker_ids, device=self.device))
        self._all = contiguous and len(self.worker_ids) == num_workers

    def __len__(self) -> int:
        return len(self.worker_ids)

    def uniform(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """U[0, 1) draws of shape [w, *shape]: the held rows of one [K, *shape] draw."""
        out = torch.empty((self.num_workers, *shape), dtype=dtype, device=self.device)
        out.uniform_(0.0, 1.0, generator=self.generator)
        return out if self._all else out[self._rows]

    def common_uniform(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """U[0, 1) draws of `shape` shared by all workers (not split by worker): identical on
        every rank, for what every worker must agree on (a shared seed's indices, a coin)."""
        out = torch.empty(shape, dtype=dtype, device=self.device)
        return out.uniform_(0.0, 1.0, generator=self.generator)

    def worker_seeds(self, purpose: str) -> list[int]:
        """One integer seed per held worker for `purpose`, from this stream's seed and the
        worker's global id: per-worker randomness drawn outside the stream (delays)."""
        return [derive_seed(self.generator.initial_seed(), purpose, k) for k in self.worker_ids]

    def get_state(self) -> list[torch.Tensor]:
        return [self.generator.get_state()]

    def set_state(self, states: list[torch.Tensor]) -> None:
        if len(states) != 1:
            raise ValueError(f"checkpoint holds {len(states)} sampling generator states; this "
                             f"version keeps one shared sampling stream")
        self.generator.set_state(states[0])


def grid_bits(dtype: torch.dtype) -> int:
    """G, the bits of a grid uniform of this dtype: its significand width (24 or 53), so that
    every U·2^-G with U < 2^G is exact."""
    return {torch.float32: 24, torch.float64: 53}[dtype]


def _fill_grid_row(row: torch.Tensor, g: torch.Generator, integer: bool | None = None
                   ) -> torch.Tensor:
    """row ← grid uniforms from g: torch's own uniforms on the CPU, U·2^-G from integer draws
    elsewhere (`integer` forces either way, for tests)."""
    if not (row.device.type != "cpu" if integer is None else integer):
        return row.uniform_(0.0, 1.0, generator=g)
    bits = grid_bits(row.dtype)
    return row.random_(0, 2**bits, generator=g).mul_(2.0**-bits)


class WorkerStreams:
    """One generator per held worker, for one named purpose (sampling, compression, ...)."""

    def __init__(self, seed: int, stream: str, worker_ids: list[int], device="cpu"):
        self.worker_ids = list(worker_ids)
        self.device = torch.device(device)
        self.generators = []
        for k in self.worker_ids:
            g = torch.Generator(device=self.device)
            g.manual_seed(derive_seed(seed, stream, k))
            self.generators.append(g)

    def __len__(self) -> int:
        return len(self.generators)

    def uniform(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """U[0, 1) draws of shape [w, *shape], row k from worker k's own stream."""
        out = torch.empty((len(self), *shape), dtype=dtype, device=self.device)
        for row, g in zip(out, self.generators, strict=True):
            row.uniform_(0.0, 1.0, generator=g)
        return out

    def fill_grid(self, out: torch.Tensor) -> torch.Tensor:
        """Fill out [w, n] (rows contiguous) with grid uniforms, row k from worker k's stream,
        continuing where its last draw stopped.

        A grid uniform is U·2^-G with U uniform on {0, ..., 2^G − 1} and G = `grid_bits` of
        out's dtype (24 for float32, 53 for float64): every value is exact, and the exact
        Bernoulli draws of `suite/compressors/bernoulli.py` rest on that. On the CPU torch's
        own uniforms are exactly this (G bits of one 32- or 64-bit draw, times 2^-G; a test
        checks it), so filling a row in pieces draws the same numbers as filling it at once.
        CUDA's uniforms are not on a grid (curand's (0, 1] floats): there U is drawn as an
        integer and scaled.
        """
        if self.device.type == "cpu":  # the loop is on the hot path: no call per row
            for row, g in zip(out, self.generators, strict=True):
                row.uniform_(0.0, 1.0, generator=g)
        else:
            for row, g in zip(out, self.generators, strict=True):
                _fill_grid_row(row, g)
        return out

    def grid_uniform_each(self, counts: list[int], dtype=torch.float32) -> torch.Tensor:
        """counts[k] further grid uniforms from held worker k's stream; all workers' draws
        concatenated in row order: [Σ counts]."""
        parts = [_fill_grid_row(torch.empty(n, dtype=dtype, device=self.device), g)
                 for n, g in zip(counts, self.generators, strict=True) if n]
        if not parts:
            return torch.empty(0, dtype=dtype, device=self.device)
        return torch.cat(parts)

    def normal(self, *shape: int, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws of shape [w, *shape], one stream per worker."""
        out = torch.empty((len(self), *shape), dtype=dtype, device=self.device)
        for row, g in zip(out, self.generators, strict=True):
            row.normal_(0.0, 1.0, generator=g)
        return out

    def get_state(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        if len(states) != len(self.generators):
            raise ValueError(
                f"checkpoint holds {len(states)} generator states, this process holds "
                f"{len(self.generators)} workers"
            )
        for g, s in zip(self.generators, states, strict=True):
            g.set_state(s)
