"""The SQLite fast path for metric values (suite/sqlite_metrics.py) stores exactly what
MLflow's own `log_batch` stores: the same rows in `metrics` and `latest_metrics`, the same
histories through MLflow's client; and it refuses what MLflow refuses."""

from __future__ import annotations

import sqlite3

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from suite import sqlite_metrics
from suite.stores import prepare

INF = float("inf")
NAN = float("nan")
# Two batches, as two flushes send them: NaN and ±inf, exact duplicates, a value logged twice
# at one step with different timestamps, steps out of order, and a second batch whose values
# are older than the stored latest for one key and newer for another.
BATCHES = [
    [Metric("loss", 0.5, 1000, 0), Metric("loss", 0.25, 1001, 10), Metric("lr", 0.1, 1000, 0),
     Metric("lr", 0.1, 1000, 0), Metric("lr", 0.09, 1000, 1), Metric("bits", 0.0, 1000, 0),
     Metric("bits", INF, 1002, 10), Metric("grad", NAN, 1003, 10), Metric("grad", NAN, 1003, 10),
     Metric("neg", -INF, 1000, 3), Metric("loss", 0.3, 1000, 10), Metric("tie", 1.0, 5, 5),
     Metric("tie", 1.0, 5, 5), Metric("tie", 2.0, 5, 5), Metric("tie", 0.5, 5, 5),
     Metric("zero", 0.0, 7, 7), Metric("zero", NAN, 7, 7)],  # equal ranks: the first stays
    [Metric("loss", 0.75, 999, 2), Metric("lr", 0.08, 1005, 2), Metric("grad", 0.0, 1003, 10),
     Metric("grad", 1.5, 1003, 10), Metric("neg", 7.0, 1000, 3), Metric("new", 3.0, 1, 100)],
]


@pytest.fixture
def store(tmp_path):
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    prepare(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    return db, uri, client, exp


def rows(db, run_id, table):
    con = sqlite3.connect(db)
    try:
        cols = ("key, value, timestamp, step, is_nan")
        return sorted(con.execute(f"SELECT {cols} FROM {table} WHERE run_uuid = ?", (run_id,)))
    finally:
        con.close()


def test_the_fast_path_stores_what_mlflow_stores(store):
    db, uri, client, exp = store
    by_mlflow = client.create_run(exp).info.run_id
    by_sql = client.create_run(exp).info.run_id
    writer = sqlite_metrics.for_uri(uri)
    assert isinstance(writer, sqlite_metrics.SqliteMetricWriter)
    for batch in BATCHES:
        client.log_batch(by_mlflow, metrics=batch)
        writer.log_batch(by_sql, batch)
        for table in ("metrics", "latest_metrics"):
            assert rows(db, by_sql, table) == rows(db, by_mlflow, table), table
    writer.close()
    # the rows are not trivially equal: duplicates dropped, NaN and inf as MLflow stores them
    stored = rows(db, by_sql, "metrics")
    assert len(stored) == sum(map(len, BATCHES)) - 3
    assert ("zero", 0.0, 7, 7, 0) in rows(db, by_sql, "latest_metrics")
    assert ("grad", 0.0, 1003, 10, 1) in stored
    assert ("bits", sqlite_metrics.MAX_FLOAT, 1002, 10, 0) in stored
    assert dict((r[0], r[1:]) for r in rows(db, by_sql, "latest_metrics"))["tie"] == (
        2.0, 5, 5, 0)
    # and MLflow reads them back the same
    a, b = client.get_run(by_mlflow).data.metrics, client.get_run(by_sql).data.metrics
    assert a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k])
                                        for k in a)
    for key in a:
        def hist(run_id, key=key):
            return sorted((m.step, m.timestamp, repr(m.value))
                          for m in client.get_metric_history(run_id, key))
        assert hist(by_sql) == hist(by_mlflow), key


def test_a_deleted_run_is_refused_as_mlflow_refuses_it(store):
    db, uri, client, exp = store
    run_id = client.create_run(exp).info.run_id
    client.delete_run(run_id)
    with pytest.raises(Exception, match="active"):
        client.log_batch(run_id, metrics=BATCHES[0])
    writer = sqlite_metrics.for_uri(uri)
    with pytest.raises(sqlite_metrics.NotActive, match="deleted"):
        writer.log_batch(run_id, BATCHES[0])
    with pytest.raises(sqlite_metrics.NotActive, match="not in the store"):
        writer.log_batch("0" * 32, BATCHES[0])
    assert rows(db, run_id, "metrics") == []  # nothing half-written
    writer.close()


def test_only_local_sqlite_stores_take_the_fast_path(tmp_path):
    assert sqlite_metrics.for_uri("http://127.0.0.1:5000") is None
    assert sqlite_metrics.for_uri("postgresql://u@h/db") is None
    assert sqlite_metrics.for_uri("sqlite:///:memory:") is None
    not_mlflow = tmp_path / "other.db"
    sqlite3.connect(not_mlflow).execute("CREATE TABLE metrics (x INTEGER)").connection.close()
    with pytest.raises(RuntimeError, match="not an MLflow store"):
        sqlite_metrics.for_uri(f"sqlite:///{not_mlflow}").log_batch("r", BATCHES[0])
