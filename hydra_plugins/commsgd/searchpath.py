"""Hydra discovers this plugin wherever it composes a config, and calls it before composing:
it adds the plugins' YAML presets to the search path and stores the generated config nodes of
the options that no YAML provides (suite/configs.py). Kept free of imports at module level:
Hydra imports every module of the `hydra_plugins` namespace at start-up."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class CommsgdSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from suite.configs import append_config_packages, register
        from suite.errors import PluginError

        try:
            append_config_packages(search_path)
            register(search_path)
        except PluginError:
            # a clash or a broken entry: composing goes on, and the run (which reads the same
            # registries) refuses with the one-line message
            pass
