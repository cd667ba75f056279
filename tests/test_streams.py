"""The sampling stream and the channel's bit counters.

- `SharedStream` draws one [K, ...] block per call on every process; a process holding workers
  {2, 3} of K = 4 must see exactly rows 2 and 3 of what a process holding all four sees, call
  after call, and a saved generator state must replay the same draws.
- The channel counts fixed-size messages (the identity compressor's dense vectors, the
  broadcast) in Python integers; those counts must equal the per-payload `bits` the compressor
  reports, summed over the same messages.
"""

from __future__ import annotations

import math

import pytest
import torch

from suite.backends import SimulatedBackend
from suite.comm import Channel
from suite.compressors import build_compressor
from suite.rng import SharedStream, WorkerStreams
from suite.timing import Stopwatch


def test_a_worker_draws_the_same_rows_whichever_process_holds_it():
    everyone = SharedStream(3, "sampling", [0, 1, 2, 3], 4)
    upper = SharedStream(3, "sampling", [2, 3], 4)
    scattered = SharedStream(3, "sampling", [3, 0], 4)  # not a contiguous block
    for _ in range(5):
        all_rows = everyone.uniform(6, dtype=torch.float64)
        assert torch.equal(upper.uniform(6, dtype=torch.float64), all_rows[2:])
        assert torch.equal(scattered.uniform(6, dtype=torch.float64), all_rows[[3, 0]])


def test_streams_differ_by_seed_and_name_and_draw_uniforms():
    a = SharedStream(0, "sampling", range(4), 4).uniform(1000, dtype=torch.float64)
    b = SharedStream(1, "sampling", range(4), 4).uniform(1000, dtype=torch.float64)
    c = SharedStream(0, "other", range(4), 4).uniform(1000, dtype=torch.float64)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    # 4000 U[0,1) draws: the mean's standard error is sqrt(1/12/4000) = 0.0046; 5 of them
    # bound a false failure by ~6e-7
    assert abs(float(a.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / 4000)


def test_saved_state_replays_the_same_draws():
    s = SharedStream(7, "sampling", range(3), 3)
    s.uniform(4)
    state = s.get_state()
    first = s.uniform(4)
    s.set_state(state)
    assert torch.equal(s.uniform(4), first)
    with pytest.raises(ValueError, match="one shared sampling stream"):
        s.set_state(state * 2)


def test_worker_seeds_belong_to_the_worker_not_the_process():
    assert SharedStream(5, "sampling", [2, 3], 4).worker_seeds("delay") == \
        SharedStream(5, "sampling", range(4), 4).worker_seeds("delay")[2:]


def _channel(compressor, w=3):
    backend = SimulatedBackend(w)
    return Channel(backend, compressor, WorkerStreams(0, "compression", range(w)),
                   Stopwatch(backend.device))


@pytest.mark.parametrize("width", [16, 32, 64])
def test_fixed_size_counts_equal_the_payload_bits(width):
    identity = build_compressor("identity", width=width)
    channel = _channel(identity)
    expected = torch.zeros(3, dtype=torch.int64)
    for _ in range(4):
        x = torch.randn(3, 11, dtype=torch.float64)
        channel.send_up(x)
        expected += identity.bits(identity.compress(x))
        channel.broadcast(x[0])
    counts = channel.counters()
    assert torch.equal(counts["bits_up"], expected)
    assert torch.equal(counts["entropy_bits_up"], expected)
    assert torch.equal(counts["bytes_up"], (expected + 7) // 8)
    assert torch.equal(counts["bits_down"], torch.full((3,), 4 * 32 * 11))
    totals = channel.totals()
    assert totals["comm/bits_up"] == 4 * width * 11 and totals["comm/rounds"] == 4.0


def test_counters_survive_a_save_and_load():
    topk = build_compressor("topk", ratio=0.5)  # counted per payload (declares no fixed size)
    source, target = _channel(topk), _channel(topk)
    for _ in range(3):
        x = torch.randn(3, 8)
        source.send_up(x)
        source.broadcast(x[0])
    target.load_counters(source.counters())
    for key, value in source.counters().items():
        assert torch.equal(target.counters()[key], value), key
