"""The report's projection section: the collective model over each run's logged collectives,
with α from the latest calibration in the store, recomputed here from the raw MLflow data; the
calibration's constants and errors stated; shaped runs' measured and projected times side by
side."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from suite import costmodel
from tests.conftest import make_cfg
from tests.test_links import CANNOT_SHAPE
from tests.test_report import history, md_tables

pytestmark = pytest.mark.slow  # 4 runs, a shaped 2-rank run and 3 reports (~90 s here)

COMMON = ("steps=60", "workers=4", "batch_size=full", "task.l2=0.1", "eval_every=10",
          "tracking=mlflow")
ALPHA = 3.2e-4  # the synthetic calibration's α


RATIOS = (1.02, 0.95, 1.5, 1.1)  # model / measured of each rate's samples
BANDWIDTH_SIDE = (True, True, False, False)


def _calibration_results() -> list[dict]:
    """What commsgd-calibrate measures, made up: two rates of four samples each, with the
    model/measured ratios above (errors 2%, 5% on the bandwidth side; 50%, 10% below it)."""
    out = []
    for rate, nominal, alpha, bps in (("100mbit", 1e8, 3.0e-4, 1.17e7),
                                      ("1gbit", 1e9, 3.4e-4, 1.15e8)):
        samples = [{"kind": "all_reduce", "bytes": 1024 * 10 ** i, "seconds": 1e-3 * 10 ** i,
                    "model_s": ratio * 1e-3 * 10 ** i, "bandwidth_side": side}
                   for i, (ratio, side) in enumerate(zip(RATIOS, BANDWIDTH_SIDE, strict=True))]
        out.append({"rate": rate, "world_size": 2, "mtu": 1500, "reps": 7, "alpha_s": alpha,
                    "bytes_per_s": bps, "beta_over_rate": bps * 8 / nominal,
                    "median_rel_error": 0.075, "max_rel_error": 0.5,
                    "bandwidth_median_rel_error": 0.035, "bandwidth_max_rel_error": 0.05,
                    "samples": samples})
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import suite.artifacts
    from suite.launch import execute_job
    from suite.runner import execute

    tmp = tmp_path_factory.mktemp("projection")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    plot = suite.artifacts.plot_convergence
    suite.artifacts.plot_convergence = lambda *a, **k: None
    try:
        for comp in ("identity", "qsgd"):
            for seed in (0, 1):
                r = execute(make_cfg(*COMMON, f"compressor={comp}", f"seed={seed}",
                                     f"tracking.uri={uri}"), launch_dir=tmp)
                assert r.status == "FINISHED"
        shaped = None
        if CANNOT_SHAPE is None:
            shaped = execute_job(make_cfg(
                "hardware=multi_cpu", "hardware.link.rate=100mbit", "workers=2", "steps=6",
                "eval_every=3", "task.dataset=synthetic", "task.n_samples=64",
                "task.dim=20000", "tracking=mlflow", f"tracking.uri={uri}"),
                launch_dir=tmp, output_dir=tmp / "shaped")
            assert shaped.status == "FINISHED", shaped.reason
    finally:
        suite.artifacts.plot_convergence = plot
    return tmp, uri, shaped


def _report(uri, out) -> str:
    from analysis.report import main

    # ε = 0.1·F0: reached by both compressors in 60 steps, so both rows have a number
    assert main(["--tracking-uri", uri, "--experiment", "logreg", "--out", str(out),
                 "--n-boot", "1000", "--no-log", "--target", "0.1"]) == 0
    return (out / "report.md").read_text()


SECTION = "Projected time to target on real links (collective model)"


def _section(text: str) -> str:
    return text.split(f"\n## {SECTION}\n", 1)[1].split("\n## ", 1)[0]


def test_the_projection_costs_each_runs_collectives_with_the_calibrated_alpha(store):
    from suite.calibrate import log_run

    tmp, uri, _ = store
    # first without a calibration in the store: the default α, and the section says so
    before = _section(_report(uri, tmp / "before"))
    assert "α = 10 µs per message (a default: no calibration in this store" in before
    assert "Latest calibration" not in before

    results = _calibration_results()
    path = tmp / "calibration.json"
    path.write_text("{}")
    run_id = log_run(uri, costmodel.CALIBRATION_EXPERIMENT, results, path)
    text = _report(uri, tmp / "after")
    section = _section(text)
    alpha = float(np.median([r["alpha_s"] for r in results]))
    assert alpha == pytest.approx(ALPHA, rel=1e-12)
    assert f"α = {ALPHA * 1e6:.4g} µs per message (the latest calibration's, run `{run_id}`" \
        in section
    assert "all_reduce of n bytes 2(W−1)·α + 2(W−1)/W·n/β" in section
    # the calibration's errors, over all its samples and on its bandwidth side
    assert f"Latest calibration: run `{run_id}`" in section
    assert ("median 7.5%, max 50.0% over all samples; on the bandwidth side (the sizes β is "
            "fitted on) median 3.5%, max 5.0%") in section
    (cal_rows,) = [rows for rows in md_tables(text, SECTION).values()
                   if rows and "α µs" in rows[0]]
    assert [(r["link"], r["α µs"], r["β / rate"]) for r in cal_rows] == [
        ("100mbit", "300", "0.936"), ("1gbit", "340", "0.92")]

    # every 1 Gbit/s figure, recomputed from the raw MLflow histories
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("logreg")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.params.get("hardware.name") == "cpu"]
    assert len(runs) == 4
    tables = md_tables(text, SECTION)
    (label, rows), = [(k, v) for k, v in tables.items() if "K=4" in k]
    eps = float(re.search(rf"### {re.escape(label)}\s+Target ε = [0-9.e+-]+·F0 = "
                          r"([0-9.e+-]+)", text).group(1))
    link = costmodel.Link.ethernet(1e9, alpha_s=ALPHA)
    beta = 1e9 / 8 * 1448 / 1538
    assert link.bytes_per_s == pytest.approx(beta)
    W = 4  # simulated: one worker per rank
    assert {r.data.tags["comm.ranks"] for r in runs} == {"4"}
    for row in rows:
        comp = "qsgd" if "qsgd" in row["method"] else "identity"
        assert not row["method"].endswith("†")  # the collective model, not the bit model
        times = []
        for r in (r for r in runs if r.data.params["compressor.name"] == comp):
            rid = r.info.run_id
            steps, sub = history(client, rid, "train/suboptimality")
            reached = np.nonzero(sub <= float(f"{eps:.4g}") * (1 + 1e-3))[0]
            if not reached.size:
                times.append(math.inf)
                continue
            step = steps[reached[0]]

            def at(key, rid=rid, step=step):  # the value logged at that step
                s, v = history(client, rid, key)
                return float(v[s == step][0])

            t = at("time/compute_s") + at("time/compress_s")
            if comp == "identity":  # one all_reduce of the [d] float64 partial sum a step
                calls, n = at("comm/all_reduce_calls"), at("comm/all_reduce_bytes")
                assert n == calls * 8 * float(r.data.params["task/dim"]) and calls == step
                t += calls * 2 * (W - 1) * ALPHA + n * 2 * (W - 1) / W / beta
            else:  # two all_gathers a step: the size, then the message
                calls, n = at("comm/all_gather_calls"), at("comm/all_gather_bytes")
                assert calls == 2 * step
                t += calls * (W - 1) * ALPHA + n * (W - 1) / beta
            times.append(t)
        expected = min(times)  # the lower median of two seeds
        assert math.isfinite(expected), row
        assert float(row["1 Gbit/s: s to ε [95% CI]"].split()[0]) == pytest.approx(
            expected, rel=5e-3)


@pytest.mark.skipif(CANNOT_SHAPE is not None, reason=str(CANNOT_SHAPE))
def test_shaped_runs_show_measured_and_projected_side_by_side(store):
    tmp, uri, shaped = store
    text = _report(uri, tmp / "shaped-report")
    tables = md_tables(text, SECTION)
    (row,) = tables["Measured against projected: runs on shaped links"]
    m = shaped.final
    assert row["link"] == "100mbit" and row["seeds"] == "1"
    assert float(row["measured s / step"]) == pytest.approx(m["time/comm_per_step_s"],
                                                           rel=5e-3)
    assert float(row["projected s / step"]) == pytest.approx(
        m["time/comm_projected_per_step_s"], rel=5e-3)
    assert float(row["measured / projected"]) == pytest.approx(
        m["time/comm_per_step_s"] / m["time/comm_projected_per_step_s"], rel=1e-2)
