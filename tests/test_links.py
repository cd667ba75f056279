"""hardware.link.*: 2-rank jobs on a loopback shaped by tc inside a private network namespace.

- A 100 Mbit/s link makes the dense all-reduce as slow as the cost model says, for the bytes
  the run logged (within 25%), and far slower than the plain loopback.
- The namespace is gone, and no rank is left, after a run whose rank dies, and after Ctrl-C.
- Without the capability (a real one, dropped from the process's bounding set with capsh), or
  without `tc`, or without netem for a delay, the run is refused in one line before it starts.

Every test sends traffic only to 127.0.0.1 inside namespaces the tests or the launcher made,
with short runs (small d, few steps) and bounded waits. Shaping needs CAP_SYS_ADMIN and
CAP_NET_ADMIN: where this process lacks them, the shaped runs are skipped (with the refusal's
own message as the reason) and the refusal test runs unaided.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from suite import costmodel, links, netns
from suite.netns import LinkUnavailable, ShapedLoopback
from tests.conftest import ROOT, make_cfg
from tests.test_distributed import assert_gone, launched_pids, logged_a_step


def _probe(**kwargs) -> str | None:
    """None if this process can shape a link as asked; else the refusal's message."""
    try:
        ns = ShapedLoopback.create(mtu=1500, what="probe", **kwargs)
    except LinkUnavailable as exc:
        return str(exc)
    ns.close()
    return None


CANNOT_SHAPE = _probe(rate_bps=1e8, delay_s=None)
NO_NETEM = CANNOT_SHAPE or _probe(rate_bps=None, delay_s=1e-3)
needs_shaping = pytest.mark.skipif(CANNOT_SHAPE is not None, reason=str(CANNOT_SHAPE))
slow = pytest.mark.slow  # each starts 2 ranks (10-40 s here, mostly imports)

D = 75_000  # float64 partial sums of 600 kB: 0.1 s a step at 100 Mbit/s, shared by 2 ranks
STEPS = 10
JOB = ("hardware=multi_cpu", "workers=2", f"steps={STEPS}", f"eval_every={STEPS // 2}",
       "task.dataset=synthetic", "task.n_samples=64", f"task.dim={D}", "hardware.timeout_s=30")
SHAPED = ("hardware.link.rate=100mbit",)
NS_LINE = r"network namespace net:\[(\d+)\]"


def _inode(text: str) -> int:
    m = re.search(NS_LINE, text)
    assert m, text
    return int(m.group(1))


def _quiet_plots(monkeypatch):
    import suite.artifacts

    monkeypatch.setattr(suite.artifacts, "plot_convergence", lambda *a, **k: None)


@slow
@needs_shaping
def test_a_100mbit_link_makes_the_dense_all_reduce_as_slow_as_the_model_says(
        tmp_path, capfd, monkeypatch):
    from suite.launch import execute_job

    _quiet_plots(monkeypatch)
    shaped = execute_job(make_cfg(*JOB, *SHAPED), launch_dir=tmp_path,
                         output_dir=tmp_path / "shaped")
    err = capfd.readouterr().err
    assert shaped.status == "FINISHED", shaped.reason
    assert "rate 100 Mbit/s, MTU 1500" in err
    # the same bytes through the model: one all_reduce of the float64 [d] partial sum a step,
    # on 2 ranks sharing the shaped loopback's one queue
    m = shaped.final
    n = 8 * D
    assert (m["comm/all_reduce_calls"], m["comm/all_reduce_bytes"]) == (STEPS, STEPS * n)
    link = costmodel.Link.shaped_loopback(1e8, alpha_s=links.DEFAULT_ALPHA_S)
    model = costmodel.collective_time("all_reduce", n, 2, link)
    assert model == pytest.approx(2 * links.DEFAULT_ALPHA_S + 2 * n / (1e8 / 8 * 1448 / 1514))
    assert m["time/comm_projected_per_step_s"] == pytest.approx(model, rel=1e-12)
    measured = m["time/comm_per_step_s"]
    assert abs(measured / model - 1) < 0.25, (measured, model)
    assert netns.holders(_inode(err)) == []  # gone with the job, this process still alive
    assert_gone(launched_pids(err))

    plain = execute_job(make_cfg(*JOB), launch_dir=tmp_path, output_dir=tmp_path / "plain")
    err = capfd.readouterr().err
    assert plain.status == "FINISHED", plain.reason
    assert "network namespace" not in err
    assert "time/comm_projected_per_step_s" not in plain.final  # no link to project onto
    # the plain loopback moves 600 kB in a few milliseconds; the shaped one takes ~100 ms. On a
    # busy machine both also wait for the scheduler, by about the same amount: the shaping's
    # own share is the difference, at least half of what the model says the link costs
    plain_s = plain.final["time/comm_per_step_s"]
    assert measured - plain_s > 0.5 * model, (measured, plain_s, model)


@slow
@needs_shaping
def test_the_namespace_is_gone_and_no_rank_left_after_a_rank_dies(tmp_path, capfd,
                                                                   monkeypatch):
    from suite.launch import execute_job

    _quiet_plots(monkeypatch)
    monkeypatch.setenv("COMMSGD_TEST_KILL_RANK", "1")  # os._exit(1) before its 4th round
    monkeypatch.setenv("COMMSGD_TEST_KILL_STEP", "3")
    cfg = make_cfg(*JOB, *SHAPED, "steps=100000", "hardware.timeout_s=10")
    result = execute_job(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
    err = capfd.readouterr().err
    assert result.status == "FAILED" and "rank 1 failed first" in result.reason, err
    # this process, the launcher, is still alive: its descriptor, store and server thread
    # are the namespace's last holders, and they must be gone
    assert netns.holders(_inode(err)) == []
    assert_gone(launched_pids(err))


DRIVER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import suite.links as links
    from suite.launch import execute_job
    from suite.netns import holders
    from tests.conftest import make_cfg

    made = []
    open_namespace = links.open_namespace
    def remember(spec):
        ns = open_namespace(spec)
        made.append(ns.inode)
        return ns
    links.open_namespace = remember
    try:
        execute_job(make_cfg(*sys.argv[1:]), launch_dir=Path.cwd(),
                    output_dir=Path.cwd() / "out")
        print(json.dumps({"finished": True}))
    except KeyboardInterrupt:  # the launcher has cleaned up and re-raised: what is left?
        print(json.dumps({"inode": made[0], "holders": holders(made[0])}))
""")


@slow
@needs_shaping
def test_ctrl_c_ends_the_job_and_leaves_no_namespace_and_no_rank(tmp_path):
    db = tmp_path / "mlruns.db"
    args = [*JOB, *SHAPED, "steps=100000000", "eval_every=2", "tracking=mlflow",
            f"tracking.uri=sqlite:///{db}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fe:
        # a session of its own, so that the Ctrl-C below reaches this job's processes only
        proc = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=fe, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not logged_a_step(tmp_path):  # the ranks are in the training loop
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "the job never logged a step"
            time.sleep(0.5)
        pids = launched_pids(err.read_text())
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["holders"] == [], report  # gone while the launcher was still alive
    assert report["inode"] == _inode(err.read_text())
    assert netns.holders(report["inode"]) == []
    assert_gone(pids)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("logreg").experiment_id])
    assert run.info.status == "KILLED"


# -- refusals -----------------------------------------------------------------------------------
CREATE = textwrap.dedent("""
    import sys
    from suite.netns import LinkUnavailable, ShapedLoopback
    try:
        ShapedLoopback.create(rate_bps=1e8, delay_s=None, mtu=1500,
                              what="hardware.link.rate=100mbit").close()
    except LinkUnavailable as exc:
        print(exc)
        sys.exit(2)
    print("created")
""")


def _without(capability: str, command: list[str]) -> list[str]:
    """`command` with `capability` dropped from its bounding set (so it can never have it),
    via capsh; as a user without it, the command as it is."""
    if os.geteuid() != 0:
        return command
    if shutil.which("capsh") is None:
        pytest.skip("capsh (libcap) is not installed: cannot drop a capability to test")
    return ["capsh", f"--drop={capability}", "--", "-c", 'exec "$@"', "capsh", *command]


@slow
def test_without_cap_sys_admin_the_run_is_refused_in_one_line_before_it_starts(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = _without("cap_sys_admin", [sys.executable, "-m", "suite", *JOB, *SHAPED,
                                     "progress=false"])
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("commsgd")]
    assert lines == [
        "commsgd: configuration error: hardware.link.rate=100mbit: cannot create a private "
        "network namespace (unshare: Operation not permitted): that needs CAP_SYS_ADMIN; run as "
        "root or grant it, or unset hardware.link.rate and hardware.link.delay"], proc.stderr
    assert "Traceback" not in proc.stderr
    db = tmp_path / "mlruns.db"  # nothing recorded: no rank ever started
    if db.exists():
        with sqlite3.connect(db) as con:
            assert con.execute("select count(*) from runs").fetchone()[0] == 0


def test_without_cap_net_admin_or_without_tc_shaping_is_refused(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    no_net_admin = subprocess.run(_without("cap_net_admin", [sys.executable, "-c", CREATE]),
                                  env=env, capture_output=True, text=True, timeout=60)
    if os.geteuid() == 0:  # with CAP_SYS_ADMIN kept, the namespace is made; tc is refused
        assert no_net_admin.returncode == 2, no_net_admin.stdout + no_net_admin.stderr
        assert no_net_admin.stdout.strip() == (
            "hardware.link.rate=100mbit: `ip link set lo up mtu 1500` was refused (RTNETLINK "
            "answers: Operation not permitted): shaping the loopback needs CAP_NET_ADMIN; run "
            "as root or grant it, or unset hardware.link.rate and hardware.link.delay")
    empty = tmp_path / "bin"
    empty.mkdir()
    no_tools = subprocess.run([sys.executable, "-c", CREATE], env=env | {"PATH": str(empty)},
                              capture_output=True, text=True, timeout=60)
    assert no_tools.returncode == 2
    assert no_tools.stdout.strip() == (
        "hardware.link.rate=100mbit: needs the `ip` and `tc` commands (iproute2), not found "
        "on PATH; install iproute2, or unset hardware.link.rate and hardware.link.delay")


@slow
@needs_shaping
def test_a_delay_needs_netem_and_where_there_is_one_it_adds_to_every_round(tmp_path, capfd,
                                                                           monkeypatch):
    if NO_NETEM is not None:  # this kernel has no sch_netem: the refusal is the behaviour
        with pytest.raises(LinkUnavailable) as refused:
            links.open_namespace(links.link_spec({"link": {"rate": "100mbit",
                                                            "delay": "5ms"}}))
        assert str(refused.value).startswith(
            "hardware.link.rate=100mbit, hardware.link.delay=5ms: hardware.link.delay needs "
            "the kernel's netem queueing discipline (sch_netem), which this kernel does not "
            "have (tc: ")
        return
    from suite.launch import execute_job

    _quiet_plots(monkeypatch)
    # a tiny message (d = 10): the time is latency, 2 rounds of ≥ 2 × 5 ms (both directions
    # delayed on the one loopback) a step
    cfg = make_cfg(*JOB, "task.dim=10", "hardware.link.rate=1gbit", "hardware.link.delay=5ms")
    r = execute_job(cfg, launch_dir=tmp_path, output_dir=tmp_path / "out")
    assert r.status == "FINISHED", r.reason
    assert r.final["time/comm_per_step_s"] > 2 * 5e-3
    assert r.final["time/comm_projected_per_step_s"] > 2 * 5e-3
    assert netns.holders(_inode(capfd.readouterr().err)) == []


def test_the_tc_commands_follow_tc_tbf_and_tc_netem():
    """What a link asks tc for (the netem form cannot run on a kernel without netem, so its
    commands are checked here as text, against tc-netem(8)'s netem-root, tbf-child recipe)."""
    assert netns.shaping_commands(1e8, None, 1500) == [
        ["ip", "link", "set", "lo", "up", "mtu", "1500"],
        ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "100000000bit",
         "burst", "32768", "latency", "100ms"]]
    cmds = netns.shaping_commands(1e9, 0.02, 9000)
    assert cmds[1] == ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "netem",
                       "delay", "20000us", "limit", "1111"]  # 4 × 1e9/8 × 0.02 / 9000
    assert cmds[2] == ["tc", "qdisc", "add", "dev", "lo", "parent", "1:1", "handle", "10:",
                       "tbf", "rate", "1000000000bit", "burst", "250000", "latency", "100ms"]
    assert netns.shaping_commands(None, 0.001, 1500)[1][-2:] == ["limit", "100000"]


def test_calibrate_refuses_bad_arguments_in_one_line(capsys):
    from suite.calibrate import main

    assert main(["--rate", "fast", "--no-log"]) == 2
    assert capsys.readouterr().err.strip() == (
        "commsgd-calibrate: --rate='fast': a positive number with a unit (bit, kbit, mbit, "
        "gbit), e.g. 100mbit, 1gbit; or null")
    with pytest.raises(SystemExit) as exited:
        main(["--world-size", "1"])
    assert exited.value.code == 2
    assert "--world-size=1: at least 2 ranks" in capsys.readouterr().err


@slow
@needs_shaping
def test_a_calibration_fits_the_shaped_link_and_the_report_reads_it_back(tmp_path):
    from analysis.projection import latest_calibration
    from suite import calibrate

    sizes = [100_000, 300_000, 1_000_000]  # at 100 Mbit/s: 17 to 170 ms an all_reduce
    r = calibrate.measure("100mbit", world_size=2, mtu=1500, reps=3, sizes=sizes)
    assert [(s["kind"], s["bytes"]) for s in r["samples"]] == [
        (k, n) for n in sizes for k in calibrate.KINDS]
    fit = costmodel.fit([(s["kind"], s["bytes"], 2, s["seconds"]) for s in r["samples"]],
                        shared=True)
    assert (r["alpha_s"], r["bytes_per_s"]) == (fit.alpha_s, fit.bytes_per_s)
    for s in r["samples"]:
        assert s["model_s"] == fit.predict(s["kind"], s["bytes"], 2, shared=True)
    # the shaped link, not the loopback beneath it (which moves GB/s): at most its rate, and
    # the framing model's β within a factor the machine's load cannot explain away
    framing = costmodel.Link.shaped_loopback(1e8, alpha_s=0).bytes_per_s
    assert 0.3 * framing < r["bytes_per_s"] < 1.1 * framing, r["bytes_per_s"]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "calibration.json"
    path.write_text("{}")
    run_id = calibrate.log_run(uri, costmodel.CALIBRATION_EXPERIMENT, [r], path)
    cal = latest_calibration(uri)
    assert cal.run_id == run_id and (cal.world_size, cal.mtu) == (2, 1500)
    assert cal.alpha_s == pytest.approx(r["alpha_s"], rel=1e-12, abs=1e-15)
    assert cal.rates["100mbit"]["bytes_per_s"] == pytest.approx(r["bytes_per_s"], rel=1e-12)
    assert cal.overall["median_rel_error"] == pytest.approx(
        calibrate.summary([r])["median_rel_error"], rel=1e-12)
