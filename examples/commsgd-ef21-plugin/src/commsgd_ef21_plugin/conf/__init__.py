"""YAML presets of the plugin (the `commsgd.configs` entry point adds this package to Hydra's
search path): conf/experiment/ef21_example_vs_ef.yaml."""
