"""The documents say what the code does: every cited theory section exists, every metric and
key is documented, and the package metadata is the modern form."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

THEORY = ROOT / "docs" / "theory.md"
CITED = "docs/theory" + ".md"  # spelled in two parts so that this file cites nothing itself
SECTION = r"§\d+[a-z]?"
# a citation: the file name, then one or more sections joined by commas, dashes or "and"
CITATION = re.compile(re.escape(CITED) + rf"\s*({SECTION}(?:\s*(?:,|–|-|and)\s*{SECTION})*)")
SCANNED = (".py", ".md", ".yaml", ".yml", ".html", ".toml", ".txt", ".cfg")
SKIPPED_DIRS = {".venv", ".git", "outputs", "multirun", "mlartifacts", "reports", "__pycache__",
                ".pytest_cache", "checkpoints"}


def project_files():
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in SCANNED and not SKIPPED_DIRS & set(rel.parts) \
                and not any(p.startswith(".") for p in rel.parts):
            yield path


def headings() -> set[str]:
    """The sections docs/theory.md defines: every § token in its Markdown headings."""
    lines = [ln for ln in THEORY.read_text().splitlines() if ln.startswith("#")]
    return {tok for ln in lines for tok in re.findall(SECTION, ln)}


def test_every_theory_citation_resolves_to_a_section():
    """Code, configs, docs, report templates and the sample report cite `docs/theory.md §N`;
    each §N must be a heading there (new sections, §10 and beyond, work the same way)."""
    defined = headings()
    assert {"§0", "§1", "§1a", "§8a", "§8e", "§9"} <= defined
    cited: dict[str, set[str]] = {}
    for path in project_files():
        for m in CITATION.finditer(path.read_text(errors="ignore")):
            for tok in re.findall(SECTION, m.group(1)):
                cited.setdefault(tok, set()).add(str(path.relative_to(ROOT)))
    assert len(cited) >= 10  # the scan found the citations (the code makes dozens)
    missing = {tok: sorted(files) for tok, files in cited.items() if tok not in defined}
    assert not missing, missing


def test_the_citation_pattern_reads_lists_and_ranges():
    text = f"({CITED} §3, §9) and ({CITED} §2–§6) and ({CITED} §8a, §8b and §8e): done"
    found = [re.findall(SECTION, m.group(1)) for m in CITATION.finditer(text)]
    assert found == [["§3", "§9"], ["§2", "§6"], ["§8a", "§8b", "§8e"]]


def test_nothing_cites_a_theory_file_outside_the_repository():
    outside = "THEORY" + ".md"
    offenders = [str(p.relative_to(ROOT)) for p in project_files()
                 if outside in p.read_text(errors="ignore")]
    assert not offenders, offenders


def test_the_theory_document_records_the_constants_the_code_chose():
    text = THEORY.read_text()
    for fact in ("c = 12 [M]", "c = 5 [M]", "s = 1: ω = √d_l − 1", "1/(4L)",
                 "1/(L_max(1 + 6ω/K))", "ladder 1, 2, 5"):
        assert fact in text, fact


# ---------------------------------------------------------------- metrics and keys


def comm_metric_names() -> set[str]:
    """Every comm/ metric the code can log (the channel and the distributed backend)."""
    names = set()
    for f in (*sorted((ROOT / "suite" / "comm").glob("*.py")),
              ROOT / "suite" / "backends" / "distributed.py"):
        names |= set(re.findall(r'"(comm/[a-z_]+)"', f.read_text()))
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/analysis.md"])
def test_each_comm_metric_is_defined_in_the_docs(doc):
    """A definition, not a mention: a row of the metrics table whose first cell names the
    metric (`| name[, name] | meaning |`)."""
    names = comm_metric_names()
    assert {"comm/bits_up", "comm/bits_up_total", "comm/bits_up_alt_code",
            "comm/bits_down", "comm/rounds"} <= names
    text = (ROOT / doc).read_text()
    rows = {name: m.group(2) for m in re.finditer(r"^\| ([^|]+) \| (.+) \|$", text, re.M)
            for name in re.findall(r"`(comm/[a-z_]+)`", m.group(1))}
    for name in names:
        assert name in rows and len(rows[name]) > 30, (doc, name)
    assert "not a lower bound" in rows["comm/bits_up_alt_code"] or \
        "not a bound" in rows["comm/bits_up_alt_code"]
    assert "sum over" in rows["comm/bits_up_total"].lower() or "all K" in \
        rows["comm/bits_up_total"]


def test_every_metric_a_run_logs_is_listed_in_the_readme():
    from suite.runner import execute
    from tests.conftest import make_cfg

    res = execute(make_cfg("steps=2", "eval_every=1"))
    keys = {k for k, _, _ in res.history}
    readme = (ROOT / "README.md").read_text()
    assert {k for k in keys if f"`{k}`" not in readme} == set()


def test_the_readme_documents_every_key_of_the_config_and_of_the_logreg_task():
    from suite.config import LR_SCHEDULES

    readme = (ROOT / "README.md").read_text()
    config = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    top = [k for k in config if k not in ("defaults", "hydra")]
    task = [k for k in yaml.safe_load((ROOT / "conf" / "task" / "logreg.yaml").read_text())
            if k != "name"]
    missing = [k for k in top if f"`{k}`" not in readme]
    missing += [f"task.{k}" for k in task if f"`task.{k}`" not in readme]
    missing += [s for s in LR_SCHEDULES if f"`{s}`" not in readme]
    assert not missing, missing
    assert "commsgd-run -sc install=bash" in readme  # shell completion


# ---------------------------------------------------------------- package metadata


def test_the_licence_is_an_spdx_string_with_a_setuptools_that_supports_it():
    """The table form `license = {text = ...}` makes every install print setuptools'
    deprecation warning; the SPDX string needs setuptools >= 77 (PEP 639)."""
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "MIT"$', text, re.M)
    m = re.search(r'requires = \["setuptools>=(\d+)', text)
    assert m and int(m.group(1)) >= 77
    # the installed distribution was built from it: the SPDX expression is in its metadata
    md = metadata.metadata("commsgd")
    assert md["License-Expression"] == "MIT" and md.get("License") is None


def test_the_sample_report_directory_is_only_referenced_where_it_exists():
    assert (ROOT / "docs" / "sample-report" / "report.md").is_file()
    assert Path(THEORY).is_file()
