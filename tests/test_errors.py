"""One hierarchy of user errors (suite/errors.py): every class the command line prints as one
line derives from UserError, the old import paths name the same classes, a distributed rank's
user error reaches the launcher as the same class, and suite.launch does not import suite.cli."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

import suite.errors as errors
from suite.launch import _error_report, _user_error
from tests.conftest import ROOT

ALL = [c for _, c in inspect.getmembers(errors, inspect.isclass)
       if issubclass(c, BaseException) and c.__module__ == "suite.errors"]


def test_every_error_class_is_a_user_error_caught_by_USER_ERRORS():
    # the tree in the module docstring names every class, once
    named = [re.search(r"\b(\w+Error|TrackingUnavailable)\b", line) for line in
             errors.__doc__.split("\n\n")[1].splitlines()]
    assert sorted(m.group(1) for m in named if m) == sorted(c.__name__ for c in ALL)
    for cls in ALL:
        assert issubclass(cls, errors.UserError), cls
        try:
            raise cls("x")
        except errors.USER_ERRORS as exc:
            assert type(exc) is cls


def test_config_errors_print_as_configuration_errors_the_rest_as_errors():
    for cls in ALL:
        expected = "configuration error" if issubclass(cls, ValueError) else "error"
        assert errors.one_line(cls("bad key")) == f"commsgd: {expected}: bad key", cls
    assert issubclass(errors.CompressorError, errors.ConfigError)
    assert issubclass(errors.ConfigurationError, ValueError)
    assert issubclass(errors.TrackingUnavailable, RuntimeError)
    assert issubclass(errors.DatasetFormatError, RuntimeError)


def test_old_import_paths_name_the_same_classes():
    from suite.algorithms import ConfigurationError
    from suite.compressors import CompressorError
    from suite.config import ConfigError
    from suite.tracking import TrackingDeliveryError, TrackingUnavailable
    from tasks.libsvm import DatasetChecksumError, DatasetFormatError, DatasetUnavailableError

    assert (ConfigError, ConfigurationError, CompressorError) == (
        errors.ConfigError, errors.ConfigurationError, errors.CompressorError)
    assert (TrackingUnavailable, TrackingDeliveryError) == (
        errors.TrackingUnavailable, errors.TrackingDeliveryError)
    assert (DatasetUnavailableError, DatasetChecksumError, DatasetFormatError) == (
        errors.DatasetUnavailableError, errors.DatasetChecksumError, errors.DatasetFormatError)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_ranks_user_error_reaches_the_launcher_as_the_same_class(cls):
    import json

    report = json.loads(json.dumps(_error_report(cls("compressor.k=0: allowed k >= 1"))))
    assert report["user_error"] is True
    exc = _user_error(report)
    assert type(exc) is cls and str(exc) == "compressor.k=0: allowed k >= 1"


def test_an_error_that_is_no_user_error_is_reported_with_no_pickle():
    report = _error_report(RuntimeError("boom"))
    assert report["user_error"] is False and "pickled" not in report
    assert report["summary"] == "RuntimeError: boom"


def test_launch_does_not_import_the_cli():
    code = ("import sys, suite.launch; assert 'suite.cli' not in sys.modules, 'circle'; "
            "import suite.cli; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
