"""Each job of a sweep composed once, and its defaults tree built once per set of group choices.

Hydra's basic sweeper composes every job's config before it launches a batch
(`Sweeper.validate_batch_is_legal`: a config that cannot be composed stops the sweep before
any job has run), and the launcher then composes each of them again to run it
(`ConfigLoader.load_sweep_config`). Composition is the slowest thing Hydra does per job (the
defaults tree, every config file merged: ~0.1-0.3 s on a 2-core machine), so a short run paid
it twice, and a sweep of 120 runs that differ in values only paid it 240 times.

Two reuses, both with Hydra's own code doing the composing:

- `ComposedOnce` keeps the configs the validation composed and hands each one to the
  launcher's call with the same arguments (the same master config, the same overrides). It is
  the config Hydra composed, from the same files, working directory and environment, a moment
  earlier; a job that was not validated first is composed as before. Each kept config is given
  out once, so the launcher's changes to it (hydra.job.id, ...) never reach another job.

- `DefaultsReused` builds each defaults tree once. Hydra composes a config in two parts
  (`ConfigLoaderImpl._load_configuration_impl`): first the defaults tree, from the primary
  config and the overrides that choose configs (`algorithm=local_sgd`, `+experiment/x=y`), and
  the merge of every config file it names; then the overrides that set values
  (`workers=4`, `seed=1`, `hydra.sweep.dir=...`) are applied to that merge, and the job's
  `hydra.*` bookkeeping (overrides, choices, runtime, override_dirname) is filled in. Which
  overrides choose configs and which set values is Hydra's own split (`Overrides`,
  hydra/_internal/defaults_list.py); the first part depends only on the choosing overrides,
  the config name and the search path (the files are read when the sweep starts and not
  again). So within a sweep the first part is kept per (config name, search path, choosing
  overrides) and each job gets a deep copy of the kept merge, to which Hydra's second part
  applies that job's value overrides as always. A sweep over values alone builds one tree.
  The config files themselves are read and parsed once per sweep too (parsing YAML is ~8 ms
  for conf/config.yaml alone): each composition still gets its own repository, whose first
  load of a file is a deep copy of the sweep's parse of it (`FilesReadOnce`), so that what one
  composition changes in what it loaded (Hydra merges schemas into it) reaches no other.

tests/test_sweep_compose.py compares every job's config, key by key and flag by flag, with a
loader that composes as Hydra does. The sweeper is hydra_plugins/commsgd_sweep/reusing_sweeper.py.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

from hydra._internal import config_loader_impl
from hydra._internal.config_repository import CachingConfigRepository
from hydra._internal.defaults_list import Overrides
from hydra.core.override_parser.overrides_parser import OverridesParser


class FilesReadOnce(CachingConfigRepository):
    """Hydra's repository for one composition (it caches what it loads for that composition),
    in front of a cache shared by the sweep's compositions: a file is read and parsed once, and
    each composition's first load of it is a deep copy of that parse.

    Hydra's repository deep-copies the loader's repository when it is made (~5 ms, the config
    store's nodes included), so that `initialize_sources`, called when a primary config or an
    override sets hydra.searchpath, cannot change the loader's. Here the copy is made when
    `initialize_sources` is called: until then the loader's repository is only read."""

    def __init__(self, delegate, parsed: dict):
        # not CachingConfigRepository.__init__: its copy of the delegate is made on write
        self.delegate = delegate
        self.cache = {}
        self.parsed = parsed
        self._own_delegate = False

    def initialize_sources(self, config_search_path) -> None:
        if not self._own_delegate:
            self.delegate = copy.deepcopy(self.delegate)
            self._own_delegate = True
        super().initialize_sources(config_search_path)

    def load_config(self, config_path: str):
        if config_path not in self.cache:
            key = (tuple((s.provider, s.path) for s in self.get_sources()), config_path)
            if key not in self.parsed:
                self.parsed[key] = self.delegate.load_config(config_path=config_path)
            self.cache[config_path] = copy.deepcopy(self.parsed[key])
        return self.cache[config_path]


class DefaultsReused:
    """While active (a `with` block), `loader`'s compositions share the first part of Hydra's
    composition (defaults tree and merged files) between configs whose overrides choose the
    same configs. Hydra's functions are put back on leaving the block."""

    def __init__(self, loader):
        self.loader = loader
        self.trees: dict[tuple, object] = {}  # key -> Hydra's DefaultsList
        self.merged: dict[int, tuple] = {}  # id(DefaultsList.defaults) -> (defaults, merge)
        self.files: dict[tuple, object] = {}  # (search path, config path) -> ConfigResult
        self._hydras_defaults_list = config_loader_impl.create_defaults_list
        self._hydras_compose = loader._compose_config_from_defaults_list

    def __enter__(self):
        config_loader_impl.create_defaults_list = self.defaults_list
        self.loader._compose_config_from_defaults_list = self.compose
        self.loader._parse_overrides_and_create_caching_repo = self.repository
        return self

    def __exit__(self, *exc):
        config_loader_impl.create_defaults_list = self._hydras_defaults_list
        del self.loader._compose_config_from_defaults_list  # the class's methods again
        del self.loader._parse_overrides_and_create_caching_repo
        return False

    def repository(self, config_name, overrides):
        """What Hydra's `_parse_overrides_and_create_caching_repo` does, with a FilesReadOnce
        repository in place of its CachingConfigRepository."""
        parsed = OverridesParser.create().parse_overrides(overrides=overrides)
        repo = FilesReadOnce(self.loader.repository, self.files)
        self.loader._process_config_searchpath(config_name, parsed, repo)
        return parsed, repo

    def defaults_list(self, repo, config_name, overrides_list, prepend_hydra, skip_missing):
        """Hydra's `create_defaults_list`, kept per key; each call gets its own value
        overrides (the ones the caller applies after the merge)."""
        split = Overrides(repo=repo, overrides_list=overrides_list)
        setting_values = {id(o) for o in split.config_overrides}
        key = (config_name, prepend_hydra, skip_missing,
               tuple((s.provider, s.path) for s in repo.get_sources()),
               tuple(o.input_line for o in overrides_list if id(o) not in setting_values))
        tree = self.trees.get(key)
        if tree is None:
            tree = self._hydras_defaults_list(repo=repo, config_name=config_name,
                                              overrides_list=overrides_list,
                                              prepend_hydra=prepend_hydra,
                                              skip_missing=skip_missing)
            self.trees[key] = tree
        return dataclasses.replace(tree, config_overrides=split.config_overrides)

    def compose(self, defaults, repo):
        """Hydra's merge of the files a kept tree names, made once; a deep copy per call,
        since the caller changes it (struct mode, overrides, hydra.*)."""
        kept = self.merged.get(id(defaults))
        if kept is None or kept[0] is not defaults:
            kept = self.merged[id(defaults)] = (defaults, self._hydras_compose(defaults=defaults,
                                                                               repo=repo))
        return copy.deepcopy(kept[1])


class ComposedOnce:
    def __init__(self, loader):
        self.compose = loader.load_sweep_config
        self.kept: dict[tuple, object] = {}
        self.reuse = DefaultsReused(loader)

        @functools.wraps(self.compose)
        def load_sweep_config(master_config, sweep_overrides):
            found = self.kept.pop((id(master_config), tuple(sweep_overrides)), None)
            if found is not None:
                return found
            with self.reuse:
                return self.compose(master_config, list(sweep_overrides))

        loader.load_sweep_config = load_sweep_config

    def validate(self, master_config, batch) -> None:
        """What `Sweeper.validate_batch_is_legal` does (compose every job of the batch, so
        that a bad one stops the sweep before any runs), keeping what it composed."""
        with self.reuse:
            for overrides in batch:
                self.kept[id(master_config), tuple(overrides)] = self.compose(
                    master_config, list(overrides))
