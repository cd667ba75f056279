"""Metric values into a local SQLite MLflow store in one transaction of plain SQL.

Why. `MlflowClient.log_batch` builds one SQLAlchemy ORM object per value and flushes them
through the ORM: about 65 µs of Python per value on an idle machine, several hundred on a
busy one. A sweep's short runs log a few thousand values each (train/lr at every step, the
evaluation metrics), and a run waits for them before it is closed, so that cost was most of
each run's overhead. Here the same rows go in with two `executemany` statements.

What is written is what MLflow's SQLAlchemy store writes for the same batch
(`SqlAlchemyStore._log_metrics` of the installed MLflow; tests/test_sqlite_metrics.py compares
the two paths row for row):
- `metrics`: one row per value, NaN stored as value 0 with is_nan = 1, ±inf as ±max float64;
  an exact duplicate (same key, timestamp, step, value, is_nan) is stored once;
- `latest_metrics`: per key, the value whose (step, timestamp, value) is largest, a new value
  replacing the stored one only when strictly larger; the first of equal ones is kept;
- only into a run whose lifecycle stage is `active` (MLflow refuses a deleted run).
Anything this path does not recognise (another schema, a run it cannot find) raises, and the
tracker's retries and fallback file apply as to any failed delivery.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

MAX_FLOAT = 1.7976931348623157e308  # what MLflow stores for ±inf (SQL has no infinity)
_COLUMNS = ("key", "value", "timestamp", "run_uuid", "step", "is_nan")


class NotActive(RuntimeError):
    """The run is deleted (or unknown): MLflow would refuse its metrics too."""


def sanitize(value: float) -> tuple[float, int]:
    """(the stored value, is_nan), as MLflow stores a metric value."""
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return (MAX_FLOAT if value > 0 else -MAX_FLOAT), 0
    return value, 0


class SqliteMetricWriter:
    """`log_batch(run_id, metrics)` for the metrics of a local `sqlite:///` store."""

    def __init__(self, path: Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._con: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            # isolation_level=None: this code opens and commits its transaction itself
            con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            found = {row[1] for row in con.execute("PRAGMA table_info(metrics)")}
            if not set(_COLUMNS) <= found:
                con.close()
                raise RuntimeError(f"{self.path}: not an MLflow store's metrics table "
                                   f"(columns {sorted(found)})")
            self._con = con
        return self._con

    def log_batch(self, run_id: str, metrics) -> None:
        """Store `metrics` (objects with key, value, timestamp, step) in one transaction."""
        rows = []
        for m in metrics:
            value, is_nan = sanitize(float(m.value))
            rows.append((m.key, value, int(m.timestamp), run_id, int(m.step), is_nan))
        if not rows:
            return
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")  # the write lock now: no other writer in between
        try:
            stage = con.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?",
                                (run_id,)).fetchone()
            if stage is None or stage[0] != "active":
                raise NotActive(f"run {run_id} is {stage[0] if stage else 'not in the store'}"
                                f": its metrics cannot be logged")
            con.executemany(
                "INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan)"
                " VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._update_latest(con, run_id, rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _update_latest(con: sqlite3.Connection, run_id: str, rows) -> None:
        keys = sorted({r[0] for r in rows})
        stored = {}
        for i in range(0, len(keys), 500):  # SQLite's limit on bound parameters
            chunk = keys[i: i + 500]
            marks = ", ".join("?" * len(chunk))
            for key, value, timestamp, step in con.execute(
                    f"SELECT key, value, timestamp, step FROM latest_metrics "
                    f"WHERE run_uuid = ? AND key IN ({marks})", (run_id, *chunk)):
                stored[key] = (step, timestamp, value)
        best: dict[str, tuple] = {}
        for key, value, timestamp, _, step, is_nan in rows:
            current = best.get(key)
            rank = (step, timestamp, value)
            if current is None:
                if key in stored and not rank > stored[key]:
                    continue
                best[key] = (rank, is_nan)
            elif rank > current[0]:
                best[key] = (rank, is_nan)
        con.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET "
            "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, "
            "is_nan = excluded.is_nan",
            [(k, v, ts, step, nan, run_id) for k, ((step, ts, v), nan) in best.items()])

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def for_uri(uri: str) -> SqliteMetricWriter | None:
    """The fast path for a local SQLite store; None for any other store (MLflow's client)."""
    if not uri.startswith("sqlite:///") or uri in ("sqlite:///:memory:",):
        return None
    return SqliteMetricWriter(Path(uri[len("sqlite:///"):]))
