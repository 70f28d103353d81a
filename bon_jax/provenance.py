"""Where a result was computed: the host's CPU and instruction set, the JAX build and the XLA flags.

XLA compiles for the host's instruction set, and CPUs of different generations round the same program
differently: on `arith_bo32`, 3000 SFT steps on an AVX-512/AMX Xeon end at another base policy than on the
host that made `results/default/` (docs/lab_notes/timing.md, 2026-12-07). A run is bit-reproducible only
where this record matches, so every stage's `done.json` (`timing.host`) and every run's `summary.json`
(`host`) carry it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform

# The CPU features that change what XLA:CPU emits (vector width, FMA, bf16/fp16 and AMX tiles).
CODEGEN_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, tuple[str, ...]]:
    """(model name, the CODEGEN_FLAGS it has), from the first processor of /proc/cpuinfo (Linux)."""
    model, flags = "", set()
    with contextlib.suppress(OSError), open(path) as f:  # no /proc/cpuinfo: the platform module's name
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
            if model and flags:
                break
    return model or platform.processor() or platform.machine(), tuple(f for f in CODEGEN_FLAGS if f in flags)


@functools.lru_cache(maxsize=1)
def host_info() -> dict:
    """{cpu, cpu_flags, machine, jax, jaxlib, backend, xla_flags} of this process."""
    import jax
    import jaxlib

    cpu, flags = _cpuinfo()
    return {
        "cpu": cpu,
        "cpu_flags": list(flags),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
