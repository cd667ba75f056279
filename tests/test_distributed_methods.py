"""majority vote, compressed down-links (EF21-P), FedAvg with client sampling and a server
optimizer, and SCAFFOLD on 2 gloo ranks against the simulated backend (docs/theory.md §13–§16).

Every case steps the same config in one process and on 2 ranks (K = 4 workers, 2 a rank):
- the states are equal bit for bit: the replicated parts (the model, the global anchor, the
  server's momentum and control variate) equal the simulation's, and each rank's per-worker
  rows (local models, momenta, control variates) are its rows of the simulated [K, ...]
  tensors; the down-link's EF21-P memory too;
- each round's sampled workers are the same in both layouts (drawn from the shared stream);
- the bit counters are equal (only the sampled workers' messages count);
- where messages travel as bytes (compressed ones, or dense ones with
  hardware.dense_collective=all_gather) the iterates are exact; a dense all-reduce (partial
  sums in another order) agrees to DENSE_RTOL, as in tests/test_distributed.py;
- two cases also run through the runner (`execute`): their logged histories agree.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from suite.costmodel import LEDGER_KEYS
from tests.conftest import make_cfg

WORLD, K, STEPS = 2, 4, 24
DENSE_RTOL = 1e-12
COMMON = (f"workers={K}", "seed=3", "task.l2=0.01", "hardware.threads=1", "eval_every=6",
          f"steps={STEPS}")
ALL_GATHER = ("hardware.dense_collective=all_gather",)
SAMPLED = ("algorithm.local_steps=3", "algorithm.participation=0.5")
CASES = {  # name: (overrides, per-worker state fields, exact)
    "majority_vote": (("algorithm=majority_vote", "algorithm.momentum=0.5", "lr=0.01",
                       "batch_size=4"), ("m",), True),
    "sgd_ef21p_topk": (("downlink=topk", "downlink.k=3", "downlink.ratio=null", "lr=0.3",
                        "batch_size=4", *ALL_GATHER), (), True),
    "fedavg_qsgd_nesterov": (("algorithm=fedavg", *SAMPLED, "algorithm.server_lr=0.7",
                              "algorithm.server_momentum=0.9", "algorithm.nesterov=true",
                              "compressor=qsgd", "batch_size=4", "lr=0.3"), ("xs",), True),
    "fedavg_identity_all_gather": (("algorithm=fedavg", *SAMPLED, "batch_size=4", "lr=0.3",
                                    *ALL_GATHER), ("xs",), True),
    "fedavg_identity": (("algorithm=fedavg", *SAMPLED, "batch_size=4", "lr=0.3"), ("xs",),
                        False),
    "fedavg_ef21p_downlink": (("algorithm=fedavg", "algorithm.local_steps=2",
                               "compressor=qsgd", "downlink=topk", "downlink.ratio=0.2",
                               "batch_size=4", "lr=0.3"), ("xs",), True),
    "scaffold_by_label": (("algorithm=scaffold", *SAMPLED, "task.split=by_label",
                           "batch_size=4", "lr=0.3", *ALL_GATHER), ("xs", "c_workers"), True),
}
EXECUTED = ("majority_vote", "fedavg_qsgd_nesterov")


def _step(run):
    """STEPS steps; the per-step samples, the final state, the channel's states."""
    state = run.algorithm.init(run.task.x0())
    samples = []
    for t in range(STEPS):
        state = run.algorithm.step(state, t, run.schedule(t))
        if hasattr(state, "sampled"):
            samples.append(state.sampled.clone())
    return {"state": state, "samples": samples, "params": run.algorithm.params(state),
            "counters": run.channel.counters(),
            "down": {name: lane.down_state for name, lane in run.channel.lanes.items()}}


def _rank(rank: int, port: int, out_dir: str) -> None:
    import suite.artifacts
    from suite.runner import Run, execute

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    suite.artifacts.plot_convergence = lambda *args, **kwargs: None
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    results = {}
    for name, (overrides, _, _) in CASES.items():
        cfg = make_cfg("hardware=multi_cpu", "hardware.timeout_s=60", *COMMON, *overrides)
        results[name] = _step(Run(cfg))
        if name in EXECUTED:
            r = execute(cfg, output_dir=f"{out_dir}/{name}-{rank}")
            results[name]["history"] = (r.status, r.history)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    from suite.launch import host_store

    out = tmp_path_factory.mktemp("methods")
    store = host_store(None, 60)
    ctx = mp.start_processes(_rank, args=(store.port, str(out)), nprocs=WORLD, join=False,
                             start_method="spawn")
    try:
        deadline = time.monotonic() + 300
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the distributed ranks did not finish"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _simulated(name):
    from suite.runner import Run

    overrides = [o for o in CASES[name][0] if not o.startswith("hardware.")]
    return Run(make_cfg(*COMMON, *overrides))


def _same(a, b, exact):
    return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=DENSE_RTOL, atol=1e-15)


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_step_exactly_as_one_process(ranks, name):
    _, per_worker, exact = CASES[name]
    sim_run = _simulated(name)
    sim = _step(sim_run)
    per = K // WORLD
    for rank, results in enumerate(ranks):
        got = results[name]
        rows = slice(rank * per, (rank + 1) * per)
        for field in sim["state"]._fields:
            mine, full = getattr(got["state"], field), getattr(sim["state"], field)
            if field in per_worker:
                assert _same(mine, full[rows], exact), (rank, field)
            else:
                assert _same(mine, full, exact), (rank, field)
        # the same workers sampled in every round, in both layouts
        assert len(got["samples"]) == len(sim["samples"])
        for a, b in zip(got["samples"], sim["samples"], strict=True):
            assert torch.equal(a, b)
        for key, value in sim["counters"].items():
            assert torch.equal(got["counters"][key], value[rows]), (rank, key)
        for lane, down in sim["down"].items():  # EF21-P's server memory, where there is one
            for mine, full in zip(got["down"][lane].server if got["down"][lane] else (),
                                  down.server if down else (), strict=True):
                assert _same(mine, full, exact), (rank, lane)
        # the evaluated point: a mean over all workers (backend.mean, partial sums)
        assert torch.allclose(got["params"], sim["params"], rtol=DENSE_RTOL, atol=1e-15)
    assert not torch.equal(sim["params"], sim_run.task.x0())  # the run moved
    if "participation=0.5" in " ".join(CASES[name][0]):
        masks = {tuple(m.tolist()) for m in sim["samples"]}
        assert len(masks) > 1 and all(sum(m) == 2 for m in masks)


@pytest.mark.parametrize("name", EXECUTED)
def test_the_runners_histories_agree_and_count_the_same_bits(ranks, name):
    from suite.runner import execute

    overrides = [o for o in CASES[name][0] if not o.startswith("hardware.")]
    sim = execute(make_cfg(*COMMON, *overrides))
    status, history = ranks[0][name]["history"]
    assert status == sim.status == "FINISHED"
    # timings, the wire's bytes and the collective ledger describe each layout's own
    # collectives (W ranks vs one worker per rank), not the algorithm
    skip = ("time/", "comm/bytes_up", "comm/wire_", *LEDGER_KEYS)
    dist_rows = sorted((k, s, v) for k, v, s in history if not k.startswith(skip))
    sim_rows = sorted((k, s, v) for k, v, s in sim.history if not k.startswith(skip))
    assert [r[:2] for r in dist_rows] == [r[:2] for r in sim_rows]
    for (key, step, a), (_, _, b) in zip(dist_rows, sim_rows, strict=True):
        if key.startswith("comm/"):
            assert a == b, (key, step)  # bit counts: exact
        else:
            assert a == pytest.approx(b, rel=DENSE_RTOL, abs=1e-15), (key, step)
