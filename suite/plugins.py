"""Options from entry points: the suite's own algorithms, compressors and tasks, and anyone's.

Every option of the `algorithm`, `compressor` and `task` groups is an entry point of a
distribution, the suite's own included (its pyproject.toml registers its built-ins), so there is
one mechanism, and a researcher's package adds options by declaring entry points of its own:

    [project.entry-points."commsgd.algorithms"]
    my_method = "my_package.my_method"              # a module with build(ctx, **hyper), theorem()
    [project.entry-points."commsgd.compressors"]
    my_codec = "my_package.codec:my_codec"          # a factory(**hyper) -> Compressor or Uplink
    [project.entry-points."commsgd.tasks"]
    my_task = "my_package.task:MyTask"              # a factory(workers=, worker_ids=, device=, ...)
    [project.entry-points."commsgd.configs"]
    my_package = "my_package.conf"                  # optional: a package of YAML presets

An algorithm entry names a module (or any object) with these attributes:

    build(ctx, *, key=default, ...) -> Algorithm       required
    theorem(constants, *, workers, batch_size, omega, delta, lr, **hyper) -> Theorem
                                                        optional (none: no theorem; lr=theory
                                                        is refused, the report says so)
    COMPRESSOR_KINDS = ("unbiased", "contractive")     the compressor kinds it admits
    DEFAULT_COMPRESSOR = "identity"                    the compressor `algorithm=<name>` selects
    FULL_GRADIENTS_ONLY = False                        True: selects and requires batch_size=full

so that a variant (QSGD is SGD with the QSGD compressor, unbiased compressors only) is one
module of a few lines that imports `build` and `theorem` and sets the constants.

Loading is lazy: a registry reads the entry points on first use and imports an option's module
when it is first asked for, in whichever process asks (a launcher, a joblib or SLURM job, a
torch.distributed rank, a resumed run, `commsgd-report`), so every process sees the same options
as long as the distributions are installed (or on its sys.path with their metadata). A name
offered by two distributions, an entry that fails to import, or one of the wrong shape is
refused with a `PluginError` naming the option, its distribution and the error.

The options' config nodes (`algorithm=<name>` and its keys) are generated from the factories'
keyword arguments and defaults by suite/configs.py, so a plugin needs no YAML.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import re
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from suite.errors import PluginError

# registry name -> entry-point group
GROUPS = {
    "algorithm": "commsgd.algorithms",
    "compressor": "commsgd.compressors",
    "task": "commsgd.tasks",
}
CONFIG_GROUP = "commsgd.configs"  # packages of YAML presets, added to Hydra's search path
SUITE_DISTRIBUTION = "commsgd"


class Entry(NamedTuple):
    """One entry point: the option's name, what it names, and the distribution offering it."""

    name: str
    value: str  # "package.module" or "package.module:attribute"
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.value!r} from distribution {self.distribution} {self.version}"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> list:
    """One copy of each distribution on sys.path: the first one pip installed (it has a WHEEL
    file: wheels and editable installs alike), else the first one found.

    Why not simply the first, as importlib.metadata does: building a checkout (an editable
    install, `pip wheel .`) leaves a `<name>.egg-info` directory in it, which is never
    updated again; run from that directory, it comes first on sys.path and would hide the
    installed metadata's entry points."""
    copies: dict[str, list] = {}
    for dist in metadata.distributions():
        copies.setdefault(_normalise(dist.metadata["Name"] or "?"), []).append(dist)
    return [next((d for d in found if d.read_text("WHEEL") is not None), found[0])
            for found in copies.values()]


_SCAN: dict[str, list[Entry]] | None = None


def _scan() -> dict[str, list[Entry]]:
    """Every commsgd.* entry point of the installed distributions, read once per process
    (reading the metadata of a few hundred distributions takes ~0.1 s)."""
    global _SCAN
    if _SCAN is None:
        scan: dict[str, list[Entry]] = {}
        for dist in installed_distributions():
            dist_name = dist.metadata["Name"] or "?"
            for ep in dist.entry_points:
                if ep.group.startswith("commsgd."):
                    scan.setdefault(ep.group, []).append(
                        Entry(ep.name, ep.value, dist_name, dist.version))
        _SCAN = scan
    return _SCAN


def discover(group: str) -> dict[str, Entry]:
    """name -> Entry for one entry-point group, over the installed distributions
    (`installed_distributions`). A name that two distributions offer is refused."""
    found: dict[str, Entry] = {}
    for entry in _scan().get(group, []):
        if entry.name in found:
            first, second = sorted((found[entry.name], entry), key=lambda e: e.distribution)
            raise PluginError(
                f"{group}: the name {entry.name!r} is offered twice, by {first.describe()} "
                f"and by {second.describe()}; uninstall one of the distributions, or rename "
                f"the option in one of them")
        found[entry.name] = entry
    return found


def _import(entry: Entry, group: str) -> Any:
    module_name, _, attr = entry.value.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
    except Exception as exc:
        raise PluginError(
            f"{group} plugin {entry.name!r} ({entry.describe()}) failed to import: "
            f"{type(exc).__name__}: {exc}") from exc
    return obj


class Registry(Mapping):
    """name -> option, read from one entry-point group on first use; each option is imported
    and checked (`load`) when first asked for. A read-only Mapping: `REGISTRY[name]`,
    `name in REGISTRY`, `sorted(REGISTRY)`."""

    def __init__(self, kind: str, load: Callable[[Any, Entry], Any]):
        self.kind, self.group, self._load = kind, GROUPS[kind], load
        self._entries: dict[str, Entry] | None = None
        self._loaded: dict[str, Any] = {}

    @property
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            entries = discover(self.group)
            if not any(e.distribution == SUITE_DISTRIBUTION for e in entries.values()):
                raise PluginError(
                    f"no {self.group} entry points of the {SUITE_DISTRIBUTION} distribution "
                    f"were found: the suite's own options are registered in its installed "
                    f"metadata; install it (make, or pip install -e .) in this environment")
            self._entries = dict(sorted(entries.items()))
        return self._entries

    def entry(self, name: str) -> Entry:
        return self.entries[name]

    def __getitem__(self, name: str):
        if name not in self._loaded:
            entry = self.entries[name]  # KeyError for an unknown name, as a Mapping does
            obj = _import(entry, self.group)
            try:
                self._loaded[name] = self._load(obj, entry)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{self.group} plugin {name!r} ({entry.describe()}) is not usable: "
                    f"{type(exc).__name__}: {exc}") from exc
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name) -> bool:
        return name in self.entries

    def allowed(self) -> str:
        """The options, for messages: 'a, b, c'."""
        return ", ".join(self.entries)

    def reload(self) -> None:
        """Forget what was read (tests that change sys.path or install a distribution)."""
        self._entries = None
        self._loaded.clear()


def _callable(obj, entry: Entry, what: str):
    if isinstance(obj, types.ModuleType) or not callable(obj):
        raise PluginError(
            f"plugin {entry.name!r} ({entry.describe()}) names "
            f"{'a module' if isinstance(obj, types.ModuleType) else type(obj).__name__}; "
            f"a {what} entry names its factory: 'package.module:factory'")
    return obj


def load_compressor(obj, entry: Entry):
    return _callable(obj, entry, "commsgd.compressors")


def load_task(obj, entry: Entry):
    return _callable(obj, entry, "commsgd.tasks")


def load_algorithm(obj, entry: Entry):
    from suite.algorithms.base import AlgorithmSpec
    from suite.algorithms.common import theorem_missing

    build = getattr(obj, "build", None)
    if not callable(build):
        raise PluginError(
            f"algorithm plugin {entry.name!r} ({entry.describe()}) has no build(ctx, **hyper) "
            f"function; an algorithm entry names a module with build() and, optionally, "
            f"theorem()")
    theorem = getattr(obj, "theorem", None)
    kinds = tuple(getattr(obj, "COMPRESSOR_KINDS", ("unbiased", "contractive")))
    spec = AlgorithmSpec(
        build=build,
        theorem=theorem if callable(theorem) else theorem_missing(entry.name),
        compressor_kinds=kinds,
        default_compressor=str(getattr(obj, "DEFAULT_COMPRESSOR", "identity")),
        full_gradients_only=bool(getattr(obj, "FULL_GRADIENTS_ONLY", False)),
        has_theorem=callable(theorem),
        entry=entry,
    )
    first = next(iter(inspect.signature(build).parameters), None)
    if first != "ctx":
        raise PluginError(
            f"algorithm plugin {entry.name!r} ({entry.describe()}): build's first parameter "
            f"is {first!r}; it must be ctx (the run's Context), then keyword-only "
            f"hyper-parameters")
    return spec


ALGORITHMS = Registry("algorithm", load_algorithm)
COMPRESSORS = Registry("compressor", load_compressor)
TASKS = Registry("task", load_task)
REGISTRIES = {"algorithm": ALGORITHMS, "compressor": COMPRESSORS, "task": TASKS}


def config_packages() -> dict[str, Entry]:
    """The `commsgd.configs` entry points: packages of YAML presets for Hydra's search path."""
    return discover(CONFIG_GROUP)


def reload() -> None:
    """Re-read every registry (after a distribution was installed or sys.path changed)."""
    global _SCAN
    _SCAN = None
    importlib.invalidate_caches()
    for registry in REGISTRIES.values():
        registry.reload()
