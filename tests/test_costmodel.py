"""The collective cost model (suite/costmodel.py) and the hardware.link keys (suite/links.py):
formulas against their closed forms, the fit against data made by the model, the ledger of the
simulated backend against what its messages hold, and every bad value refused in one line."""

from __future__ import annotations

import math
import random

import pytest
import torch

from suite import costmodel, links
from suite.config import ConfigError
from suite.costmodel import Ledger, Link
from tests.conftest import make_cfg


@pytest.mark.parametrize("W", [1, 2, 3, 8])
def test_ring_collectives_send_what_the_ring_algorithms_send(W):
    n = 1000.0
    assert costmodel.sent_bytes("all_reduce", n, W) == pytest.approx(2 * (W - 1) / W * n)
    assert costmodel.sent_bytes("all_gather", n, W) == (W - 1) * n
    assert costmodel.sent_bytes("broadcast", n, W) == (W - 1) * n
    assert costmodel.rounds("all_reduce", W) == 2 * (W - 1)
    assert costmodel.rounds("all_gather", W) == costmodel.rounds("broadcast", W) == W - 1
    link = Link(alpha_s=1e-4, bytes_per_s=1e6)
    t = costmodel.collective_time("all_reduce", n, W, link)
    assert t == pytest.approx(2 * (W - 1) * 1e-4 + 2 * (W - 1) / W * n / 1e6)
    # a shared queue carries every rank's sends in the ring collectives, the root's alone in
    # the flat broadcast
    shared = Link(alpha_s=1e-4, bytes_per_s=1e6, shared=True)
    for kind, factor in (("all_reduce", W), ("all_gather", W), ("broadcast", 1)):
        bw = costmodel.collective_time(kind, n, W, link) - costmodel.rounds(kind, W) * 1e-4
        bw_shared = (costmodel.collective_time(kind, n, W, shared)
                     - costmodel.rounds(kind, W) * 1e-4)
        assert bw_shared == pytest.approx(factor * bw)
    if W == 1:
        assert costmodel.step_time([("all_reduce", n), ("all_gather", n)], 1, link) == 0


def test_framing_is_tcp_payload_over_packet_bytes():
    # MTU 1500: 1448 payload bytes a packet; 1514 bytes counted by tc on the loopback
    assert costmodel.payload_fraction(1500, costmodel.LOOPBACK_FRAMING_BYTES) == 1448 / 1514
    lo = Link.shaped_loopback(1e8, alpha_s=0.0)
    assert lo.bytes_per_s == pytest.approx(1e8 / 8 * 1448 / 1514) and lo.shared
    eth = Link.ethernet(1e9, alpha_s=0.0)
    assert eth.bytes_per_s == pytest.approx(1e9 / 8 * 1448 / 1538) and not eth.shared


def test_a_scheme_declares_its_collectives_and_the_ledger_costs_the_same():
    """PowerSGD-like: two all-reduces a step. The ledger of cumulative totals gives the time
    of its calls one by one (the model is linear in calls and bytes per kind)."""
    link = Link(alpha_s=3e-4, bytes_per_s=1.2e7, shared=True)
    W, rng = 4, random.Random(0)
    ledger, declared = Ledger(W), []
    for _ in range(50):
        step = [("all_reduce", 4 * 512 * 2), ("all_reduce", 4 * 300 * 2),
                ("all_gather", rng.randrange(1, 5000)), ("broadcast", 64)]
        declared += step
        for kind, n in step:
            ledger.add(kind, n, seconds=0.01)
    assert ledger.time(link) == pytest.approx(costmodel.step_time(declared, W, link), rel=1e-12)
    m = ledger.metrics()
    assert m["comm/all_reduce_calls"] == 100 and m["comm/broadcast_bytes"] == 50 * 64
    assert costmodel.time_from_metrics(m, W, link) == pytest.approx(ledger.time(link))
    assert ledger.seconds == pytest.approx(0.5 * 4)
    with ledger.paused():
        ledger.add("all_reduce", 10**9, seconds=100.0)
    assert ledger.metrics() == m  # not recorded
    restored = Ledger(W)
    restored.load(ledger.state())
    assert restored.metrics() == m and restored.seconds == ledger.seconds
    assert math.isnan(costmodel.time_from_metrics({"comm/rounds": 3.0}, W, link))


def test_the_ledger_sums_device_sizes_lazily():
    ledger = Ledger(2)
    for n in (3, 5):
        ledger.add("all_gather", torch.tensor(n))  # a message size still a tensor
    ledger.add("all_gather", 8)
    assert ledger.totals()["all_gather"] == (3, 16)


@pytest.mark.parametrize("shared", [False, True])
def test_fit_recovers_alpha_and_beta_from_the_models_own_times(shared):
    alpha, beta, W = 2.5e-4, 1.1e7, 2
    link = Link(alpha, beta, shared)
    sizes = [1024 * 4 ** i for i in range(8)]
    samples = [(k, n, W, costmodel.collective_time(k, n, W, link))
               for n in sizes for k in ("all_reduce", "all_gather")]
    f = costmodel.fit(samples, shared)
    assert f.alpha_s == pytest.approx(alpha, rel=1e-9)
    assert f.bytes_per_s == pytest.approx(beta, rel=1e-9)
    assert f.max_rel_error < 1e-9 and f.points == len(samples)
    # 5% multiplicative noise: β from the large samples is good to a few per cent (the
    # least-squares slope over 8+ samples averages the noise), α from the median of the small
    rng = random.Random(1)
    noisy = [(k, n, w, t * (1 + rng.uniform(-0.05, 0.05))) for k, n, w, t in samples]
    g = costmodel.fit(noisy, shared)
    assert g.bytes_per_s == pytest.approx(beta, rel=0.05)
    assert g.alpha_s == pytest.approx(alpha, rel=0.25)
    assert g.bandwidth_max_rel_error < 0.1


def test_fit_refuses_what_cannot_be_fitted():
    with pytest.raises(ValueError, match="two sizes"):
        costmodel.fit([("all_reduce", 100, 2, 1e-3)] * 3, shared=True)
    with pytest.raises(ValueError, match="positive"):
        costmodel.fit([("all_reduce", 100, 2, 0.0), ("all_reduce", 1000, 2, 1.0)], True)
    with pytest.raises(ValueError, match="collective 'gather'"):
        costmodel.rounds("gather", 2)


# -- hardware.link -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,bps", [("100mbit", 1e8), ("1gbit", 1e9), ("2.5Gbit", 2.5e9),
                                      ("512kbit", 5.12e5), (" 64 mbit ", 6.4e7)])
def test_rates_parse_in_powers_of_1000(text, bps):
    assert links.parse_rate(text) == bps


@pytest.mark.parametrize("key,value,match", [
    ("rate", "100mbps", r"hardware\.link\.rate='100mbps': a positive number with a unit "
                        r"\(bit, kbit, mbit, gbit\)"),
    ("rate", "0mbit", r"hardware\.link\.rate='0mbit'"),
    ("rate", "fast", r"hardware\.link\.rate='fast'"),
    ("delay", "5", r"hardware\.link\.delay='5': a positive number with a unit \(us, ms, s\)"),
    ("mtu", 40, r"hardware\.link\.mtu=40: an integer number of bytes in 576\.\.65536"),
    ("alpha_s", -1, r"hardware\.link\.alpha_s=-1: seconds per message"),
    ("speed", "1gbit", r"hardware\.link\.speed: not a link key; allowed: rate, delay, mtu, "
                       r"alpha_s"),
])
def test_bad_link_values_are_refused_naming_the_key(key, value, match):
    link = {"rate": "100mbit", "delay": None, "mtu": 1500, "alpha_s": None, key: value}
    with pytest.raises(ConfigError, match=match):
        links.link_spec({"link": link})


def test_a_link_spec_and_its_model():
    assert links.link_spec({"link": {"rate": None, "delay": None}}) is None
    assert links.link_spec({}) is None
    spec = links.link_spec({"link": {"rate": "100mbit", "delay": "2ms", "mtu": 9000}})
    assert (spec.rate_bps, spec.delay_s, spec.mtu) == (1e8, 2e-3, 9000)
    assert spec.alpha_s == pytest.approx(links.DEFAULT_ALPHA_S + 2e-3)  # the delay is latency
    assert spec.model() == Link.shaped_loopback(1e8, alpha_s=spec.alpha_s, mtu=9000)
    assert links.link_spec({"link": {"delay": "1ms"}}).model() is None  # rate unknown


@pytest.mark.parametrize("overrides,match", [
    (("hardware=multi_cpu", "hardware.link.rate=1gbit"), None),
    (("hardware=cpu", "+hardware.link.rate=1gbit"), r"hardware=cpu runs every worker in one "
                                                      r"process; use hardware=multi_cpu"),
    (("hardware=multi_gpu", "+hardware.link.rate=1gbit"), r"backend nccl"),
    (("hardware=multi_cpu", "hardware.link.rate=1gbit", "tracking=mlflow",
      "tracking.uri=http://127.0.0.1:5050"), r"tracking\.uri=http://127\.0\.0\.1:5050 is out "
                                               r"of reach"),
])
def test_a_link_that_cannot_work_is_refused_before_anything_starts(overrides, match):
    from omegaconf import OmegaConf

    cfg = make_cfg(*overrides)
    hw = OmegaConf.to_container(cfg.hardware, resolve=True)
    uri = cfg.tracking.get("uri") if cfg.tracking.name == "mlflow" else None
    kwargs = dict(tracking_uri=uri, distributed=bool(hw.get("backend")), under_torchrun=False)
    if match is None:
        assert links.check_job(hw, **kwargs).rate_bps == 1e9
        with pytest.raises(ConfigError, match="torchrun started these processes"):
            links.check_job(hw, **(kwargs | {"under_torchrun": True}))
    else:
        with pytest.raises(ConfigError, match=match):
            links.check_job(hw, **kwargs)


# -- the simulated backend's ledger --------------------------------------------------------------
@pytest.mark.parametrize("overrides,kinds", [
    ((), {"all_reduce": (1, "dense")}),
    (("algorithm=ef_sgd", "compressor=topk", "compressor.k=3", "compressor.ratio=null"),
     {"all_gather": (2, "message")}),
    (("compressor=terngrad",), {"all_reduce": (1, "scale"), "all_gather": (2, "message")}),
])
def test_the_simulated_ledger_holds_what_one_worker_per_rank_would_send(overrides, kinds):
    from suite.runner import execute

    K, steps = 4, 12
    r = execute(make_cfg(f"workers={K}", f"steps={steps}", "eval_every=4", *overrides))
    m, d = r.final, r.params.numel()
    rounds = m["comm/rounds"]
    assert rounds == steps
    bytes_per_message = math.ceil(m["comm/bits_up"] / rounds / 8)  # fixed-size messages
    for kind, (calls, what) in kinds.items():
        assert m[f"comm/{kind}_calls"] == calls * rounds
        per_step = {"dense": 8 * d,  # the float64 [d] partial sum
                    "scale": 4,  # TernGrad's float32 scale (a max-norm)
                    "message": 8 + bytes_per_message}[what]  # size header + the longest
        assert m[f"comm/{kind}_bytes"] == per_step * rounds
    assert set(k for k in m if k.endswith("_calls")) == {f"comm/{k}_calls" for k in kinds}
