"""The communication protocol (suite/comm): the adapter reproduces compress → ship → mean, and
schemes a stateless compressor cannot express (tests/comm_schemes.py) work: shared randomness
aggregated by all-reduce, a custom aggregate, per-worker state, a stateful compressed down-link,
lanes, a checkpoint of the states, and the same results on 2 gloo ranks as in one process."""

from __future__ import annotations

import io
import math
import os
import time

import pytest
import torch

from suite.backends import SimulatedBackend
from suite.comm import Channel, CommState, Env, Uplink, dense_downlink, downlink_of, uplink_of
from suite.compressors import REGISTRY, build_compressor
from suite.rng import WorkerStreams
from suite.timing import Stopwatch
from tests.comm_schemes import error_feedback, majority_vote, shared_randk, shifted_downlink

K, D = 4, 20


def channel(uplink, *, backend=None, downlink=None, seed=0):
    backend = backend or SimulatedBackend(K)
    return Channel(backend, uplink, WorkerStreams(seed, "compression", backend.worker_ids),
                   Stopwatch(backend.device), downlink=downlink, seed=seed)


def inputs(rounds: int, seed: int = 0, d: int = D) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(K, d, dtype=torch.float64, generator=g) for _ in range(rounds)]


# -- the adapter -----------------------------------------------------------------------------
# the adapter's compressors: the stateless ones (a factory may return a scheme of its own,
# PowerSGD's Uplink, which no adapter wraps)
STATELESS_COMPRESSORS = [n for n in sorted(REGISTRY) if not isinstance(build_compressor(n),
                                                                       Uplink)]


@pytest.mark.parametrize("name", STATELESS_COMPRESSORS)
def test_the_adapter_is_compress_then_the_mean_of_the_decoded_messages(name):
    c = build_compressor(name)
    ch = channel(c)
    assert ch.compressor.compressor is c and ch.compressor.kind == c.kind
    streams = WorkerStreams(0, "compression", range(K))
    bits = torch.zeros(K, dtype=torch.int64)
    for x in inputs(3, d=300):
        own, mean = ch.send_up(x)
        if c.needs_shared_scale:
            payload = c.compress(x, streams, c.local_scale(x).max())
        else:
            payload = c.compress(x, streams)
        expected = c.decompress(payload)
        assert torch.equal(own, expected)
        assert torch.equal(mean, expected.mean(0))
        bits += c.bits(payload)
    assert torch.equal(ch.counters()["bits_up"], bits)
    assert ch.rounds == 3


def test_the_default_downlink_is_the_float32_broadcast_at_32_bits_per_coordinate():
    ch = channel(build_compressor("identity"))
    v = torch.randn(D, dtype=torch.float64)
    assert torch.equal(ch.broadcast(v), v.to(torch.float32).to(torch.float64))
    assert int(ch.counters()["bits_down"][0]) == 32 * D
    half = channel(build_compressor("identity"), downlink=dense_downlink(16))
    assert torch.equal(half.broadcast(v), v.to(torch.float16).to(torch.float64))
    assert int(half.counters()["bits_down"][0]) == 16 * D


# -- schemes no stateless compressor expresses -------------------------------------------------
def test_shared_randk_keeps_the_same_coordinates_on_every_worker_and_sends_no_indices():
    k = 5
    ch = channel(shared_randk(k))
    for x in inputs(4):
        own, mean = ch.send_up(x)
        support = own != 0
        assert int(support[0].sum()) == k and bool((support == support[0]).all())
        # all-reduced values, scaled after the mean: equal to the mean of the rows up to
        # one float64 rounding of each product
        assert torch.allclose(mean, own.mean(0), rtol=1e-15, atol=0)
    assert torch.equal(ch.counters()["bits_up"], torch.full((K,), 4 * 32 * k))


def test_shared_randk_is_unbiased():
    """E[aggregate] = mean of the rows. Each coordinate's estimate is (d/k)·x̄_j·[j ∈ S] with
    variance x̄_j²(d/k − 1); over N rounds its mean's standard error is |x̄_j|·√((d/k−1)/N).
    Six of those per coordinate bound a false failure among D = 20 coordinates by ~4e-8."""
    k, N = 5, 4000
    ch = channel(shared_randk(k))
    x = inputs(1)[0]
    total = torch.zeros(D, dtype=torch.float64)
    for _ in range(N):
        total += ch.send_up(x)[1]
    xbar = x.mean(0)
    sigma = xbar.abs() * math.sqrt((D / k - 1) / N)
    assert bool(((total / N - xbar).abs() <= 6 * sigma).all())


def test_majority_vote_is_the_sign_of_the_sum_of_signs_not_of_the_mean():
    ch = channel(majority_vote())
    x = torch.tensor([[10.0, -1.0, 0.0], [-1.0, 2.0, -3.0], [-1.0, 2.0, 4.0],
                      [-1.0, -5.0, 1.0]], dtype=torch.float64)
    own, vote = ch.send_up(x)
    assert torch.equal(own, torch.tensor([[1.0, -1, 1], [-1, 1, -1], [-1, 1, 1], [-1, -1, 1]],
                                         dtype=torch.float64))
    assert torch.equal(vote, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    assert float(x.mean(0)[0]) > 0  # the mean's sign would be + where the vote is −
    assert torch.equal(ch.counters()["bits_up"], torch.full((K,), 3))  # 1 bit per coordinate


def test_error_feedback_state_is_per_worker_and_telescopes():
    """Σ_t C(p_t) + e_T = Σ_t x_t: the memory holds exactly what has not been delivered."""
    ch = channel(error_feedback(build_compressor("topk", k=2, ratio=None)))
    sent = torch.zeros(K, D, dtype=torch.float64)
    xs = inputs(6)
    for x in xs:
        sent += ch.send_up(x)[0]
    e = ch.lanes["main"].up_state.workers.e
    assert e.shape == (K, D)
    assert torch.allclose(sent + e, sum(xs), rtol=1e-13, atol=1e-13)
    assert int(ch.counters()["bits_up"][0]) == 6 * (2 * 32 + 2 * math.ceil(math.log2(D)))


def test_a_compressed_downlink_counts_its_message():
    topk = build_compressor("topk", k=3, ratio=None)
    ch = channel(build_compressor("identity"), downlink=downlink_of(topk))
    v = torch.randn(D, dtype=torch.float64)
    got = ch.broadcast(v)
    expected = topk.decompress(topk.compress(v[None], None))[0]
    assert torch.equal(got, expected)
    assert torch.equal(ch.counters()["bits_down"],
                       torch.full((K,), 3 * 32 + 3 * math.ceil(math.log2(D))))


def test_a_shifted_downlink_converges_to_a_repeated_vector_at_the_contraction_rate():
    """Top-k is a deterministic C(k/d): ‖v − h_{t+1}‖² ≤ (1 − k/d)‖v − h_t‖² every round."""
    k = 4
    ch = channel(build_compressor("identity"),
                 downlink=shifted_downlink(build_compressor("topk", k=k, ratio=None)))
    v = torch.randn(D, dtype=torch.float64)
    start = err = float(v.square().sum())
    for _ in range(7):
        new = float((v - ch.broadcast(v)).square().sum())
        assert new <= (1 - k / D) * err * (1 + 1e-12)
        err = new
    assert err <= (1 - k / D) ** 7 * start * (1 + 1e-12) and err < 0.5 * start
    bits_per = 32 * k + k * math.ceil(math.log2(D))
    assert int(ch.counters()["bits_down"][0]) == 7 * bits_per


def test_lanes_keep_separate_states_and_share_the_counters():
    topk = build_compressor("topk", k=2, ratio=None)
    ch = channel(error_feedback(topk))
    other = ch.lane("control")
    x, y = inputs(2)
    own_x, _ = ch.send_up(x)
    own_y, _ = other.send_up(y)
    assert torch.equal(ch.lanes["main"].up_state.workers.e, x - own_x)
    assert torch.equal(other.up_state.workers.e, y - own_y)
    assert ch.rounds == 2 and int(ch.counters()["bits_up"][0]) == 2 * (64 + 2 * 5)
    dense = ch.lane("dense", uplink=build_compressor("identity"))
    dense.send_up(x)
    assert int(ch.counters()["bits_up"][0]) == 2 * (64 + 2 * 5) + 32 * D
    with pytest.raises(ValueError, match="exists already"):
        ch.lane("control")


def test_scheme_states_and_shared_streams_survive_a_checkpoint():
    def build():
        ch = channel(error_feedback(build_compressor("qsgd", levels=2)),
                     downlink=shifted_downlink(build_compressor("randk", k=3, ratio=None)))
        ch.lane("shared", uplink=shared_randk(4))
        return ch

    def round_of(ch, x) -> list[torch.Tensor]:
        return [*ch.send_up(x), *ch.lanes["shared"].send_up(x), ch.broadcast(x[0])]

    a, b = build(), build()
    xs = inputs(6)
    for x in xs[:3]:
        round_of(a, x)
    buf = io.BytesIO()
    torch.save({"comm": a.scheme_state(), "streams": a.streams.get_state(),
                "counters": a.counters()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    b.load_scheme_state(saved["comm"])
    b.streams.set_state(saved["streams"])
    b.load_counters(saved["counters"])
    for x in xs[3:]:
        for left, right in zip(round_of(a, x), round_of(b, x), strict=True):
            assert torch.equal(left, right)
    for key, value in a.counters().items():
        assert torch.equal(b.counters()[key], value), key
    with pytest.raises(ValueError, match="lanes"):
        channel(build_compressor("identity")).load_scheme_state(a.scheme_state())


def test_init_is_told_the_held_workers_and_the_message():
    seen = []
    base = uplink_of(build_compressor("identity"))

    def init(env):
        seen.append(env)
        return CommState((), ())

    from dataclasses import replace

    ch = channel(replace(base, init=init), seed=7)
    ch.send_up(torch.zeros(K, 5, dtype=torch.float32))
    ch.send_up(torch.zeros(K, 5, dtype=torch.float32))
    assert seen == [Env(5, torch.float32, torch.device("cpu"), (0, 1, 2, 3), K, 7)]


# -- the same on 2 gloo ranks ------------------------------------------------------------------
WORLD, ROUNDS = 2, 5
DENSE_RTOL = 1e-12  # float64 partial sums in another order, no feedback across rounds
CASES = {  # name: (uplink factory, downlink factory or None, dense_collective, exact)
    "shared_randk": (lambda: shared_randk(5), None, "all_reduce", False),
    "shared_randk_all_gather": (lambda: shared_randk(5), None, "all_gather", True),
    "majority_vote": (majority_vote, None, "all_reduce", True),
    "ef_topk": (lambda: error_feedback(build_compressor("topk", k=3, ratio=None)), None,
                "all_reduce", True),
    "ef_qsgd": (lambda: error_feedback(build_compressor("qsgd", levels=2)), None,
                "all_reduce", True),
    "terngrad_shifted_downlink": (
        lambda: build_compressor("terngrad"),
        lambda: shifted_downlink(build_compressor("randk", k=4, ratio=None, scaled=False)),
        "all_reduce", True),
}


def _exercise(ch) -> dict:
    """ROUNDS rounds of up-link and down-link on the held rows of the same inputs."""
    ids = list(ch.backend.worker_ids)
    out = {"own": [], "aggregate": [], "down": []}
    for x in inputs(ROUNDS, seed=11):
        own, aggregate = ch.send_up(x[ids])
        out["own"].append(own)
        out["aggregate"].append(aggregate)
        out["down"].append(ch.broadcast(aggregate))
    out["state"] = ch.lanes["main"].up_state
    out["down_state"] = ch.lanes["main"].down_state
    out["counters"] = ch.counters()
    return out


def _protocol_rank(rank: int, port: int, out_dir: str) -> None:
    from suite.backends.distributed import DistributedBackend

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    results = {}
    for name, (up, down, dense, _) in CASES.items():
        backend = DistributedBackend(K, "cpu", dense_collective=dense)
        results[name] = _exercise(channel(up(), backend=backend,
                                          downlink=None if down is None else down(), seed=5))
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    from suite.launch import host_store

    out = tmp_path_factory.mktemp("protocol")
    store = host_store(None, 60)
    ctx = mp.start_processes(_protocol_rank, args=(store.port, str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    try:
        deadline = time.monotonic() + 300
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the protocol ranks did not finish"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _same(a, b, exact: bool, rtol: float = DENSE_RTOL) -> bool:
    if exact:
        return torch.equal(a, b)
    return torch.allclose(a, b, rtol=rtol, atol=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_each_scheme_gives_the_same_results_on_two_ranks_as_in_one_process(ranks, name):
    up, down, _, exact = CASES[name]
    sim = _exercise(channel(up(), downlink=None if down is None else down(), seed=5))
    per = K // WORLD
    for rank, results in enumerate(ranks):
        got = results[name]
        rows = slice(rank * per, (rank + 1) * per)
        for t in range(ROUNDS):
            assert torch.equal(got["own"][t], sim["own"][t][rows]), (rank, t)
            assert _same(got["aggregate"][t], sim["aggregate"][t], exact), (rank, t)
            # the float32 broadcast of aggregates that differ by a rounding may differ by one
            # float32 ulp (2^-23 relative)
            assert _same(got["down"][t], sim["down"][t], exact, 2.0**-23), (rank, t)
        # per-worker state: this rank's rows of the simulated state; server state: the same
        for mine, full in zip(got["state"].workers, sim["state"].workers, strict=True):
            assert torch.equal(mine, full[rows])
        for mine, full in zip(got["down_state"].server, sim["down_state"].server, strict=True):
            assert _same(mine, full, exact)
        for key, value in sim["counters"].items():
            assert torch.equal(got["counters"][key], value[rows]), key
    # the runs moved: a parity of zeros would prove nothing
    assert float(sim["aggregate"][-1].abs().sum()) > 0
