"""torch.distributed runs (gloo, 2 processes on this host) against the simulated backend.

Parity: the same K and seed run simulated and on 2 ranks give the same iterates. Where messages
travel as the compressor's bytes (every compressed run, and the identity compressor with
hardware.dense_collective=all_gather) the distributed mean is computed from the same [K, d]
tensor by the same op, so histories, bit counts and final parameters are equal exactly. Where
dense data goes through all_reduce of per-rank partial sums (identity by default, Local SGD's
model average) the summation order differs: equal to DENSE_RTOL.
"""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from suite.config import ConfigError
from suite.costmodel import LEDGER_KEYS
from suite.launch import GRACE_S, TERM_WAIT_S, host_store
from tests.conftest import ROOT, make_cfg

WORLD = 2
# float64 partial sums reduced in another order: a few ulps per step, compounded over STEPS
DENSE_RTOL = 1e-12
STEPS, EVERY = 30, 5
COMMON = ("workers=4", f"steps={STEPS}", f"eval_every={EVERY}", "seed=3", "task.l2=0.01")
JOBS = {  # name: (overrides, exact)
    "sgd": ((), False),
    "sgd_all_gather": (("hardware.dense_collective=all_gather",), True),
    "ef_sgd_topk": (("algorithm=ef_sgd", "compressor=topk", "compressor.k=3",
                     "compressor.ratio=null"), True),
    "diana_quant_p": (("algorithm=diana", "compressor=quant_p", "compressor.p=inf",
                       "batch_size=full"), True),
    # H=3 with evaluations every 5 steps: params() averages local models that differ
    "local_sgd": (("algorithm=local_sgd", "algorithm.local_steps=3"), False),
    "qsgd": (("algorithm=qsgd", "compressor.levels=4"), True),
    "terngrad": (("compressor=terngrad",), True),
    # EF21-SGD: top-k messages as bytes, the server's g broadcast
    "ef21_sgd_topk": (("algorithm=ef21", "compressor=topk", "compressor.k=3",
                       "compressor.ratio=null"), True),
    # MARINA: the shared coin picks the same branch on both ranks; its dense rounds are
    # all-reduced partial sums, so equal to DENSE_RTOL (exact with all_gather, below)
    "marina_randk": (("algorithm=marina", "compressor.k=3", "compressor.ratio=null"), False),
    # PowerSGD's two all-reduces (P, then Q): partial sums, equal to DENSE_RTOL
    "ef_sgd_powersgd": (("algorithm=ef_sgd", "compressor=powersgd", "lr=0.5"), False),
    # the same two with every all-reduce gathered and reduced in global worker order: their
    # messages vary in size (MARINA) or are no bytes (PowerSGD's factors), so they are not in
    # the wire-bytes test; test_all_gather_makes_marina_and_powersgd_exact checks them exactly
    "marina_all_gather": (("algorithm=marina", "compressor.k=3", "compressor.ratio=null",
                           "hardware.dense_collective=all_gather"), False),
    "ef_sgd_powersgd_all_gather": (("algorithm=ef_sgd", "compressor=powersgd", "lr=0.5",
                                    "hardware.dense_collective=all_gather"), False),
}
ALL_GATHER_EXACT = ("marina_all_gather", "ef_sgd_powersgd_all_gather")
# PowerSGD on CIFAR ResNet-20 (FakeData, float32): per-layer matrices, two steps
RESNET = ("task=cifar10_resnet", "task.dataset=fake", "task.fake_size=48",
          "task.fake_test_size=16", "task.eval_batches=1", "task.eval_batch_size=16",
          "workers=4", "batch_size=2", "steps=2", "eval_every=1", "seed=3",
          "algorithm=ef_sgd", "compressor=powersgd", "lr=0.05")
RESNET_JOBS = {"resnet_powersgd": ()}
DISTRIBUTED_ONLY = ("comm/bytes_up", "comm/wire_bytes", "comm/wire_header_bytes",
                    "comm/wire_padding_bytes")
# The collectives a step performs depend on the rank layout (the simulated ledger is that of
# one worker per rank, W = K; here W = 2 ranks of 2): compared on their own below.
LEDGER = LEDGER_KEYS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fast() -> None:
    """One thread (two ranks share two cores: more threads only contend) and no plots (they
    cost seconds each and are not what these tests are about)."""
    import suite.artifacts

    torch.set_num_threads(1)
    suite.artifacts.plot_convergence = lambda *args, **kwargs: None


def _parity_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank: every job of JOBS in turn, in one process group (one start-up for all)."""
    from suite.runner import execute

    # the test process serves the store, as suite.launch does (no free-port race)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    _fast()
    results = {}
    for name, (overrides, _) in JOBS.items():
        cfg = make_cfg("hardware=multi_cpu", "hardware.timeout_s=60", *COMMON, *overrides)
        r = execute(cfg, output_dir=f"{out_dir}/{name}-{rank}")
        results[name] = (r.status, r.history, r.params)
    for name, overrides in RESNET_JOBS.items():
        cfg = make_cfg("hardware=multi_cpu", "hardware.timeout_s=60", *RESNET, *overrides)
        r = execute(cfg, output_dir=f"{out_dir}/{name}-{rank}")
        results[name] = (r.status, r.history, r.params)
    # messages of unequal sizes (none of the compressors above makes any): each rank sends 2
    # messages, rank 0 of 0 and 1 bytes, rank 1 of 3 and 4, so rank 0 pads 6 bytes
    from suite.backends.distributed import DistributedBackend

    backend = DistributedBackend(4, "cpu")
    got = backend.exchange([bytes([10 * rank + i]) * (3 * rank + i) for i in range(2)])
    results["exchange"] = (got, backend.wire_bytes, backend.wire_header_bytes,
                           backend.wire_padding_bytes, backend.ledger.totals())
    results["powersgd_channel"] = _powersgd_rounds(DistributedBackend, rank)
    if rank == 0:
        torch.save(results, f"{out_dir}/results.pt")


def _powersgd_rounds(backend_type, rank=None):
    """Two PowerSGD rounds (the random start, then warm-started) on ResNet-20's shapes, for
    each dense collective: {collective: [(own, aggregate, bits_up)]}, the held workers' rows
    of one fixed [4, d] batch in, on this layout."""
    from suite.comm import Channel
    from suite.compressors import build_compressor
    from suite.rng import WorkerStreams
    from suite.timing import Stopwatch
    from tests.test_powersgd import resnet20_shapes

    shapes = resnet20_shapes()
    d = sum(math.prod(s) for s in shapes)
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(5))
    out = {}
    for collective in ("all_reduce", "all_gather"):
        backend = backend_type(4) if rank is None else backend_type(
            4, "cpu", dense_collective=collective)
        ch = Channel(backend, build_compressor("powersgd", rank=2),
                     WorkerStreams(3, "compression", backend.worker_ids),
                     Stopwatch(backend.device), seed=3, shapes=shapes)
        held = x[backend.worker_ids]
        out[collective] = [(*ch.send_up(held), ch.counters()["bits_up"].clone())
                           for _ in range(2)]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launches):
    """{name: (simulated (status, history, params), distributed rank 0's)}. Takes `launches`
    so that, in one pytest process, the command-line scenarios run meanwhile."""
    import torch.multiprocessing as mp

    import suite.artifacts
    from suite.runner import execute

    out = tmp_path_factory.mktemp("parity")
    threads, plot = torch.get_num_threads(), suite.artifacts.plot_convergence
    store = host_store(None, 60)
    # start the ranks first, then run the simulated jobs while they work
    ctx = mp.start_processes(_parity_rank, args=(store.port, str(out)), nprocs=WORLD,
                             join=False, start_method="spawn")
    try:
        _fast()
        simulated = {}
        for name, (overrides, _) in JOBS.items():
            simulated_overrides = [o for o in overrides if not o.startswith("hardware.")]
            r = execute(make_cfg(*COMMON, *simulated_overrides), output_dir=out / f"{name}-sim")
            simulated[name] = (r.status, r.history, r.params)
        for name in RESNET_JOBS:
            r = execute(make_cfg(*RESNET), output_dir=out / f"{name}-sim")
            simulated[name] = (r.status, r.history, r.params)
        # a failed rank raises here with its traceback; a hung one is bounded by timeout_s
        deadline = time.monotonic() + 300
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the distributed parity jobs did not finish"
    finally:
        torch.set_num_threads(threads)
        suite.artifacts.plot_convergence = plot
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    distributed = torch.load(out / "results.pt", weights_only=False)
    runs = {name: (simulated[name], distributed[name]) for name in (*JOBS, *RESNET_JOBS)}
    runs["exchange"] = distributed["exchange"]
    runs["powersgd_channel"] = distributed["powersgd_channel"]
    return runs


def curves(history, skip=()) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for key, value, step in history:
        if not key.startswith("time/") and key not in skip:
            out.setdefault(key, []).append((step, value))
    return out


@pytest.mark.parametrize("name", list(JOBS))
def test_distributed_run_equals_simulated_run(runs, name):
    (sim_status, sim_hist, sim_x), (dist_status, dist_hist, dist_x) = runs[name]
    exact = JOBS[name][1]
    assert sim_status == dist_status == "FINISHED"
    sim, dist = curves(sim_hist, skip=LEDGER), curves(dist_hist, skip=DISTRIBUTED_ONLY + LEDGER)
    assert sim.keys() == dist.keys()
    assert len(sim["train/loss"]) == STEPS // EVERY + 1
    for key in ("comm/bits_up", "comm/bits_up_total", "comm/bits_up_alt_code",
                "comm/bits_down", "comm/rounds"):
        assert dist[key] == sim[key], key  # bit counts: always exact
    if exact:
        assert dist == sim
        assert torch.equal(dist_x, sim_x)
    else:
        for key in sim:
            steps_s, values_s = zip(*sim[key], strict=True)
            steps_d, values_d = zip(*dist[key], strict=True)
            assert steps_s == steps_d
            assert torch.allclose(torch.tensor(values_d), torch.tensor(values_s),
                                  rtol=DENSE_RTOL, atol=0), key
        assert torch.allclose(dist_x, sim_x, rtol=DENSE_RTOL, atol=1e-15)
    # the run really moved: a test of parity between two frozen runs would prove nothing
    assert sim["train/loss"][-1][1] < 0.9 * sim["train/loss"][0][1]


@pytest.mark.parametrize("name", ALL_GATHER_EXACT)
def test_all_gather_makes_marina_and_powersgd_exact(runs, name):
    """With dense_collective=all_gather every rank reduces all K rows in global worker order,
    as the simulation does: MARINA's dense rounds and PowerSGD's P and Q means are then the
    simulated ones bit for bit, and so is every logged value and the final model."""
    (_, sim_hist, sim_x), (_, dist_hist, dist_x) = runs[name]
    # the collective ledger describes each layout's own collectives (W ranks vs one worker per
    # rank), so it is left out, as in the parity test above
    assert curves(dist_hist, skip=DISTRIBUTED_ONLY + LEDGER) == curves(sim_hist, skip=LEDGER)
    assert torch.equal(dist_x, sim_x)


def test_marina_bits_vary_with_the_shared_coin_identically_on_both_layouts(runs):
    """The per-round up-link size is 32d on the coin's rounds and bits(rand-3) otherwise: the
    logged increments take both values, and the same ones on both layouts."""
    (_, sim_hist, sim_x), (_, dist_hist, _) = runs["marina_randk"]
    d = sim_x.numel()
    bits = [v for _, v in curves(sim_hist)["comm/bits_up"]]
    steps = {b - a for a, b in zip(bits, bits[1:], strict=False)}
    assert len(steps) > 1  # over 5 rounds between logs: mixtures of dense and compressed
    rand3 = 3 * 32 + 3 * math.ceil(math.log2(d))
    for inc in steps:  # every increment is n·32d + (5 − n)·bits(Q) for some 0 ≤ n ≤ 5
        assert any(inc == n * 32 * d + (EVERY - n) * rand3 for n in range(EVERY + 1)), inc
    assert curves(dist_hist)["comm/bits_up"] == curves(sim_hist)["comm/bits_up"]


def test_powersgd_rounds_on_resnet20_shapes_over_gloo_equal_the_simulation(runs):
    """One fixed [4, d] batch on ResNet-20's layer shapes, two rounds of PowerSGD's two
    all-reduces over gloo (rank 0 holds workers 0 and 1). all_gather: the P and Q means are
    reduced in the simulation's order, so rank 0's decoded messages, the aggregate, the warm
    start and the bits equal the simulation's bit for bit. all_reduce: float32 partial sums
    summed in another order, a few roundings (~1e-7 relative) of the mean P, carried through
    QR: equal to 1e-4 of the largest entry (the float32 tolerance of test_powersgd's full-rank
    test), bits exactly."""
    from suite.backends import SimulatedBackend

    simulated = _powersgd_rounds(SimulatedBackend)
    distributed = runs["powersgd_channel"]
    for collective, rounds in simulated.items():
        for (own, aggregate, bits), (d_own, d_aggregate, d_bits) in zip(
                rounds, distributed[collective], strict=True):
            assert torch.equal(d_bits, bits[:2])
            if collective == "all_gather":
                assert torch.equal(d_own, own[:2]) and torch.equal(d_aggregate, aggregate)
            else:
                scale = float(aggregate.abs().max())
                assert float((d_aggregate - aggregate).abs().max()) <= 1e-4 * scale
                assert float((d_own - own[:2]).abs().max()) <= 1e-4 * float(own.abs().max())


@pytest.mark.parametrize("name", list(RESNET_JOBS))
def test_powersgd_on_resnet20_over_gloo_equals_the_simulation(runs, name):
    """Two steps of EF-SGD with PowerSGD on CIFAR ResNet-20 (FakeData), each step's two
    all-reduces over gloo on 2 ranks × 2 workers. Bits 32·r·(n+m) per matrix: equal exactly.
    The model is compared, not the loss curves: a rank's train loss covers its own workers'
    batches and its test loss uses its own workers' pooled BatchNorm statistics (tasks/
    cifar10.py), so those differ between layouts by design. Nor is the model bit-identical:
    the network's float32 gradients themselves depend on how many workers a process vmaps
    over (~3e-7 of the largest entry between 4 and 2), and the P means are summed in another
    order. The models differ by under 1e-3 of what the two steps moved them: those float32
    roundings (~1e-7 of the weights) with room for a conditioning factor of 10⁴ through QR,
    still far below a wrong factor or a missed all-reduce (which would differ by O(step))."""
    (sim_status, sim_hist, sim_x), (dist_status, dist_hist, dist_x) = runs[name]
    assert sim_status == dist_status == "FINISHED"
    sim, dist = curves(sim_hist), curves(dist_hist, skip=DISTRIBUTED_ONLY)
    for key in ("comm/bits_up", "comm/bits_down", "comm/rounds"):
        assert dist[key] == sim[key], key
    from suite.runner import Run
    from tests.test_powersgd import expected_bits, resnet20_shapes

    assert sim["comm/bits_up"][-1] == (2, 2 * expected_bits(resnet20_shapes(), 2))
    x0 = Run(make_cfg(*RESNET)).task.x0()
    moved = float((sim_x - x0).abs().max())
    assert moved > 0
    assert float((dist_x - sim_x).abs().max()) <= 1e-3 * moved


@pytest.mark.parametrize("name", [n for n, (_, exact) in JOBS.items() if exact])
def test_bytes_on_the_wire_equal_the_logged_bits(runs, name):
    _, (_, history, _) = runs[name]
    c = curves(history)
    last = {key: values[-1][1] for key, values in c.items()}
    rounds = last["comm/rounds"]
    bits_per_message = last["comm/bits_up"] / rounds  # fixed-size messages in these runs
    assert bits_per_message == int(bits_per_message) > 0
    # per worker: Σ over messages of ceil(bits/8), from the bit count alone ...
    assert last["comm/wire_bytes"] == rounds * math.ceil(bits_per_message / 8)
    # ... and at every logged step, against the channel's own Σ ceil(bits/8)
    assert c["comm/wire_bytes"] == c["comm/bytes_up"]
    assert last["comm/wire_header_bytes"] == rounds * 8  # one int64 size per message
    assert last["comm/wire_padding_bytes"] == 0  # equal sizes: nothing to pad


def test_messages_of_unequal_sizes_arrive_whole_and_in_worker_order(runs):
    got, payload, header, padding, _ = runs["exchange"]  # rank 0's view
    assert got == [b"", b"\x01", b"\x0a" * 3, b"\x0b" * 4]
    assert (payload, header, padding) == (1, 2 * 8, 6)


def test_the_ledger_records_what_each_rank_hands_to_its_collectives(runs):
    # the exchange above: two int64 sizes, then rank 1's 7 bytes, the longest (rank 0 pads)
    *_, ledger = runs["exchange"]
    assert ledger["all_gather"] == (2, 2 * 8 + 7)
    assert ledger["all_reduce"] == ledger["broadcast"] == (0, 0)


@pytest.mark.parametrize("name", ["sgd", "ef_sgd_topk", "terngrad"])
def test_the_distributed_ledger_is_the_step_collectives_of_two_workers_per_rank(runs, name):
    """Per step, per rank, from what was logged: dense, one all_reduce of the float64 [d]
    partial sum; compressed, two all_gathers: 2 int64 sizes, then 2 messages' bytes (equal
    sizes: nothing to pad); TernGrad also an all_reduce MAX of its float32 scale. Evaluation's
    collectives (bit totals, model average) are not the step's and are not in it. The
    simulated run's ledger is the same step with one worker per rank."""
    (_, sim_hist, x), (_, dist_hist, _) = runs[name]
    d, held = x.numel(), 4 // WORLD  # workers=4 (COMMON) on WORLD ranks
    for history, w in ((dist_hist, held), (sim_hist, 1)):
        last = {key: values[-1][1] for key, values in curves(history).items()}
        rounds = last["comm/rounds"]
        message = math.ceil(last["comm/bits_up"] / rounds / 8)  # fixed-size messages
        if name == "sgd":
            assert last["comm/all_reduce_calls"] == rounds
            assert last["comm/all_reduce_bytes"] == rounds * 8 * d
            assert "comm/all_gather_calls" not in last
            continue
        assert last["comm/all_gather_calls"] == 2 * rounds
        assert last["comm/all_gather_bytes"] == rounds * w * (8 + message)
        if name == "terngrad":
            assert (last["comm/all_reduce_calls"], last["comm/all_reduce_bytes"]) == \
                (rounds, rounds * 4)
        else:
            assert "comm/all_reduce_calls" not in last


def test_dense_all_reduce_ships_one_partial_sum_per_rank(runs):
    _, (_, history, x) = runs["sgd"]
    last = {key: values[-1][1] for key, values in curves(history).items()}
    K, d = 4, x.numel()
    # each rank hands one float64 [d] partial sum per round; per worker: W·8d/K
    assert last["comm/wire_bytes"] == last["comm/rounds"] * WORLD * 8 * d / K
    assert last["comm/wire_header_bytes"] == 0
    assert last["comm/bytes_up"] == last["comm/rounds"] * 4 * d  # float32 messages


def test_workers_not_divisible_by_world_size_is_refused_before_start():
    from suite.launch import execute_job

    cfg = make_cfg("hardware=multi_cpu", "workers=3")
    with pytest.raises(ConfigError, match=r"workers=3 .*hardware\.world_size=2"):
        execute_job(cfg, launch_dir=ROOT, output_dir=ROOT / "never-written")
    assert not (ROOT / "never-written").exists()


# -- through the command line ----------------------------------------------------------------
# synthetic data: no scikit-learn import in every rank
CLI = ("hardware=multi_cpu", "workers=4", "steps=20", "eval_every=5", "task.dataset=synthetic",
       "task.n_samples=200", "task.dim=10", "progress=false", "algorithm=ef_sgd",
       "compressor=topk", "compressor.k=2", "compressor.ratio=null")
KILL_TIMEOUT_S = 20
SUITE = (sys.executable, "-m", "suite")


def _with(base, *changes):
    """base with some keys set to other values (a key given twice is refused)."""
    keys = {c.split("=", 1)[0] for c in changes}
    return (*(b for b in base if b.split("=", 1)[0] not in keys), *changes)



SCENARIOS = {  # name: (command, extra environment)
    "multirun": ((*SUITE, "-m", *CLI, "seed=0,1"), {}),
    "kill_rank0": ((*SUITE, *_with(CLI, "steps=100000"), f"hardware.timeout_s={KILL_TIMEOUT_S}"),
                   {"COMMSGD_TEST_KILL_RANK": "0", "COMMSGD_TEST_KILL_STEP": "5"}),
    "kill_rank1": ((*SUITE, *_with(CLI, "steps=100000"), f"hardware.timeout_s={KILL_TIMEOUT_S}"),
                   {"COMMSGD_TEST_KILL_RANK": "1", "COMMSGD_TEST_KILL_STEP": "5"}),
    "launcher_killed": ((*SUITE, *_with(CLI, "steps=100000000"),
                         f"hardware.timeout_s={KILL_TIMEOUT_S}"), {}),
    "stop_rank1": ((*SUITE, *_with(CLI, "steps=100000000"),
                    f"hardware.timeout_s={KILL_TIMEOUT_S}"), {}),
    "torchrun": ((sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                  "--master-addr", "127.0.0.1", "--master-port", "{port}", "-m", "suite", *CLI),
                 {}),
}


class Launched:
    """One scenario's finished command: exit code, output, its directory, when it ended."""

    def __init__(self, proc, directory, stdout, stderr, ended):
        self.returncode, self.dir, self.ended = proc.returncode, directory, ended
        self.stdout, self.stderr = stdout.read_text(), stderr.read_text()


class Launches:
    """The command-line scenarios, each a subprocess in its own directory.

    Most of each is process start-up (Python, torch, Hydra, MLflow), so when this file runs in
    one pytest process the first test that needs a scenario starts all of them and they
    overlap. Under pytest-xdist each starts only its own: the workers overlap already, and a
    scenario started in two workers would run twice.
    """

    def __init__(self, root):
        self.root, self.running = root, {}

    def _start(self, name):
        command, extra = SCENARIOS[name]
        directory = self.root / name
        directory.mkdir()
        env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
        command = [c.format(port=_free_port()) for c in command]
        out, err = directory / "stdout.txt", directory / "stderr.txt"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(command, cwd=directory, env=env, stdout=fo, stderr=fe)
        ended = {}

        def wait():  # each scenario's own end time, whenever a test asks for it
            proc.wait()
            ended["t"] = time.time()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        self.running[name] = (proc, directory, out, err, ended, waiter)

    def start(self, names):
        for name in names:
            if name not in self.running:
                self._start(name)

    def process(self, name):
        """(the running Popen, its directory, its stderr file) of a scenario."""
        if name not in self.running:
            self._start(name)
        proc, directory, _, err, _, _ = self.running[name]
        return proc, directory, err

    def result(self, name) -> Launched:
        if name not in self.running:
            self._start(name)
        proc, directory, out, err, ended, waiter = self.running[name]
        waiter.join(timeout=400)
        if waiter.is_alive():
            proc.kill()
            pytest.fail(f"scenario {name} did not end within 400 s")
        return Launched(proc, directory, out, err, ended["t"])

    def close(self):
        for proc, *_ in self.running.values():
            if proc.poll() is None:
                proc.kill()


@pytest.fixture(scope="module")
def launches(tmp_path_factory, request):
    lr = Launches(tmp_path_factory.mktemp("cli"))
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # see Launches
        lr.start({item.callspec.params["scenario"] for item in request.session.items
                  if "scenario" in getattr(getattr(item, "callspec", None), "params", {})})
    yield lr
    lr.close()


def store(directory):
    client = MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlruns.db'}")
    exp = client.get_experiment_by_name("logreg")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def launched_pids(stderr: str) -> list[int]:
    pids = [int(p) for line in re.findall(r"started \d+ ranks .*pids ([\d ]+)", stderr)
            for p in line.split()]
    assert pids, stderr
    return pids


def assert_gone(pids):
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as f:  # a zombie is gone too: it holds nothing
            assert f.read().split(") ")[1][0] == "Z", f"rank process {pid} is still alive"


@pytest.mark.parametrize("scenario", ["multirun"])
def test_multirun_sweep_records_each_job_once_with_wire_bytes(launches, scenario):
    job = launches.result(scenario)
    assert job.returncode == 0, job.stderr
    assert job.stdout.count("commsgd: run finished") == 2
    client, runs = store(job.dir)
    assert len(runs) == 2  # rank 0 only: one run per job
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    assert len({r.data.tags["sweep.id"] for r in runs}) == 1
    for r in runs:
        assert r.data.tags["hardware"] == "multi_cpu"
        m = r.data.metrics
        assert m["comm/wire_bytes"] == m["comm/bytes_up"] > 0
        assert len(client.get_metric_history(r.info.run_id, "train/loss")) == 5
    pids = launched_pids(job.stderr)
    assert len(pids) == 4  # two ranks per job
    assert_gone(pids)


@pytest.mark.parametrize("scenario", ["kill_rank0", "kill_rank1"])
def test_a_rank_dying_mid_run_fails_the_job_quickly_and_cleanly(launches, scenario):
    dead = int(scenario[-1])
    job = launches.result(scenario)
    assert job.returncode == 1, job.stderr
    died = re.search(rf"COMMSGD_TEST_KILL_RANK: rank {dead} exits at ([\d.]+)", job.stderr)
    assert died, job.stderr
    # from the death to the launcher's exit: the survivors' collective fails (at the latest
    # at the timeout), rank 0 or the launcher closes the MLflow run, the launcher reports
    assert job.ended - float(died.group(1)) < KILL_TIMEOUT_S + GRACE_S + TERM_WAIT_S + 30
    assert f"rank {dead} failed first" in job.stderr
    assert "without a Python exception" in job.stderr  # os._exit: no traceback to show
    _, runs = store(job.dir)
    (run,) = runs
    assert run.info.status == "FAILED"
    assert f"rank {dead} failed first" in run.data.tags["failure"]
    assert run.data.tags["distributed.failed_rank"] == str(dead)
    assert_gone(launched_pids(job.stderr))


@pytest.mark.parametrize("scenario", ["torchrun"])
def test_torchrun_runs_each_process_as_one_rank(launches, scenario):
    job = launches.result(scenario)
    assert job.returncode == 0, job.stderr
    assert job.stdout.count("commsgd: run finished") == 1  # rank 0 speaks for the job
    assert "started 2 ranks" not in job.stderr  # torchrun started them, not commsgd
    _, runs = store(job.dir)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.metrics["comm/wire_bytes"] == run.data.metrics["comm/bytes_up"] > 0


def logged_a_step(directory) -> bool:
    try:
        with sqlite3.connect(directory / "mlruns.db") as con:
            return bool(con.execute("select count(*) from metrics where key='train/loss' "
                                    "and step > 0").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return False


def wait_for_a_step(proc, directory, stderr) -> None:
    """Until the ranks are in the training loop (a step logged)."""
    deadline = time.monotonic() + 300
    while not logged_a_step(directory):
        assert proc.poll() is None, stderr.read_text()
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.5)


@pytest.mark.parametrize("scenario", ["launcher_killed"])
def test_ranks_exit_when_the_launcher_dies(launches, scenario):
    proc, directory, stderr = launches.process(scenario)
    wait_for_a_step(proc, directory, stderr)
    pids = launched_pids(stderr.read_text())
    proc.kill()  # SIGKILL: the launcher gets no chance to stop its ranks
    killed = time.monotonic()
    while time.monotonic() - killed < KILL_TIMEOUT_S + GRACE_S + 30:
        try:
            assert_gone(pids)
            break
        except AssertionError:
            time.sleep(0.5)
    assert_gone(pids)
    _, runs = store(directory)
    (run,) = runs
    assert run.info.status == "FAILED"  # rank 0 took the SIGTERM as a failure and said so
    assert "SIGTERM" in run.data.tags["failure"]


@pytest.mark.parametrize("scenario", ["stop_rank1"])
def test_a_stopped_rank_is_named_as_the_cause(launches, scenario):
    """SIGSTOP to rank 1: rank 0's collective times out and it fails first, but the job's
    reason names the stopped rank, and every rank is gone afterwards."""
    proc, directory, stderr = launches.process(scenario)
    wait_for_a_step(proc, directory, stderr)
    pids = launched_pids(stderr.read_text())
    os.kill(pids[1], signal.SIGSTOP)
    job = launches.result(scenario)
    assert job.returncode == 1, job.stderr
    assert "rank 1 failed first" in job.stderr and "stopped (SIGSTOP" in job.stderr
    _, runs = store(job.dir)
    (run,) = runs
    assert run.info.status == "FAILED"
    assert run.data.tags["distributed.failed_rank"] == "1"
    assert "rank 1 failed first" in run.data.tags["failure"]
    assert_gone(pids)
