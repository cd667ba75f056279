"""commsgd's Hydra plugin (found by Hydra's plugin scan of the `hydra_plugins` namespace)."""
