"""Command-line entry points (`make train`, `make sweep`, `make eval`)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def run_reporting_errors(fn: Callable[[], object]) -> None:
    """Runs `fn`; a preemption exits 0 (restart to resume), a bon_jax error exits 2 with its message."""
    from bon_jax.errors import BonJaxError
    from bon_jax.pipeline.loop import Preempted

    try:
        fn()
    except Preempted as e:
        print(f"[bon_jax] preempted: {e}", file=sys.stderr)
    except BonJaxError as e:
        print(f"[bon_jax] error: {e}", file=sys.stderr)
        sys.exit(2)
