"""`commsgd-report` end to end: a tiny sweep through the CLI into a temporary MLflow store, the
report built from it (tables checked against the MLflow data), the standalone HTML page, the
summary run, and every experiment preset composing into valid runs."""

from __future__ import annotations

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONF, run_cli

# 2 compressors × 2 step sizes × 2 seeds = 8 runs: lr=500 diverges (FAILED runs, censored in
# the leaderboard), lr=theory converges. Full gradients keep the runs deterministic and short.
SWEEP = ("-m", "compressor=identity,qsgd", "lr=theory,500", "seed=0,1", "steps=60",
         "workers=4", "batch_size=full", "task.l2=0.1", "eval_every=10", "progress=false",
         "hardware.threads=1")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from analysis.report import main

    tmp = tmp_path_factory.mktemp("report")
    run_cli(*SWEEP, cwd=tmp)
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    out = tmp / "out"
    assert main(["--tracking-uri", uri, "--experiment", "logreg", "--out", str(out),
                 "--n-boot", "1000"]) == 0
    return uri, out


def md_tables(text: str, section: str) -> dict[str, list[dict]]:
    """The Markdown tables under '## section', keyed by the '### ' heading above each."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    tables, heading, rows, header = {}, "", None, None
    for line in body.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
        elif line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if header is None:
                header, rows = cells, []
            elif set("".join(cells)) <= {"-"}:
                continue
            else:
                rows.append(dict(zip(header, cells, strict=True)))
        elif header is not None:
            tables[heading] = rows
            header = None
    if header is not None:
        tables[heading] = rows
    return tables


def first_number(cell: str) -> float:
    return math.inf if cell.startswith("not reached") else float(cell.split()[0])


def mlflow_runs(uri):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("logreg")
    return client, client.search_runs([exp.experiment_id])


def history(client, run_id, key):
    h = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return np.array([m.step for m in h]), np.array([m.value for m in h])


def test_leaderboard_holds_the_right_runs_and_numbers(built):
    uri, out = built
    text = (out / "report.md").read_text()
    client, runs = mlflow_runs(uri)
    runs = [r for r in runs if r.data.tags.get("commsgd.report") != "true"]
    assert len(runs) == 8
    assert "Runs: 8 (FAILED 4, FINISHED 4)" in text

    (label, rows), = md_tables(text, "Leaderboards").items()
    assert "K=4" in label and "b=full" in label
    assert len(rows) == 4  # one row per configuration: 2 compressors × 2 step sizes
    eps = float(re.search(r"Target ε = [0-9.e+-]+·F0 = ([0-9.e+-]+)", text).group(1))

    for row in rows:
        comp = "qsgd" if "qsgd" in row["method"] else "identity"
        lr = "500" if "lr=500" in row["method"] else "theory"
        mine = [r for r in runs if r.data.params["compressor.name"] == comp
                and r.data.params["lr"] == lr]
        assert len(mine) == 2
        # recompute from the raw MLflow histories: first step with f − f* ≤ ε, per seed
        hits, bits = [], []
        for r in mine:
            steps, sub = history(client, r.info.run_id, "train/suboptimality")
            _, up = history(client, r.info.run_id, "comm/bits_up")
            reached = np.nonzero(sub <= float(f"{eps:.4g}") * (1 + 1e-3))[0]
            hits.append(steps[reached[0]] if reached.size else math.inf)
            bits.append(up[reached[0]] if reached.size else math.inf)
        n_reached = sum(math.isfinite(h) for h in hits)
        assert row["reached"] == f"{n_reached}/2", row
        if lr == "500":
            assert {r.info.status for r in mine} == {"FAILED"}
            assert n_reached == 0
        # the lower median of two seeds is the smaller value: finite if one seed reached
        assert first_number(row["iterations to ε [95% CI]"]) == min(hits)
        assert first_number(row["bits to ε [95% CI]"]) == pytest.approx(min(bits), rel=5e-3)
    # at least one configuration reaches ε (the target rule guarantees it) and one does not
    assert {r["reached"] for r in rows} >= {"2/2", "0/2"}
    # ranked by bits to ε, the censored ones ("not reached") last
    ranked = [first_number(r["bits to ε [95% CI]"]) for r in rows]
    assert ranked == sorted(ranked)


def test_target_follows_the_documented_ladder_rule(built):
    uri, out = built
    text = (out / "report.md").read_text()
    r = float(re.search(r"Target ε = ([0-9.e+-]+)·F0", text).group(1))
    client, runs = mlflow_runs(uri)
    curves = {}
    for run in runs:
        if run.data.tags.get("commsgd.report") == "true":
            continue
        key = (run.data.params["compressor.name"], run.data.params["lr"])
        curves.setdefault(key, []).append(history(client, run.info.run_id,
                                                  "train/suboptimality")[1])
    F0 = float(np.median([c[0] for cs in curves.values() for c in cs]))

    def reached_by_half(level):
        return any(2 * sum((c <= level * F0).any() for c in cs) >= len(cs)
                   for cs in curves.values())

    ladder = [1e-4, 1e-3, 1e-2, 1e-1]
    assert r in ladder and reached_by_half(r)
    assert not any(reached_by_half(level) for level in ladder[:ladder.index(r)])


def test_theory_table_shows_the_algorithm_modules_prediction(built):
    from suite.algorithms import REGISTRY

    uri, out = built
    text = (out / "report.md").read_text()
    (_, rows), = md_tables(text, "Theory against measurement").items()
    row = next(r for r in rows if r["method"].startswith("sgd/identity")
               and "lr=theory" in r["method"])
    client, runs = mlflow_runs(uri)
    run = next(r for r in runs if r.data.params.get("compressor.name") == "identity"
               and r.data.params.get("lr") == "theory")
    c = {k[len("task/"):]: float(v) for k, v in run.data.params.items() if k.startswith("task/")}
    thm = REGISTRY["sgd"].theorem(c, workers=4, batch_size=None, omega=0.0, delta=None)
    assert float(row["ρ bound"]) == pytest.approx(thm.rate, rel=1e-5)
    assert row["rate holds"] == "yes"  # the measured contraction is faster than the bound
    assert float(row["ρ̂ [95% CI]"].split()[0]) < thm.rate


def test_summary_run_is_logged_and_left_out_of_the_analysis(built):
    from analysis.runs import load_runs

    uri, out = built
    client, runs = mlflow_runs(uri)
    summaries = [r for r in runs if r.data.tags.get("commsgd.report") == "true"]
    assert len(summaries) == 1
    s = summaries[0]
    assert s.info.run_name.startswith("report-") and s.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(s.info.run_id)}
    assert {"report.md", "report.html"} <= names and any(n.endswith(".png") for n in names)
    assert len(load_runs(uri, ["logreg"]).runs) == 8


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_page_is_standalone_with_embedded_plots(built):
    _, out = built
    page = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    tags = parser.tags
    assert [t for t, _ in tags].count("table") >= 4
    for tag, attrs in tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"(https?:)?//", value), (tag, value[:80])
        assert tag not in ("script", "link", "iframe"), tag
    imgs = [a["src"] for t, a in tags if t == "img"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(imgs) == len(pngs) >= 2  # every PNG written beside it is embedded
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert all(f"({name})" in md for name in pngs)  # the Markdown links the same files


# ------------------------------------------------------------------------------ presets

def _presets():
    return sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", _presets())
def test_every_preset_is_a_sweep_whose_points_compose_into_valid_runs(preset):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from suite.algorithms import REGISTRY
    from suite.compressors import REGISTRY as COMPRESSORS
    from suite.compressors import build_compressor
    from suite.config import bind, check_root, group_kwargs

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={preset}"],
                      return_hydra_config=True)
        assert str(cfg.hydra.mode).endswith("MULTIRUN")
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        assert cfg.tracking.experiment == preset  # its report can target it by name
        method_keys = [k for k in params if k.startswith("+experiment/")]
        points = [[]] if not method_keys else [
            [f"{method_keys[0]}={m}"] for m in str(params[method_keys[0]]).split(",")]
        for extra in points:
            c = compose(config_name="config",
                        overrides=[f"experiment={preset}", "tracking=none", *extra])
            check_root(c)
            alg, akw = group_kwargs(c, "algorithm")
            comp, ckw = group_kwargs(c, "compressor")
            bind(REGISTRY[alg].build, "algorithm", alg, akw)
            bind(COMPRESSORS[comp], "compressor", comp, ckw)
            kind = build_compressor(comp, **ckw).kind
            assert kind in REGISTRY[alg].compressor_kinds, (preset, extra, alg, comp)
            if REGISTRY[alg].full_gradients_only:
                assert c.batch_size == "full", (preset, extra)
    for key, values in params.items():
        if not key.startswith("+"):
            assert "," in str(values), (key, values)  # a sweep, not a single value


def test_a_missing_store_is_a_clear_error_and_creates_nothing(tmp_path, capsys):
    from analysis.report import main

    uri = f"sqlite:///{tmp_path / 'nope' / 'mlruns.db'}"
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists() and not (tmp_path / "out").exists()
