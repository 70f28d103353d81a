"""Test-wide setup: CPU backend with 8 fake devices, float32 matmuls at full precision.

This must run before jax initialises its backends, which is why it sits at the top of conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Much of the suite's time is XLA compiling the same programs again (each smoke run builds its steps
# afresh, in both xdist workers): a persistent compilation cache, keyed by the program and the flags, lets
# later tests load them. It lives in pytest's cache folder, so `make clean` (or deleting it) empties it.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"
