"""Test-wide setup: CPU backend with 8 fake devices, float32 matmuls at full precision.

This must run before jax initialises its backends, which is why it sits at the top of conftest.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
# Most of the suite's time is XLA compiling (and JAX tracing and lowering) small programs that then run
# for milliseconds. XLA:CPU's older loop emitters instead of its MLIR fusion emitters, with LLVM at -O0: the
# whole suite in 18.2 CPU minutes against 24.6 at -O1 (same emitters), though the few compute-bound tests
# (the 400-800 step verifier trainings of test_verifiers.py) run slower (docs/lab_notes/timing.md). The HLO
# is the same; only its code generation, and so some float rounding, differs. Training and benchmarks keep
# XLA's defaults.
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
if "xla_cpu_use_fusion_emitters" not in _flags:
    _flags += " --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = _flags.strip()
# bon_jax adds its XLA:CPU setting on import (bon_jax/xla_cpu.py); the suite keeps the flags above, which
# were chosen for its compile-bound programs, and tests/test_xla_cpu.py checks the setting itself.
os.environ.setdefault("BON_JAX_XLA_CPU_DEFAULTS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Much of the suite's time is XLA compiling the same programs again (each smoke run builds its steps
# afresh, in both xdist workers): a persistent compilation cache, keyed by the program and the flags, lets
# later tests load them. It lives in pytest's cache folder, so `make clean` (or deleting it) empties it.
# Every program is cached, however fast it compiled: at -O1 most compile in under 0.2 s, and caching them
# too took the suite from 18.7 to 17.0 CPU minutes (docs/lab_notes/timing.md).
jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def shared_stage_root(tmp_path_factory, worker_id):
    """A stage cache shared by the session's tests (tests/smoke.py, `copy_upstream_stages`): in the folder
    both xdist workers' temporary folders sit in."""
    base = tmp_path_factory.getbasetemp()
    return str((base.parent if worker_id != "master" else base) / "shared_stages")


def pytest_report_header(config):
    return f"jax {jax.__version__}, devices: {jax.device_count()} x {jax.devices()[0].platform}"


# The suite's heaviest files, heaviest first (their summed `--durations` with an empty compilation cache, as
# CI runs it; docs/lab_notes/timing.md). xdist's loadfile hands out files in collection order as workers
# free up (the Makefile turns off its reordering by test count), so the long files start first and neither
# worker is left alone with one at the end.
_HEAVIEST_FILES = (
    "test_verifiers.py",
    "test_experiment.py",
    "test_rl_learns.py",
    "test_reproduce.py",
    "test_finetune_wiring.py",
    "test_gemma3_270m.py",
    "test_update_rows.py",
    "test_paper_experiments.py",
    "test_completion_width.py",
    "test_lm.py",
    "test_sweep.py",
    "test_jax_reference_peer.py",
    "test_dynamic_sampling.py",
    "test_parallel.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_HEAVIEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
