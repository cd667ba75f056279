"""Read commsgd runs from MLflow into tidy pandas frames. Never imports the runner.

    runs = load_runs("sqlite:///$PWD/mlruns.db", ["diana_vs_quantized"])
    runs.runs      one row per run: run_id, experiment, run_name, status, start_time, end_time,
                   seed, group, task_key, problem, method, params.<key>, tags.<key>,
                   const.<name> (the task constants, params task/<name>) and
                   final.<metric> (the last logged value of each metric)
    runs.history   one long frame of metric histories: run_id, key, step, value

Grouping (docs/theory.md §8: fits are over seeds of one configuration):
- `group`: the configuration minus the seed (and minus keys that only say where a run is
  recorded: tracking.*, progress, hydra.*). Seeds of one group are the replicates we fit over.
- `task_key`: experiment + task.* params: runs that solve the same problem instance, so one
  target ε serves them all.
- `problem`: task_key + workers + batch_size: the setting in which methods are compared.
- `method`: what is left of the group (algorithm, compressor, their hyper-parameters, step
  size...), with a readable label: the method's short name (`leaderboard.name`, which
  commsgd-run sets to a preset's method file name) where there is one, else
  algorithm/compressor, plus the keys that tell apart configurations sharing that name.
- `method_id`: the method minus the keys a tuned sweep searches (`leaderboard.tune_keys`,
  where the run declares tuning seeds): the trials of one method share it (analysis.tuning).
- `role`: 'tuning' for a run whose seed is one of its `leaderboard.tuning_seeds`, else
  'evaluation' (a held-out seed, or a sweep without tuning).

Robustness: failed runs (diverged, crashed) keep their partial histories and their status;
RUNNING runs are listed but have no `group` membership in fits (see `usable`); summary runs
written by `commsgd-report` (tag commsgd.report=true) are excluded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pandas as pd

from suite.costmodel import LEDGER_KEYS

# Metrics the analysis reads. train/lr is logged every step and is not needed for any fit, so it
# is skipped by default: it is the largest history by far.
DEFAULT_KEYS = (
    "train/loss", "train/suboptimality", "train/grad_norm_sq", "test/loss", "test/accuracy",
    "comm/bits_up", "comm/bits_up_total", "comm/bits_up_alt_code", "comm/bits_up_entropy",
    "comm/bits_down", "comm/rounds",
    "time/compute_s", "time/compress_s", "time/comm_s", "time/wall_s",
) + LEDGER_KEYS  # the step's collectives, for the projection onto links (analysis/projection)
REPORT_TAG = "commsgd.report"
CONSTANT_PREFIX = "task/"  # the task constants: params task/<name> (metrics in older runs)
# Metrics renamed since older runs logged them: old name -> the name the analysis uses.
RENAMED = {"comm/bits_up_entropy": "comm/bits_up_alt_code"}
# Params that do not change what a run computes, only where and how it is recorded.
UNGROUPED_PREFIXES = ("tracking.", "hydra.", "leaderboard.")
LEADERBOARD_PREFIX = "params.leaderboard."
UNGROUPED_KEYS = ("seed", "progress")
# Params that define the problem a method is run on, as opposed to the method itself.
PROBLEM_KEYS = ("workers", "batch_size")
TASK_PREFIX = "task."
PAGE_SIZE = 1000  # runs per search_runs page (MLflow's own maximum per call is larger)


@dataclass
class RunSet:
    runs: pd.DataFrame
    history: pd.DataFrame
    tracking_uri: str = ""
    experiments: list[str] = field(default_factory=list)
    excluded_summary_runs: int = 0

    def usable(self) -> pd.DataFrame:
        """Runs that ended (FINISHED or FAILED): RUNNING ones are in flight, KILLED ones were
        stopped by hand and say nothing about the method."""
        return self.runs[self.runs["status"].isin(["FINISHED", "FAILED"])]

    def curves(self, run_ids, key: str = "train/suboptimality") -> pd.DataFrame:
        """A wide frame, index = step, one column per run id (NaN where a run has no value,
        e.g. after it diverged)."""
        h = self.history[(self.history["key"] == key) & self.history["run_id"].isin(run_ids)]
        wide = h.pivot_table(index="step", columns="run_id", values="value", aggfunc="last")
        return wide.reindex(columns=[r for r in run_ids if r in wide.columns]).sort_index()


def parse_value(text):
    """A param as MLflow stores it (str(value)) back to a Python value: None, bools, ints,
    floats, lists; anything else stays a string ('theory', 'full', 'quant_p')."""
    if not isinstance(text, str):
        return text
    if text in ("None", "null"):
        return None
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(v.strip().strip("'\"")) for v in inner.split(",")] if inner else []
    return text


def _hash(items: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(items.items()), default=str).encode()).hexdigest()[:12]


def _is_grouped(key: str) -> bool:
    return key not in UNGROUPED_KEYS and not key.startswith(UNGROUPED_PREFIXES)


def _search_all(client, experiment_ids: list[str]) -> list:
    """Every run of the experiments, page by page (search_runs returns at most max_results)."""
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, max_results=PAGE_SIZE, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        out.extend(page)
        token = page.token
        if not token:
            return out


def load_runs(tracking_uri: str, experiments: list[str] | str, *,
              keys: tuple[str, ...] | None = DEFAULT_KEYS) -> RunSet:
    """Read the runs of the named experiments. `keys=None` reads every logged metric history."""
    from mlflow.tracking import MlflowClient

    if isinstance(experiments, str):
        experiments = [experiments]
    client = MlflowClient(tracking_uri=tracking_uri)
    ids, names = [], {}
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise LookupError(f"experiment {name!r} not found in {tracking_uri}")
        ids.append(exp.experiment_id)
        names[exp.experiment_id] = name

    rows, histories, skipped = [], [], 0
    for run in _search_all(client, ids) if ids else []:
        tags = run.data.tags
        if tags.get(REPORT_TAG, "").lower() == "true":
            skipped += 1
            continue
        rows.append(_run_row(run, names))
        metric_keys = [k for k in run.data.metrics if not k.startswith(CONSTANT_PREFIX)]
        if keys is not None:
            metric_keys = [k for k in metric_keys if k in keys]
        for key in metric_keys:
            for m in client.get_metric_history(run.info.run_id, key):
                histories.append((run.info.run_id, RENAMED.get(key, key), int(m.step),
                                  float(m.value)))

    base = ["run_id", "experiment", "run_name", "status", "start_time", "end_time", "seed",
            "group", "task_key", "problem", "method_key", "method_id", "method", "role",
            "short_name", "problem_label"]
    runs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=base)
    history = pd.DataFrame(histories, columns=["run_id", "key", "step", "value"])
    if not history.empty:
        # a value re-logged at the same step (a resumed run) counts once: the last one
        history = (history.drop_duplicates(["run_id", "key", "step"], keep="last")
                   .sort_values(["run_id", "key", "step"]).reset_index(drop=True))
    if not runs.empty:
        runs = _add_groups(runs)
    return RunSet(runs, history, tracking_uri, list(experiments), skipped)


def _run_row(run, experiment_names: dict) -> dict:
    info, data = run.info, run.data
    row = {
        "run_id": info.run_id,
        "experiment": experiment_names.get(info.experiment_id, info.experiment_id),
        "run_name": info.run_name,
        "status": info.status,
        "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
        "end_time": (pd.to_datetime(info.end_time, unit="ms", utc=True)
                     if info.end_time else pd.NaT),
    }
    row.update({f"params.{k}": v for k, v in data.params.items()
                if not k.startswith(CONSTANT_PREFIX)})
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    row.update(_constants(data))
    for k, v in data.metrics.items():
        if not k.startswith(CONSTANT_PREFIX):
            row[f"final.{RENAMED.get(k, k)}"] = v
    seed = parse_value(data.params.get("seed", "0"))
    row["seed"] = seed if isinstance(seed, int) else 0
    return row


def split_params(params: dict) -> tuple[dict, dict, dict, dict]:
    """A run's params as (grouped, task, problem, method): what makes its configuration (all
    but the seed and the recording keys), the task's keys, the problem's (task, workers, batch
    size) and the method's (the rest)."""
    grouped = {k: v for k, v in params.items() if _is_grouped(k)}
    task = {k: v for k, v in grouped.items() if k.startswith(TASK_PREFIX)}
    problem = task | {k: grouped[k] for k in PROBLEM_KEYS if k in grouped}
    method = {k: v for k, v in grouped.items() if k not in problem}
    return grouped, task, problem, method


def declared(row, key: str, default=None):
    """A run's `leaderboard.<key>` param, parsed; `default` where the run does not log it (runs
    from before the key existed)."""
    v = row.get(LEADERBOARD_PREFIX + key)
    return parse_value(v) if isinstance(v, str) else default


def tuned_keys(row) -> list[str]:
    """The keys this run's sweep searches, where it declares tuning seeds; else none."""
    if not declared(row, "tuning_seeds", []):
        return []
    keys = declared(row, "tune_keys", ["lr"])
    return [keys] if isinstance(keys, str) else list(keys or [])


def without_keys(params: dict, keys) -> dict:
    # a tuned key and what the runner derives from it (lr -> lr.resolved) both vary by trial
    return {k: v for k, v in params.items()
            if not any(k == t or k.startswith(t + ".") for t in keys)}


def _constants(data) -> dict[str, float]:
    """const.<name> for each task constant: logged as the param task/<name> (a run's fact,
    not a curve), or, by runs from before that, as a one-point metric of the same name."""
    out = {f"const.{k[len(CONSTANT_PREFIX):]}": v for k, v in data.metrics.items()
           if k.startswith(CONSTANT_PREFIX)}
    out.update({f"const.{k[len(CONSTANT_PREFIX):]}": float(v) for k, v in data.params.items()
                if k.startswith(CONSTANT_PREFIX)})
    return out


def _add_groups(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs.copy()
    param_cols = [c for c in runs.columns if c.startswith("params.")]
    groups, tasks, problems, methods, ids, roles, names = [], [], [], [], [], [], []
    method_params: list[dict] = []
    for _, r in runs.iterrows():
        params = {c[len("params."):]: r[c] for c in param_cols if isinstance(r[c], str)}
        grouped, task, problem, method = split_params(params)
        groups.append(r["experiment"] + ":" + _hash(grouped))
        tasks.append(r["experiment"] + ":" + _hash(task))
        problems.append(r["experiment"] + ":" + _hash(problem))
        methods.append(_hash(method))
        ids.append(_hash(without_keys(method, tuned_keys(r))))
        roles.append("tuning" if r["seed"] in (declared(r, "tuning_seeds", []) or [])
                     else "evaluation")
        name = declared(r, "name")
        names.append(str(name) if name not in (None, "") else None)
        method_params.append(method)
    runs["group"], runs["task_key"], runs["problem"] = groups, tasks, problems
    runs["method_key"], runs["method_id"], runs["role"] = methods, ids, roles
    runs["short_name"] = names
    # labels name what varies within an experiment (a key that only differs between two
    # experiments, e.g. their step counts, would clutter every label)
    labels = [""] * len(runs)
    for _, idx in runs.groupby("experiment", sort=False).indices.items():
        found = short_labels([method_params[i] for i in idx], [names[i] for i in idx])
        for i, label in zip(idx, found, strict=True):
            labels[i] = label
    runs["method"] = labels
    runs["problem_label"] = problem_labels(runs)
    return runs


# Hyper-parameters hidden from labels: they are implied by others or rarely informative.
_LABEL_SKIP = ("lr.resolved", "algorithm.name", "compressor.name")


def _extras(params: dict, varying: list[str]) -> list[str]:
    return [f"{k.split('.', 1)[-1] if '.' in k else k}={params[k]}" for k in varying
            if k in params]


def _varying(method_params: list[dict], skip: tuple[str, ...]) -> list[str]:
    values: dict[str, set] = {}
    for p in method_params:
        for k, v in p.items():
            values.setdefault(k, set()).add(v)
    return sorted(k for k, vs in values.items() if len(vs) > 1 and k not in skip)


def method_labels(method_params: list[dict]) -> list[str]:
    """'algorithm/compressor' plus the hyper-parameters that vary among the runs that have them,
    e.g. 'diana/quant_p p=inf block_size=8'. Keys with one value everywhere are left out."""
    varying = _varying(method_params, _LABEL_SKIP)
    return [" ".join([f"{p.get('algorithm.name', '?')}/{p.get('compressor.name', '?')}",
                      *_extras(p, varying)]) for p in method_params]


def short_labels(method_params: list[dict], names: list[str | None]) -> list[str]:
    """Labels of method configurations: the short name where one is set, followed by the keys
    that tell apart configurations sharing it ('dqgd_linf', or 'dqgd_linf lr=0.1' among the
    trials of a tuned sweep); the unnamed ones labelled among themselves by method_labels."""
    out = [""] * len(method_params)
    unnamed = [i for i, n in enumerate(names) if n is None]
    for i, label in zip(unnamed, method_labels([method_params[i] for i in unnamed]),
                        strict=True):
        out[i] = label
    by_name: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if n is not None:
            by_name.setdefault(n, []).append(i)
    for name, idx in by_name.items():
        varying = _varying([method_params[i] for i in idx], ("lr.resolved",))
        for i in idx:
            out[i] = " ".join([name, *_extras(method_params[i], varying)])
    return out


def problem_labels(runs: pd.DataFrame) -> list[str]:
    """'<experiment>: dataset=..., split=..., K=..., b=...' with the task keys that matter."""
    out = []
    for _, r in runs.iterrows():
        path = r.get("params.task.path")  # a user's own file (task.path) is the data set
        dataset = (path.rsplit("/", 1)[-1] if isinstance(path, str) and path != "None"
                   else r.get("params.task.dataset"))
        if not isinstance(dataset, str):  # a task without data sets (a plugin's): its name
            dataset = r.get("params.task.name", "?")
        parts = [f"{dataset}", f"split={r.get('params.task.split', '?')}"]
        l2 = r.get("params.task.l2")
        if isinstance(l2, str) and l2 != "None":
            parts.append(f"l2={l2}")
        parts += [f"K={r.get('params.workers', '?')}", f"b={r.get('params.batch_size', '?')}"]
        out.append(f"{r['experiment']}: " + ", ".join(parts))
    return out
