"""LIBSVM binary-classification data sets: download, checksum, cache, parse.

    data = load_libsvm("w8a")     # LibsvmData(X_train, y_train, X_test, y_test, n_features)

Files come from https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/ and are cached
under `data_dir()`: `$COMMSGD_DATA/libsvm/` if that variable is set, else
`~/.cache/commsgd/libsvm/`. A file is kept exactly as the site serves it (`.bz2` ones stay
compressed and are decompressed while parsing), so its digest always refers to the bytes the site
published and can be compared with a digest found anywhere else.

Integrity. A download goes to a temporary file in the cache directory, is verified, and only then
renamed to its final name with `os.replace` (atomic), so an interrupted download never leaves a
partial file under the final name, and concurrent workers downloading the same file cannot see
each other's partial files. Where the `DATASETS` table pins a digest (sha256, or md5 where that is
all a public source gives), it is checked on every load. Where none is pinned (most files: the
LIBSVM site publishes no checksums) the first file seen is trusted: its sha256 goes to a
`<file>.sha256` sidecar next to it, every later load is verified against that, and a warning says
the checksum is not pinned. Digests in the table are only ones found in public code, with the
source named next to them; none is made up.

Labels are mapped to {-1, +1} (the smaller of the two labels becomes -1), since LIBSVM's binary
sets variously use {-1, +1}, {0, 1}, {1, 2} and {2, 4}.
"""

from __future__ import annotations

import bz2
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_svmlight_file

# defined with every user error in suite.errors; importable from here as before
from suite.errors import DatasetChecksumError, DatasetFormatError, DatasetUnavailableError

log = logging.getLogger(__name__)

BASE_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/"
DOWNLOAD_TIMEOUT_S = 60.0


class FileSpec(NamedTuple):
    """One file on the LIBSVM site. `filename` is also its name in the cache."""

    filename: str
    n_samples: int | None = None  # rows, where a public source states it; a sanity check only
    sha256: str | None = None  # of the file as downloaded (compressed, for .bz2)
    md5: str | None = None  # only where a source gives md5 and no sha256

    @property
    def url(self) -> str:
        return BASE_URL + self.filename

    @property
    def compression(self) -> str | None:
        return "bz2" if self.filename.endswith(".bz2") else None


class DatasetSpec(NamedTuple):
    """A data set: its training file, its test file if the site ships one, and its dimension."""

    train: FileSpec
    n_features: int
    test: FileSpec | None = None


class LibsvmData(NamedTuple):
    X_train: sp.csr_matrix  # [n, n_features] float64
    y_train: np.ndarray  # [n] float64 in {-1, +1}
    X_test: sp.csr_matrix | None
    y_test: np.ndarray | None
    n_features: int


# Sample and feature counts: TheoGuyard/LIBSVMdata.jl src/datasets.jl (commit 02042795) and
# mathurinm/libsvmdata libsvmdata/datasets.py (commit 04e5531e), which agree with the LIBSVM
# site's binary.html. Checksums: no public source we searched publishes a sha256 for any of these
# files; epfml/pax pax/tasks/datasets/libsvm.py (commit c96825d8) pins the md5 of the downloaded
# ijcnn1.t.bz2, covtype.libsvm.binary.bz2, rcv1_train.binary.bz2 and rcv1_test.binary.bz2, which
# are recorded below. Everything else is trust-on-first-use.
_A_SERIES = {  # a1a..a9a (UCI Adult), 123 features: train rows, test rows
    1: (1_605, 30_956), 2: (2_265, 30_296), 3: (3_185, 29_376), 4: (4_781, 27_780),
    5: (6_414, 26_147), 6: (11_220, 21_341), 7: (16_100, 16_461), 8: (22_696, 9_865),
    9: (32_561, 16_281),
}
_W_SERIES = {  # w1a..w8a (web pages), 300 features
    1: (2_477, 47_272), 2: (3_470, 46_279), 3: (4_912, 44_837), 4: (7_366, 42_383),
    5: (9_888, 39_861), 6: (17_188, 32_561), 7: (24_692, 25_057), 8: (49_749, 14_951),
}

DATASETS: dict[str, DatasetSpec] = {
    **{f"a{i}a": DatasetSpec(FileSpec(f"a{i}a", n), 123, FileSpec(f"a{i}a.t", n_t))
       for i, (n, n_t) in _A_SERIES.items()},
    **{f"w{i}a": DatasetSpec(FileSpec(f"w{i}a", n), 300, FileSpec(f"w{i}a.t", n_t))
       for i, (n, n_t) in _W_SERIES.items()},
    "mushrooms": DatasetSpec(FileSpec("mushrooms", 8_124), 112),
    "phishing": DatasetSpec(FileSpec("phishing", 11_055), 68),
    # ijcnn1.bz2 is the site's train + validation file (35,000 + 14,990 rows), the usual choice.
    "ijcnn1": DatasetSpec(
        FileSpec("ijcnn1.bz2", 49_990), 22,
        FileSpec("ijcnn1.t.bz2", 91_701, md5="66433ab8089acee9e56dc61ac89a2fe2"),  # epfml/pax
    ),
    "covtype.binary": DatasetSpec(
        FileSpec("covtype.libsvm.binary.bz2", 581_012,
                 md5="0d3439b314ce13e2f8b903b12bb3ea20"),  # epfml/pax
        54,
    ),
    "rcv1.binary": DatasetSpec(
        FileSpec("rcv1_train.binary.bz2", 20_242,
                 md5="1aeda848408e621468c0fe6944d9382f"),  # epfml/pax
        47_236,
        FileSpec("rcv1_test.binary.bz2", 677_399,
                 md5="d6e3ab397758fb5c036d9cced52aedae"),  # epfml/pax
    ),
    "real-sim": DatasetSpec(FileSpec("real-sim.bz2", 72_309), 20_958),
    "news20.binary": DatasetSpec(FileSpec("news20.binary.bz2", 19_996), 1_355_191),
    "gisette": DatasetSpec(FileSpec("gisette_scale.bz2", 6_000), 5_000,
                           FileSpec("gisette_scale.t.bz2", 1_000)),
    "madelon": DatasetSpec(FileSpec("madelon", 2_000), 500, FileSpec("madelon.t", 600)),
    "splice": DatasetSpec(FileSpec("splice", 1_000), 60, FileSpec("splice.t", 2_175)),
    "svmguide1": DatasetSpec(FileSpec("svmguide1", 3_089), 4, FileSpec("svmguide1.t", 4_000)),
    # Small UCI sets, raw features (the *_scale variants on the site are not listed here).
    "australian": DatasetSpec(FileSpec("australian", 690), 14),
    "breast-cancer": DatasetSpec(FileSpec("breast-cancer", 683), 10),
    "diabetes": DatasetSpec(FileSpec("diabetes", 768), 8),
    "german.numer": DatasetSpec(FileSpec("german.numer", 1_000), 24),
    "heart": DatasetSpec(FileSpec("heart", 270), 13),
    # The site ships only the scaled versions of these two.
    "ionosphere": DatasetSpec(FileSpec("ionosphere_scale", 351), 34),
    "sonar": DatasetSpec(FileSpec("sonar_scale", 208), 60),
}


def available_datasets() -> list[str]:
    """Names `load_libsvm` accepts, sorted."""
    return sorted(DATASETS)


def data_dir(cache_dir: Path | None = None) -> Path:
    """The LIBSVM cache directory, `<cache>/libsvm`, created if missing.

    `<cache>` is `cache_dir` if given, else `$COMMSGD_DATA` if set, else `~/.cache/commsgd`.
    """
    if cache_dir is None:
        env = os.environ.get("COMMSGD_DATA")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "commsgd"
    path = Path(cache_dir).expanduser() / "libsvm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_libsvm(name: str, *, cache_dir: Path | None = None, download: bool = True) -> LibsvmData:
    """Load LIBSVM binary data set `name`, downloading it into the cache if needed.

    Returns CSR float64 features with `n_features` columns for train and test alike (LIBSVM
    files are sparse, so a file need not mention the last feature), and float64 labels in
    {-1, +1}. `X_test`/`y_test` are None where the site ships no test file.

    Raises ValueError for an unknown name, DatasetUnavailableError when a file is missing and
    cannot be downloaded, DatasetChecksumError when a file's digest is wrong, and
    DatasetFormatError when a file cannot be parsed.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown LIBSVM data set {name!r}; known: "
                         f"{', '.join(available_datasets())}")
    spec = DATASETS[name]
    directory = data_dir(cache_dir)
    X_train, raw_train = _load_file(name, spec.train, spec.n_features, directory, download)
    labels = _two_labels(raw_train, directory / spec.train.filename)
    y_train = _to_pm1(raw_train, labels, directory / spec.train.filename)
    if spec.test is None:
        return LibsvmData(X_train, y_train, None, None, spec.n_features)
    X_test, raw_test = _load_file(name, spec.test, spec.n_features, directory, download)
    # The test file is mapped with the training file's labels, so that +1 means the same class.
    y_test = _to_pm1(raw_test, labels, directory / spec.test.filename)
    return LibsvmData(X_train, y_train, X_test, y_test, spec.n_features)


def load_svmlight_path(path: str | Path) -> LibsvmData:
    """A binary-classification file of the user's own in LIBSVM/svmlight format (`task.path`):
    `label index:value ...` per line, 1-based indices; `.gz` and `.bz2` files are read
    compressed. Labels are mapped to {-1, +1} as for the table's data sets; the number of
    features is the largest index in the file. There is no test file: the caller holds out a
    seeded part of it, as for the table's data sets without one.

    Raises DatasetUnavailableError when the file does not exist and DatasetFormatError when it
    cannot be parsed or does not hold exactly two labels, naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetUnavailableError(f"task.path={path}: no such file (a LIBSVM/svmlight "
                                      f"file: one `label index:value ...` line per sample)")
    try:
        X, y = load_svmlight_file(str(path), dtype=np.float64)
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetFormatError(
            f"task.path={path}: cannot parse as a LIBSVM/svmlight file ({type(exc).__name__}: "
            f"{exc}); expected one `label index:value index:value ...` line per sample, with "
            f"1-based increasing indices") from exc
    if X.shape[0] < 2 or X.shape[1] < 1:
        raise DatasetFormatError(f"task.path={path}: {X.shape[0]} samples with {X.shape[1]} "
                                 f"features; need at least 2 samples and 1 feature")
    y = np.asarray(y, dtype=np.float64)
    return LibsvmData(sp.csr_matrix(X, dtype=np.float64), _to_pm1(y, _two_labels(y, path), path),
                      None, None, X.shape[1])


def _load_file(name: str, spec: FileSpec, n_features: int, directory: Path,
               download: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    path = directory / spec.filename
    if not path.exists():
        if not download:
            raise DatasetUnavailableError(_unavailable_message(name, spec, path,
                                                               "download=False"))
        _download(name, spec, path)
    _verify(spec, path)
    X, y = _parse(path, spec, n_features)
    if spec.n_samples is not None and X.shape[0] != spec.n_samples:
        # A warning, not an error: the digest is what guards integrity; this only flags a table
        # entry or a trusted-on-first-use file that looks wrong.
        log.warning("%s: parsed %d samples, the LIBSVM site states %d", path, X.shape[0],
                    spec.n_samples)
    return X, y


def _unavailable_message(name: str, spec: FileSpec, path: Path, reason: str) -> str:
    return (f"LIBSVM data set {name!r}: {spec.filename} is not cached and could not be "
            f"downloaded ({reason}). Download {spec.url} yourself (keep the file as served, "
            f"{'bz2-compressed, ' if spec.compression else ''}do not rename or decompress it) "
            f"and place it at {path}")


def _download(name: str, spec: FileSpec, path: Path) -> None:
    """Fetch `spec.url` to `path` via a verified temporary file in the same directory."""
    log.info("downloading %s -> %s", spec.url, path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
        except (urllib.error.URLError, HTTPException, OSError) as exc:
            # URLError covers DNS failures, refused connections and HTTP errors; OSError covers
            # sockets (timeouts, resets); HTTPException covers a body cut short.
            raise DatasetUnavailableError(
                _unavailable_message(name, spec, path, f"{type(exc).__name__}: {exc}")) from exc
        _check_pinned(spec, tmp, shown_as=path, downloaded=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _verify(spec: FileSpec, path: Path) -> None:
    """Check `path` against the pinned digest, or against (or by writing) its sha256 sidecar."""
    if spec.sha256 is not None or spec.md5 is not None:
        _check_pinned(spec, path, shown_as=path, downloaded=False)
        return
    sidecar = path.with_name(path.name + ".sha256")
    actual = _digest(path, "sha256")
    if sidecar.exists():
        recorded = sidecar.read_text().split()  # "<hex digest>  <file name>", as sha256sum writes
        expected = recorded[0].lower() if recorded else "(empty sidecar)"
        if actual != expected:
            raise DatasetChecksumError(_checksum_message(path, "sha256", expected, actual,
                                                         downloaded=False, sidecar=sidecar))
        log.warning("%s: checksum not pinned; verified against the sha256 recorded on first "
                    "use in %s", path, sidecar)
        return
    # Write the sidecar atomically too, so a crash cannot leave an empty one that fails forever.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{sidecar.name}.", suffix=".part")
    with os.fdopen(fd, "w") as f:
        f.write(f"{actual}  {path.name}\n")
    os.replace(tmp_name, sidecar)
    log.warning("%s: checksum not pinned; trusting this file on first use and recording its "
                "sha256 %s in %s", path, actual, sidecar)


def _check_pinned(spec: FileSpec, path: Path, *, shown_as: Path, downloaded: bool) -> None:
    """Check `path` against the table's digest (sha256 preferred); nothing to do if none."""
    if spec.sha256 is not None:
        algorithm, expected = "sha256", spec.sha256
    elif spec.md5 is not None:
        algorithm, expected = "md5", spec.md5
    else:
        return
    actual = _digest(path, algorithm)
    if actual != expected.lower():
        raise DatasetChecksumError(_checksum_message(shown_as, algorithm, expected, actual,
                                                     downloaded=downloaded))


def _checksum_message(path: Path, algorithm: str, expected: str, actual: str, *,
                      downloaded: bool, sidecar: Path | None = None) -> str:
    source = f"recorded on first use in {sidecar}" if sidecar else "pinned in tasks/libsvm.py"
    if downloaded:
        advice = ("The download was discarded and nothing was written; the file on the server "
                  "may have changed, or the download was corrupted.")
    else:
        advice = (f"Delete {path}"
                  + (f" and {sidecar}" if sidecar else "")
                  + " and load again to re-download it.")
    return (f"{path}: {algorithm} checksum mismatch: expected {expected} ({source}), "
            f"actual {actual}. {advice}")


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _parse(path: Path, spec: FileSpec, n_features: int) -> tuple[sp.csr_matrix, np.ndarray]:
    opener = bz2.open if spec.compression == "bz2" else open
    try:
        with opener(path, "rb") as f:
            # n_features fixes the width, so train and test agree; sklearn raises ValueError if
            # the file has a larger index, which is the sanity check on the declared count.
            X, y = load_svmlight_file(f, n_features=n_features, dtype=np.float64)
    except (ValueError, OSError, EOFError) as exc:
        # ValueError: malformed lines or too many features; OSError/EOFError: a broken bz2 stream.
        raise DatasetFormatError(
            f"{path}: cannot parse as a LIBSVM file with at most {n_features} features "
            f"({type(exc).__name__}: {exc}). The file may be corrupt: delete it and load again."
        ) from exc
    return sp.csr_matrix(X, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _two_labels(y: np.ndarray, path: Path) -> tuple[float, float]:
    labels = np.unique(y)
    if labels.size != 2:
        raise DatasetFormatError(f"{path}: expected exactly two distinct labels for binary "
                                 f"classification, found {labels.size}: {labels[:10].tolist()}")
    return float(labels[0]), float(labels[1])


def _to_pm1(y: np.ndarray, labels: tuple[float, float], path: Path) -> np.ndarray:
    low, high = labels
    unexpected = np.setdiff1d(np.unique(y), [low, high])
    if unexpected.size:
        raise DatasetFormatError(f"{path}: labels {unexpected[:10].tolist()} are not among the "
                                 f"training labels {[low, high]}")
    return np.where(y == low, -1.0, 1.0)
