"""The report's projection onto real links: the collectives each run performed, costed by
suite/costmodel.py, with α from the latest calibration in the store.

    time to ε on a link = T_ε·c + model(the run's collectives until T_ε, W ranks, link)

c is the measured compute and compression seconds per step (time/compute_s + time/compress_s
at T_ε), the collectives are the ledger a run logs (comm/<kind>_calls and comm/<kind>_bytes:
what the distributed backend handed to each all_reduce, all_gather and broadcast, or, for a
simulated run, what it would with one worker per rank), W is the run's tag comm.ranks, and the
links are switched full-duplex Ethernet of 1, 10 and 100 Gbit/s per rank (β at MTU 1500).
Runs that predate the ledger fall back on the bit count (groups.projected_time).

`latest_calibration` reads the newest FINISHED run of `commsgd-calibrate` (experiment
`calibration`, tag commsgd.calibration=true) in the same store: its α, its β against the
framing model, and how far its fitted model was from its measurements. `shaped_runs` sets the
runs made on a shaped link (hardware.link.rate) beside their own projection: measured and
projected seconds of collectives per step, as the runs logged them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from suite import costmodel

from . import groups as G
from . import rates

CALIBRATION_TAG = "commsgd.calibration"
ERROR_KEYS = ("median_rel_error", "max_rel_error", "bandwidth_median_rel_error",
              "bandwidth_max_rel_error")
TIME_KEYS = ("time/compute_s", "time/compress_s")
MEASURED, PROJECTED = "time/comm_per_step_s", "time/comm_projected_per_step_s"


@dataclass
class Calibration:
    run_id: str
    started: str  # 'YYYY-MM-DD HH:MM UTC'
    world_size: int
    mtu: int
    alpha_s: float  # the median over its rates: what the projection uses
    rates: dict[str, dict[str, float]] = field(default_factory=dict)  # rate -> fitted values
    overall: dict[str, float] = field(default_factory=dict)  # errors over every rate


def latest_calibration(tracking_uri: str | None,
                       experiment: str = costmodel.CALIBRATION_EXPERIMENT
                       ) -> Calibration | None:
    """The newest FINISHED calibration run in the store, or None when there is none."""
    if not tracking_uri:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs([exp.experiment_id],
                               filter_string=f"tags.`{CALIBRATION_TAG}` = 'true' and "
                                             "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        return None
    run = found[0]
    m, p = run.data.metrics, run.data.params
    per_rate: dict[str, dict[str, float]] = {}
    for key, value in m.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "calibration":
            per_rate.setdefault(parts[1], {})[parts[2]] = value
    import time

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.info.start_time / 1000))
    return Calibration(run.info.run_id, started, int(p.get("world_size", 0)),
                       int(p.get("mtu", costmodel.DEFAULT_MTU)),
                       float(m.get("calibration/alpha_s", math.nan)), per_rate,
                       {k: m[f"calibration/{k}"] for k in ERROR_KEYS
                        if f"calibration/{k}" in m})


def _ranks(runset, run_ids: list[str]) -> int | None:
    """The W a group's ledgers describe (tag comm.ranks), None if its runs have none."""
    runs = runset.runs
    col = "tags.comm.ranks"
    if col not in runs:
        return None
    values = set(runs.loc[runs["run_id"].isin(run_ids), col].dropna())
    if len(values) != 1:
        return None
    return int(next(iter(values)))


def projected_time(runset, g: G.Group, eps: float, link: costmodel.Link, *,
                   n_boot: int = rates.N_BOOT) -> tuple[rates.Censored, bool]:
    """Time to ε on `link` per seed (T_ε·c plus the model's time for the collectives until
    T_ε), censored seeds +∞, summarised as the report summarises every cost; and whether the
    collective model was used (False: the group has no ledger; the bit model instead)."""
    W = _ranks(runset, g.ended.run_ids)
    c = G.aligned(runset, g.ended.run_ids, (G.SUBOPT, *TIME_KEYS, *costmodel.LEDGER_KEYS))
    if W is None or not any(k in c.values for k in costmodel.LEDGER_KEYS):
        gbps = _ethernet_gbps(link)
        return G.projected_time(g, eps, gbps, alpha=link.alpha_s, n_boot=n_boot), False
    idx = rates.hitting(c[G.SUBOPT], eps)
    out = np.full(len(idx), np.inf)
    for i, j in enumerate(idx):
        if j < 0:
            continue
        at = {k: float(c[k][i, j]) for k in costmodel.LEDGER_KEYS if k in c.values}
        at = {k: v for k, v in at.items() if math.isfinite(v)}
        comm = costmodel.time_from_metrics(at, W, link) if at else 0.0
        out[i] = float(c[TIME_KEYS[0]][i, j] + c[TIME_KEYS[1]][i, j]) + comm
    return rates.censored_median(out, n_boot), True


def _ethernet_gbps(link: costmodel.Link) -> float:
    """The nominal rate of an Ethernet link (the bit model takes Gbit/s)."""
    eff = costmodel.payload_fraction(costmodel.DEFAULT_MTU, costmodel.ETHERNET_FRAMING_BYTES)
    return link.bytes_per_s * 8 / eff / 1e9


def shaped_runs(runset) -> list[dict]:
    """Runs made on a shaped link that logged both measured and projected seconds of
    collectives per step: one row per group (median over its seeds)."""
    runs = runset.runs
    if runs.empty or f"final.{PROJECTED}" not in runs:
        return []
    part = runs[runs[f"final.{PROJECTED}"].notna() & runs[f"final.{MEASURED}"].notna()]
    out = []
    for _, rows in part.groupby("group", sort=False):
        first = rows.iloc[0]
        measured = float(np.median(rows[f"final.{MEASURED}"]))
        projected = float(np.median(rows[f"final.{PROJECTED}"]))
        out.append({"method": first["method"], "problem": first["problem_label"],
                    "link": first.get("params.hardware.link.rate", "?"),
                    "seeds": len(rows), "measured": measured, "projected": projected,
                    "ratio": measured / projected if projected > 0 else math.nan})
    return out
