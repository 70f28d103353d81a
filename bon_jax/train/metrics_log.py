"""Metrics sinks of a run: one JSONL file per stage and TensorBoard event files (tensorboardX, no TF).

Values are pulled to the host once per logging interval (never per step), so logging adds no host
round trip to the jitted loop between intervals.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


def to_python(value: Any) -> Any:
    """Converts jax/numpy scalars and arrays to JSON-friendly Python values (non-finite -> str)."""
    if hasattr(value, "tolist"):
        value = np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value


class MetricsWriter:
    """Appends `{"step", "time", **metrics}` rows to `<logdir>/<stage>.jsonl` and scalars to TensorBoard.

    `resume_step` (a run restarting from its checkpoint of that step, 0 for one restarting from scratch)
    first drops the rows logged after that step by the interrupted run, which the restarted run logs
    again, so each step has one row; TensorBoard is told to purge its events after the step likewise.
    """

    def __init__(self, logdir: str, stage: str, *, tensorboard: bool = True, resume_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"{stage}.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            _truncate_rows(self.path, int(resume_step))
        self._file = open(self.path, "a", buffering=1)
        self._stage = stage
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = SummaryWriter(os.path.join(logdir, "tb", stage), purge_step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
        row = {"step": int(step), "time": time.time(), **to_python(dict(metrics))}
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key in ("step", "time"):
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{self._stage}/{key}", value, int(step))
        return row

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _truncate_rows(path: str, last_step: int) -> None:
    """Rewrites the JSONL log at `path` without its rows of steps > `last_step` (and without a torn last
    line left by a kill mid-write), atomically."""
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(row.get("step", 0)) <= last_step:
                kept.append(json.dumps(row) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
