"""The XLA:CPU setting bon_jax runs with: reductions stay out of YNNPACK's fusions.

XLA:CPU hands a dot, with the elementwise ops and reductions around it, to YNNPACK as one fusion. With
reductions in the fusion, one YNNPACK call holds a whole block (RMSNorm's sums, the attention output's and
the MLP's three products, GeGLU's tanh), and XLA materialises every scalar constant that call reads as a
full-size array first (GeGLU's four constants as `[rows, T, mlp_dim]` broadcasts, about a tenth of a
log-prob pass here). Leaving reductions to XLA's own emitters keeps the products in YNNPACK and the rest in
XLA's loops. `python -m benchmarks.run --only=matmul,train --repeats=3`, the same session, the `small`
BoN-RL step (docs/lab_notes/performance.md, "YNNPACK's reduce fusions"): log-prob passes 3.1 -> 2.1 s,
update 8.7 -> 7.2 s, sampling 3.0 -> 2.4 s, the step 21.2 -> 16.2 s; the programs compile about 6% slower.

The numbers differ in float rounding from XLA's default (a log-prob sum by up to ~5e-5), so everything
trained with and without it differs as two draws of the same experiment do.

`apply()` adds the flag to `XLA_FLAGS` unless the flag is already there (a setting of one's own wins) or
`BON_JAX_XLA_CPU_DEFAULTS=0`. bon_jax calls it on import, which is in time as long as no JAX computation has
run in the process before (XLA reads `XLA_FLAGS` when its first backend starts). Other backends ignore it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV_SWITCH = "BON_JAX_XLA_CPU_DEFAULTS"
FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_REDUCE",)


def apply(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Adds each flag of FLAGS whose name `XLA_FLAGS` does not set yet, unless `environ[ENV_SWITCH]` is "0".
    Returns the flags added."""
    if environ.get(ENV_SWITCH, "1") == "0":
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f for f in FLAGS if f.split("=", 1)[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added
