"""Experiment configs: each module's `get_config()` returns a ConfigDict extending `bon_jax.config.base_config()`."""
