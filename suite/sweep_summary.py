"""The end of a sweep: one summary for the whole sweep, instead of a full summary per job.

Each job of a sweep prints one line (`commsgd: run finished: ...`, `... failed (reason)`,
`... skipped: ...`) and returns a `JobOutcome` to its sweeper: the job's objective as a float
(what Hydra's optimising sweepers minimise) that also carries the run's status and where it was
logged. When the sweep ends, the sweeper (hydra_plugins/commsgd_sweep/reusing_sweeper.py)
prints `sweep_summary` of every job's outcome: how many finished, failed or were skipped, the
store and the command that opens it, each experiment's runs table, and the `commsgd-report`
command that turns the sweep into a leaderboard.

No MLflow here: the outcomes carry all the summary says, so the launcher never imports it.
"""

from __future__ import annotations

import math
import shlex
from collections import Counter
from dataclasses import dataclass

from suite.tracking import runs_table_url

# the objective a sweep minimises: the first of these the run logged (NaN if none: a failed
# run, which an optimising sweeper must not take for a good one)
OBJECTIVE_KEYS = ("train/suboptimality", "train/loss")
STATUSES = ("FINISHED", "FAILED", "SKIPPED")


class JobOutcome(float):
    """A job's objective (final train/suboptimality, else train/loss; NaN when it has none)
    with the run's status, reason and store. A float, so that any sweeper can use it as the
    value to minimise; pickled whole across a parallel launcher's processes."""

    status: str
    reason: str | None
    run_id: str | None
    tracking_uri: str | None
    experiment: str | None
    experiment_id: str | None

    def __new__(cls, result) -> JobOutcome:
        final = getattr(result, "final", None) or {}
        value = next((final[k] for k in OBJECTIVE_KEYS if k in final), math.nan)
        self = super().__new__(cls, value if result.status == "FINISHED" else math.nan)
        self.status = result.status
        self.reason = result.reason
        self.run_id = result.run_id
        self.tracking_uri = result.tracking_uri
        self.experiment = result.experiment
        self.experiment_id = getattr(result, "experiment_id", None)
        return self

    def __reduce__(self):
        return (_rebuild, (float(self), dict(self.__dict__)))

    def __repr__(self) -> str:
        return f"JobOutcome({float(self)!r}, status={self.status!r}, run_id={self.run_id!r})"


def _rebuild(value: float, state: dict) -> JobOutcome:
    self = float.__new__(JobOutcome, value)
    self.__dict__.update(state)
    return self


def job_line(result) -> str:
    """The one line a job of a sweep prints: its status, objective (or reason) and run."""
    status = result.status.lower()
    if result.status == "SKIPPED":
        return f"commsgd: skipped: {result.reason}"
    line = f"commsgd: run {status}" + (f" ({result.reason})" if result.reason else "")
    details = []
    final = result.final or {}
    key = next((k for k in OBJECTIVE_KEYS if k in final), None)
    if key is not None and result.status == "FINISHED":
        details.append(f"{key} {final[key]:.6g}")
    if result.run_id:
        details.append(f"run {result.run_id}")
    return line + (": " + ", ".join(details) if details else "")


@dataclass(frozen=True)
class _Store:
    uri: str
    experiment: str | None
    experiment_id: str | None


def sweep_summary(outcomes: list, sweep_dir: str, report_out: str = "reports") -> str:
    """The sweep's summary, from its jobs' return values (a JobOutcome each; anything else is
    counted as a job that returned no outcome, e.g. another task function)."""
    counts = Counter(o.status if isinstance(o, JobOutcome) else "no outcome" for o in outcomes)
    parts = [f"{counts[s]} {s.lower()}" for s in STATUSES if counts[s]]
    parts += [f"{n} {s}" for s, n in counts.items() if s not in STATUSES]
    n = len(outcomes)
    lines = [f"commsgd: sweep done: {n} job{'s' * (n != 1)}"
             + (f" ({', '.join(parts)})" if parts else "") + f"; outputs in {sweep_dir}"]
    stores: dict[tuple[str, str | None], _Store] = {}
    for o in outcomes:
        if isinstance(o, JobOutcome) and o.tracking_uri:
            key = (o.tracking_uri, o.experiment)
            known = stores.get(key)
            if known is None or known.experiment_id is None:
                stores[key] = _Store(o.tracking_uri, o.experiment, o.experiment_id)
    if not stores:
        lines.append("  not tracked (tracking=none): each job's curves are in its output "
                     "directory")
        return "\n".join(lines)
    for uri in dict.fromkeys(s.uri for s in stores.values()):
        experiments = [s for s in stores.values() if s.uri == uri]
        names = [s.experiment for s in experiments if s.experiment]
        lines.append(f"  logged to {uri}, experiment{'s' * (len(names) != 1)} "
                     + ", ".join(repr(x) for x in names))
        if uri.startswith("sqlite:"):
            lines.append(f"  open it with: mlflow ui --backend-store-uri {uri}")
        for s in experiments:
            if s.experiment_id is not None:
                lines.append(f"  runs table of '{s.experiment}': "
                             f"{runs_table_url(uri, s.experiment_id)}")
        lines.append("  leaderboard: " + report_command(uri, names, report_out))
    return "\n".join(lines)


def report_command(uri: str, experiments: list[str], report_out: str = "reports") -> str:
    """The exact `commsgd-report` command for these experiments of a store."""
    args = ["commsgd-report", "--tracking-uri", uri]
    for name in experiments:
        args += ["--experiment", name]
    out = f"{report_out}/{experiments[0]}" if len(experiments) == 1 else f"{report_out}/sweep"
    args += ["--out", out]
    return shlex.join(args)
