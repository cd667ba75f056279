"""Tracking stores: refuse a URI that cannot hold runs, and create a new SQLite store safely.

`check_uri(uri)` runs before anything is recorded and refuses, in one line naming the URI and
what is allowed: a URI without a scheme or with one MLflow has no store for (`garbage`,
`foo://bar`); MLflow's file store (`file:`, a bare path), which MLflow 3 keeps in maintenance
mode and refuses; an in-memory SQLite store (`sqlite://`, `sqlite:///:memory:`), which would
vanish with the process that wrote it while the summary said "logged to"; an SQLite path that is
a directory, in a directory that does not exist, not writable, or not an SQLite file; and a
database URI whose driver is not installed (`postgresql://` without psycopg2).

`prepare(uri)` makes a local SQLite store ready before MLflow touches it. MLflow creates the
schema of an empty database on first use, with no lock: two runs started at once into a new
store both create the tables, and all but one fail ("table latest_metrics already exists"). And
the creation takes a few seconds of DDL and migrations: cut short (a full disk, a kill), it
leaves a half-created store that fails every later run ("table spans already exists"). Here the
schema is created under an exclusive lock (fcntl) on `<store>.lock`, in a temporary file that is
renamed to the store's name once complete: concurrent first runs wait for one creator, and a
store under its real name is always complete. A half-created store (made by an older version,
or by MLflow itself) is recognised and explained, not retried.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from suite.tracking import TrackingUnavailable, check_reachable, local_artifact_root, open_client

SQLITE_MAGIC = b"SQLite format 3\x00"
# In MLflow's registry of tracking stores but unusable here: the file store ('' and 'file') is
# in maintenance mode in MLflow 3 and refuses to start; the Unity Catalog schemes are
# model-registry locations, not tracking stores.
_UNUSABLE_SCHEMES = {"", "file", "databricks-uc", "uc"}
_prepared: set[str] = set()  # stores this process has made ready


class StoreError(TrackingUnavailable):
    """A tracking URI that cannot hold runs; the message names it and what is allowed."""


def allowed_schemes() -> list[str]:
    """The URI schemes MLflow has a tracking store for, less the unusable ones."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return sorted(set(_tracking_store_registry._registry) - _UNUSABLE_SCHEMES)


def _refuse(uri: str, problem: str) -> StoreError:
    return StoreError(f"tracking.uri={uri!r} {problem}")


def sqlite_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI (absolute, or relative to the working
    directory, as MLflow reads it); None for any other URI."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_uri(uri: str) -> None:
    """Refuse a tracking URI that cannot hold runs (module docstring), in one line."""
    scheme = urlsplit(uri).scheme if "://" in uri or uri.startswith("file:") else ""
    base = scheme.split("+", 1)[0]
    if base in ("http", "https"):
        return  # reachability: suite.tracking.check_reachable
    if base == "sqlite":
        _check_sqlite(uri)
        return
    allowed = allowed_schemes()
    if base in ("", "file"):
        raise _refuse(uri, "is not allowed: MLflow's file store is in maintenance mode and "
                           "refused; use an SQLite file (sqlite:////absolute/path/mlruns.db), a "
                           f"server (http://host:port) or a database ({', '.join(allowed)})")
    if base not in allowed:
        raise _refuse(uri, f"is not allowed: MLflow has no tracking store for the scheme "
                           f"{scheme!r}; allowed schemes: {', '.join(allowed)}")
    if base in _database_engines():
        _check_driver(uri)


def _database_engines() -> list[str]:
    from mlflow.store.db.db_types import DATABASE_ENGINES

    return list(DATABASE_ENGINES)


def _check_driver(uri: str) -> None:
    """A database URI needs its SQLAlchemy dialect and DB-API driver installed."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except sqlalchemy.exc.ArgumentError as exc:
        raise _refuse(uri, f"is not a valid database URL ({exc})") from exc
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        raise _refuse(uri, f"needs a database driver that is not installed ({exc}); install "
                           f"it (for PostgreSQL: pip install psycopg2-binary) or use "
                           f"sqlite:///PATH") from exc


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path is None:
        raise _refuse(uri, "is not allowed: an in-memory SQLite store vanishes with the process "
                           "that writes it; give a file: sqlite:////absolute/path/mlruns.db")
    where = path.absolute()
    if where.is_dir():
        raise _refuse(uri, f"names a directory ({where}), not a database file; use "
                           f"sqlite:///{where / 'mlruns.db'}")
    if not where.parent.is_dir():
        raise _refuse(uri, f"is in a directory that does not exist ({where.parent}); create it "
                           "first, or check the path (an absolute path takes four slashes: "
                           "sqlite:////abs/path.db)")
    if where.exists():
        if not os.access(where, os.R_OK | os.W_OK):
            raise _refuse(uri, f"is not writable ({where}); runs cannot be recorded there")
        with open(where, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise _refuse(uri, f"is not an SQLite database ({where} is some other file)")
    if not os.access(where.parent, os.W_OK | os.X_OK):
        # SQLite writes its journal beside the database
        raise _refuse(uri, f"is in a directory that is not writable ({where.parent})")


def client(uri: str):
    """An MlflowClient for `uri`, once the URI is checked, a server answers, and a local store
    is ready (`prepare`, inside the client's retries)."""
    check_uri(uri)
    check_reachable(uri)
    return open_client(uri)


# -- preparing a local SQLite store -------------------------------------------------------
def prepare(uri: str) -> None:
    """Make a local SQLite store ready (its schema complete) before MLflow opens it; waits
    for a concurrent creator. Nothing to do for other stores."""
    path = sqlite_path(uri)
    if path is None:
        return
    path = path.absolute()
    if str(path) in _prepared:
        return
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when closed, also by a killed holder
        try:
            if _is_empty(path):
                _create(uri, path)
            else:
                _check_complete(uri, path)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _prepared.add(str(path))


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as con:
        return {name for (name,) in con.execute(
            "select name from sqlite_master where type = 'table'")}


def _is_empty(path: Path) -> bool:
    return not path.exists() or path.stat().st_size == 0 or not _tables(path)


def _create(uri: str, path: Path) -> None:
    """The full schema in a temporary file, renamed to `path` once complete."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    root = local_artifact_root(uri)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", root.as_uri() if root else None)
        store.engine.dispose()
        SqlAlchemyStore._engine_map.pop(f"sqlite:///{tmp}", None)
        os.replace(tmp, path)
    except Exception as exc:  # a full disk, a file-size limit: SQLite's and MLflow's errors
        tmp.unlink(missing_ok=True)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise _refuse(uri, f"could not be created ({type(exc).__name__}: {first}); nothing "
                           f"was left at {path}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_complete(uri: str, path: Path) -> None:
    """An existing store whose creation (or upgrade) was cut short is explained, not used."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    tables = _tables(path)
    version = None
    if "alembic_version" in tables:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as con:
            row = con.execute("select version_num from alembic_version").fetchone()
            version = row[0] if row else None
    missing = sorted(set(Base.metadata.tables) - tables)
    if version is None or missing:
        raise _refuse(uri, f"is a half-created MLflow store ({path}: "
                           + (f"tables {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}"
                              " missing" if missing else "no schema version")
                           + "): its creation was cut short (a full disk, a killed process); "
                             "move it aside or delete it, and run again to create it anew")
    head = _get_latest_schema_revision()
    if version != head:
        raise _refuse(uri, f"has MLflow schema version {version}, and this MLflow expects "
                           f"{head}: an upgrade was cut short, or another MLflow wrote it; back "
                           f"it up, then run `mlflow db upgrade {uri}`")
