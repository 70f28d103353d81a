"""The host loop shared by every training stage: resume, step, log, checkpoint, preemption.

    state <- restore the latest checkpoint of the stage, or the initial state
    for step in [state.step, num_steps):
        batch <- batch_fn(step, data_state)    host work (sampling, grading) may happen here
        state, metrics <- step_fn(state, batch)   jitted, donated
        every log_every steps:  pull metrics to the host once, write JSONL/TensorBoard, check skipped steps
        every ckpt_every steps, at the end, and on SIGTERM: checkpoint (state + data-iterator state)

Batches are derived from the step (and an iterator state saved with the checkpoint), so a run killed at
any point and restarted produces exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
from tqdm.auto import tqdm

from bon_jax.train.checkpoint import Checkpointer
from bon_jax.train.metrics_log import MetricsWriter
from bon_jax.train.preemption import PreemptionGuard
from bon_jax.train.step import BadStepMonitor


class Preempted(Exception):
    """Raised after a SIGTERM-triggered checkpoint: the process should exit cleanly and be restarted."""


@dataclasses.dataclass
class LoopConfig:
    num_steps: int
    ckpt_every: int = 50
    keep: int = 3
    log_every: int = 10
    max_bad_steps: int = 5
    desc: str = "train"


def run_loop(
    stage_dir: str,
    state,
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    batch_fn: Callable[[int, Any], Any],
    cfg: LoopConfig,
    *,
    data_state: Callable[[], dict] | None = None,
    restore_data_state: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
):
    """Runs `cfg.num_steps` steps from wherever the stage's checkpoints left off; returns the final state.

    `state` must have an int `step` field (a `TrainState`). `data_state()` returns the JSON state of the
    data iterator to store with each checkpoint and `restore_data_state(meta)` sets it back on resume.
    `stop_after` (tests) raises `Preempted` after that many steps, as a SIGTERM would.
    """
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), max_to_keep=cfg.keep)
    if ckpt.latest_step is not None:
        state, meta = ckpt.restore(state)
        if restore_data_state is not None:
            restore_data_state(meta.get("data", {}))
    start = int(state.step) if ckpt.latest_step is not None else 0
    writer = MetricsWriter(os.path.join(stage_dir, "logs"), cfg.desc)
    monitor = BadStepMonitor(cfg.max_bad_steps)

    def save(step):
        ckpt.save(step, state, {"data": data_state() if data_state else {}})

    pending: list[tuple[int, dict]] = []
    try:
        with (
            PreemptionGuard() as guard,
            tqdm(total=cfg.num_steps, initial=start, desc=cfg.desc, dynamic_ncols=True, leave=True) as bar,
        ):
            step = start
            while step < cfg.num_steps:
                batch = batch_fn(step, state)
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append((step, metrics))
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.num_steps:
                    for s, m in jax.device_get(pending):
                        row = writer.write(s, m)  # logged first: the step that stops the run is on record
                        monitor.update(int(m.get("skipped", 0)), s)
                    pending.clear()
                    shown = ("loss", "reward", "nll", "bon_reward")
                    bar.set_postfix(
                        {k: v if isinstance(v, str) else f"{v:.4g}" for k, v in row.items() if k in shown}
                    )
                if step % cfg.ckpt_every == 0 or step == cfg.num_steps:
                    save(step)
                if guard.requested() or (stop_after is not None and step - start >= stop_after):
                    save(step)
                    ckpt.wait()
                    raise Preempted(f"{cfg.desc}: checkpointed at step {step}; restart to resume")
        ckpt.wait()
    finally:
        writer.close()
        ckpt.close()
    return state
