"""The errors a user can fix from the message alone, in one hierarchy.

    UserError                          printed by the command line as one line, exit code 2
    ├── ConfigError (ValueError)       a bad config value: names the key, the value, what is allowed
    │   ├── ConfigurationError         a bad combination of options (an algorithm refusing a
    │   │                              compressor, full batches required, ...)
    │   ├── CompressorError            a bad compressor hyper-parameter, or input it cannot take
    │   │   └── MessageRangeError      a message holding NaN/inf or beyond the wire's range
    │   └── PluginError                a plugin that cannot be loaded, or whose name is taken
    ├── TrackingError (RuntimeError)
    │   ├── TrackingUnavailable        the tracking store cannot be reached before the run
    │   └── TrackingDeliveryError      metrics could not be delivered (saved to a file instead)
    └── DatasetError (RuntimeError)
        ├── DatasetUnavailableError    not cached and cannot be downloaded
        ├── DatasetChecksumError       a file's digest differs from the pinned one
        └── DatasetFormatError         a cached file does not parse

The classes are also importable from where they were first defined (suite.config,
suite.algorithms, suite.compressors, suite.tracking, tasks.libsvm); this module is the one
place they are defined, so `except USER_ERRORS` catches every one of them, and a distributed
rank's error reaches the launcher as the same class (pickled, never rebuilt by name).
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix from its message alone: the command line prints it as one
    line (`commsgd: <kind>: <message>`) and exits with code 2."""

    kind = "error"


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the key, the value and what is allowed."""

    kind = "configuration error"


class ConfigurationError(ConfigError):
    """A bad combination of options, found before the run starts."""


class CompressorError(ConfigError):
    """Bad hyper-parameter or bad input for a compressor; the message names what and why."""


class MessageRangeError(CompressorError):
    """The message cannot be sent: it holds NaN or inf, or a value beyond the wire format's
    range. Mid-run that is how a diverging iterate shows itself to a compressor, and the runner
    reports it as divergence, not as a bad configuration."""


class PluginError(ConfigError):
    """A plugin that fails to import, or registers a name another distribution already has.
    The message names the plugin, its distribution and the error."""


class TrackingError(UserError, RuntimeError):
    """The tracking store could not do what the run needs."""


class TrackingUnavailable(TrackingError):
    """The tracking store cannot be reached before the run starts."""


class TrackingDeliveryError(TrackingError):
    """Some metrics could not be delivered; the message says where they were saved."""


class DatasetError(UserError, RuntimeError):
    """A data set cannot be provided; the message says where to put the file."""


class DatasetUnavailableError(DatasetError):
    """The file is not in the cache and cannot be downloaded (offline, or download=False)."""


class DatasetChecksumError(DatasetError):
    """A file's digest differs from the pinned (or trusted-on-first-use) one."""


class DatasetFormatError(DatasetError):
    """A cached file cannot be parsed as a LIBSVM binary-classification file."""


# What the command line reports as one line, without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def one_line(exc: BaseException) -> str:
    """How the command line prints a user error: `commsgd: <kind>: <message>`."""
    kind = getattr(exc, "kind", "error")
    return f"commsgd: {kind}: {exc}"
