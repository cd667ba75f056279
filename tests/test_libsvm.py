"""tasks.libsvm without the network: small files in the real on-disk formats in a tmp cache."""

from __future__ import annotations

import bz2
import hashlib
import io
import logging
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tasks import libsvm

# Three samples, features 1..3 of a 4-feature set; labels {-1, +1}.
TRAIN = b"+1 1:0.5 3:2\n-1 2:1.5\n+1 1:1 2:-1 3:4\n"
TEST = b"-1 3:1\n+1 1:2 2:2\n"
EXPECTED_TRAIN = np.array([[0.5, 0, 2, 0], [0, 1.5, 0, 0], [1, -1, 4, 0]])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache via $COMMSGD_DATA; returns the libsvm/ directory files go in."""
    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path))
    return tmp_path / "libsvm"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _spec(monkeypatch, name: str, spec: libsvm.DatasetSpec) -> None:
    monkeypatch.setitem(libsvm.DATASETS, name, spec)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _put(cache: Path, filename: str, data: bytes) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / filename
    path.write_bytes(data)
    return path


def test_data_dir_honours_env_and_creates_it(cache):
    assert not cache.exists()
    assert libsvm.data_dir() == cache
    assert cache.is_dir()


def test_cached_plain_and_bz2_files_parse_to_the_right_matrix(cache, monkeypatch, no_network):
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(
        libsvm.FileSpec("toy", 3, sha256=_sha256(TRAIN)), 4,
        libsvm.FileSpec("toy.t.bz2", 2, sha256=_sha256(bz2.compress(TEST)))))
    _put(cache, "toy", TRAIN)
    _put(cache, "toy.t.bz2", bz2.compress(TEST))

    data = libsvm.load_libsvm("toy")

    assert data.n_features == 4
    assert data.X_train.format == "csr" and data.X_train.dtype == np.float64
    np.testing.assert_array_equal(data.X_train.toarray(), EXPECTED_TRAIN)
    np.testing.assert_array_equal(data.y_train, [1.0, -1.0, 1.0])
    assert data.y_train.dtype == np.float64
    # The test file mentions fewer features but still gets all 4 columns.
    assert data.X_test.format == "csr" and data.X_test.shape == (2, 4)
    np.testing.assert_array_equal(data.X_test.toarray(), [[0, 0, 1, 0], [2, 2, 0, 0]])
    np.testing.assert_array_equal(data.y_test, [-1.0, 1.0])


def test_explicit_cache_dir_overrides_env(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path / "elsewhere"))
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", sha256=_sha256(TRAIN)), 4))
    _put(tmp_path / "mine" / "libsvm", "toy", TRAIN)
    data = libsvm.load_libsvm("toy", cache_dir=tmp_path / "mine")
    assert data.X_test is None and data.y_test is None
    assert data.X_train.shape == (3, 4)


@pytest.mark.parametrize("low, high", [(0, 1), (1, 2), (2, 4)])
def test_labels_map_smaller_to_minus_one(cache, monkeypatch, no_network, low, high):
    train = f"{high} 1:1\n{low} 2:1\n{low} 1:3\n".encode()
    test = f"{low} 1:1\n{high} 2:1\n".encode()
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(
        libsvm.FileSpec("toy", sha256=_sha256(train)), 2,
        libsvm.FileSpec("toy.t", sha256=_sha256(test))))
    _put(cache, "toy", train)
    _put(cache, "toy.t", test)
    data = libsvm.load_libsvm("toy")
    np.testing.assert_array_equal(data.y_train, [1.0, -1.0, -1.0])
    np.testing.assert_array_equal(data.y_test, [-1.0, 1.0])


@pytest.mark.parametrize("labels", [b"1 1:1\n1 2:1\n", b"0 1:1\n1 2:1\n2 1:1\n"])
def test_not_exactly_two_labels_is_an_error(cache, monkeypatch, no_network, labels):
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", sha256=_sha256(labels)), 2))
    path = _put(cache, "toy", labels)
    with pytest.raises(libsvm.DatasetFormatError, match="exactly two") as err:
        libsvm.load_libsvm("toy")
    assert str(path) in str(err.value)


def test_checksum_mismatch_names_file_and_both_digests(cache, monkeypatch, no_network):
    wrong = "0" * 64
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", sha256=wrong), 4))
    path = _put(cache, "toy", TRAIN)
    with pytest.raises(libsvm.DatasetChecksumError) as err:
        libsvm.load_libsvm("toy")
    message = str(err.value)
    assert wrong in message and _sha256(TRAIN) in message
    assert str(path) in message and "Delete" in message
    assert path.exists()  # never delete the user's file behind their back


def test_pinned_md5_is_checked(cache, monkeypatch, no_network):
    good = hashlib.md5(TRAIN).hexdigest()
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", md5=good), 4))
    _put(cache, "toy", TRAIN)
    assert libsvm.load_libsvm("toy").X_train.shape == (3, 4)
    _put(cache, "toy", TRAIN + b"-1 4:1\n")
    with pytest.raises(libsvm.DatasetChecksumError, match=f"md5.*expected {good}"):
        libsvm.load_libsvm("toy")


def test_offline_download_names_url_and_target_path(cache, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    spec = libsvm.DATASETS["w8a"]
    with pytest.raises(libsvm.DatasetUnavailableError) as err:
        libsvm.load_libsvm("w8a")
    message = str(err.value)
    assert str(cache / "w8a") in message
    assert spec.train.url in message and "'w8a'" in message
    assert list(cache.iterdir()) == []  # no partial file left behind


def test_download_false_does_not_touch_the_network(cache, no_network):
    with pytest.raises(libsvm.DatasetUnavailableError, match="download=False") as err:
        libsvm.load_libsvm("mushrooms", download=False)
    assert str(cache / "mushrooms") in str(err.value)


class _Response(io.BytesIO):
    """What urlopen returns, enough for a `with` block and read()."""


def _serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    requested: list[str] = []

    def urlopen(url, timeout=None):
        requested.append(url)
        return _Response(files[url.rsplit("/", 1)[-1]])
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_is_verified_and_placed_atomically(cache, monkeypatch):
    payload = bz2.compress(TRAIN)
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(
        libsvm.FileSpec("toy.bz2", 3, sha256=_sha256(payload)), 4))
    requested = _serve(monkeypatch, {"toy.bz2": payload})
    replaced: list[tuple[str, str]] = []
    real_replace = libsvm.os.replace

    def spy(src, dst):
        # The final name must not exist until the verified temporary file is renamed onto it.
        assert not Path(dst).exists()
        assert Path(src).parent == Path(dst).parent and Path(src).read_bytes() == payload
        replaced.append((str(src), str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(libsvm.os, "replace", spy)

    data = libsvm.load_libsvm("toy")

    assert requested == [libsvm.BASE_URL + "toy.bz2"]
    assert [Path(dst).name for _, dst in replaced] == ["toy.bz2"]
    assert (cache / "toy.bz2").read_bytes() == payload  # kept compressed, as served
    assert sorted(p.name for p in cache.iterdir()) == ["toy.bz2"]  # pinned: no sidecar, no .part
    np.testing.assert_array_equal(data.X_train.toarray(), EXPECTED_TRAIN)
    # A second load uses the cache.
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("re-downloaded"))
    np.testing.assert_array_equal(libsvm.load_libsvm("toy").y_train, [1.0, -1.0, 1.0])


def test_download_with_wrong_digest_leaves_nothing(cache, monkeypatch):
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", sha256="f" * 64), 4))
    _serve(monkeypatch, {"toy": TRAIN})
    with pytest.raises(libsvm.DatasetChecksumError) as err:
        libsvm.load_libsvm("toy")
    assert "f" * 64 in str(err.value) and _sha256(TRAIN) in str(err.value)
    assert list(cache.iterdir()) == []


def test_trust_on_first_use_writes_then_enforces_sidecar(cache, monkeypatch, caplog):
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy"), 4))  # nothing pinned
    _serve(monkeypatch, {"toy": TRAIN})
    sidecar = cache / "toy.sha256"

    with caplog.at_level(logging.WARNING, logger="tasks.libsvm"):
        libsvm.load_libsvm("toy")
    assert sidecar.read_text().split()[0] == _sha256(TRAIN)
    assert "not pinned" in caplog.text
    assert sorted(p.name for p in cache.iterdir()) == ["toy", "toy.sha256"]  # no .part left

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.libsvm"):
        assert libsvm.load_libsvm("toy").X_train.shape == (3, 4)
    assert "not pinned" in caplog.text  # still warns on every load

    tampered = TRAIN.replace(b"0.5", b"0.6")
    (cache / "toy").write_bytes(tampered)
    with pytest.raises(libsvm.DatasetChecksumError) as err:
        libsvm.load_libsvm("toy")
    message = str(err.value)
    assert _sha256(TRAIN) in message and _sha256(tampered) in message
    assert str(sidecar) in message
    assert sidecar.read_text().split()[0] == _sha256(TRAIN)  # not silently re-trusted


def test_corrupt_files_raise_a_clear_error_naming_the_file(cache, monkeypatch, no_network):
    broken = {"bad": b"+1 1:0.5 3:oops\n-1 2:1\n", "bad.bz2": b"BZh9 this is not bzip2 data"}
    for filename, data in broken.items():
        _spec(monkeypatch, "toy", libsvm.DatasetSpec(
            libsvm.FileSpec(filename, sha256=_sha256(data)), 4))
        path = _put(cache, filename, data)
        with pytest.raises(libsvm.DatasetFormatError) as err:
            libsvm.load_libsvm("toy")
        assert str(path) in str(err.value)


def test_more_features_than_declared_is_an_error(cache, monkeypatch, no_network):
    data = b"+1 1:1 7:1\n-1 2:1\n"
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(libsvm.FileSpec("toy", sha256=_sha256(data)), 4))
    path = _put(cache, "toy", data)
    with pytest.raises(libsvm.DatasetFormatError, match="at most 4 features") as err:
        libsvm.load_libsvm("toy")
    assert str(path) in str(err.value)


def test_sample_count_mismatch_warns(cache, monkeypatch, no_network, caplog):
    _spec(monkeypatch, "toy", libsvm.DatasetSpec(
        libsvm.FileSpec("toy", 5, sha256=_sha256(TRAIN)), 4))
    _put(cache, "toy", TRAIN)
    with caplog.at_level(logging.WARNING, logger="tasks.libsvm"):
        libsvm.load_libsvm("toy")
    assert "parsed 3 samples" in caplog.text and "states 5" in caplog.text


def test_unknown_name_lists_known_names(cache):
    with pytest.raises(ValueError, match="unknown LIBSVM data set 'w9z'") as err:
        libsvm.load_libsvm("w9z")
    for name in ("w8a", "a9a", "mushrooms", "phishing"):
        assert name in str(err.value)


def test_table_is_consistent():
    names = libsvm.available_datasets()
    assert names == sorted(names) and len(names) >= 8
    assert {"w8a", "a9a", "mushrooms", "phishing"} <= set(names)
    for name, spec in libsvm.DATASETS.items():
        assert spec.n_features > 0, name
        for f in (spec.train, spec.test):
            if f is None:
                continue
            assert f.url.startswith("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/"
                                    "binary/"), name
            assert f.compression in (None, "bz2")
            assert f.sha256 is None or len(f.sha256) == 64
            assert f.md5 is None or len(f.md5) == 32
    assert libsvm.DATASETS["a9a"].test.filename == "a9a.t"
    assert libsvm.DATASETS["w8a"].n_features == 300
