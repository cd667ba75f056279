"""Where `commsgd-report --out DIR` writes, and what it uploads: the report's own files only.

- `--out` that is a file is refused with a message.
- A directory that holds a previous report (its manifest, MANIFEST, lists the files that report
  wrote) is replaced: those files go, the new ones come, and the command says so; other files in
  the directory are left alone.
- Any other non-empty directory is refused unless `--force` (a report written beside unrelated
  files is easy to mistake for them, and they for it); with `--force` the report is written
  beside them, touching none.
- The report is built in a private staging directory next to DIR, so that the summary run in
  MLflow receives exactly the report's files (not a `secret.env` that happened to be in DIR),
  and then moved into DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

MANIFEST = ".commsgd-report.json"


def previous_files(out: Path) -> list[str] | None:
    """The files a previous report wrote into `out` (from its manifest), or None."""
    try:
        names = json.loads((out / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [n for n in names if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]


def check_out(out: Path, *, force: bool) -> str | None:
    """Why `out` cannot take the report (a one-line message), or None."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a directory; give a directory for the report"
    if not out.is_dir() or force or previous_files(out) is not None:
        return None
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        return (f"--out {out} is not empty and holds no commsgd report ({len(entries)} "
                f"entries: {shown}); give an empty or new directory, or pass --force to write "
                f"the report beside them")
    return None


@contextmanager
def staged(out: Path):
    """Yield a staging directory to build the report in; on success move its files into
    `out` (replacing a previous report's files, see module docstring) and write the manifest.
    Yields (staging dir, a list that receives the replaced report's file names)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".commsgd-report-", dir=out.parent))
    replaced: list[str] = []
    try:
        yield staging, replaced
        out.mkdir(parents=True, exist_ok=True)
        for name in previous_files(out) or []:
            target = out / name
            if target.is_file():
                target.unlink()
                replaced.append(name)
        written = sorted(p.name for p in staging.iterdir())
        for name in written:
            os.replace(staging / name, out / name)
        (out / MANIFEST).write_text(json.dumps({"files": written}, indent=1) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
