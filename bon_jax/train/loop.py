"""The host loop shared by every training stage: resume, step, log, checkpoint, preemption.

    start, state <- the latest checkpoint of the stage (its step, its state), or 0 and the initial state
    for step in [start, num_steps):
        batch <- batch_fn(step, data_state)    host work (sampling, grading) may happen here
        state, metrics <- step_fn(state, batch)   jitted, donated
        every log_every steps:  pull metrics to the host once, write JSONL/TensorBoard, check skipped steps
        every ckpt_every steps, at the end, and on SIGTERM: checkpoint (state + data-iterator state), once

Batches are derived from the step (and an iterator state saved with the checkpoint), so a run killed at
any point and restarted produces exactly the parameters of an uninterrupted run, and its log has one row
per step (the rows a killed run wrote after its last checkpoint are dropped on restart).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
from tqdm.auto import tqdm

from bon_jax.train.checkpoint import Checkpointer
from bon_jax.train.metrics_log import MetricsWriter, read_jsonl, to_python
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
    progress: bool = True


def run_loop(
    stage_dir: str | None,
    state,
    step_fn: Callable[[Any, Any], tuple[Any, dict]],
    batch_fn: Callable[[int, Any], Any],
    cfg: LoopConfig,
    *,
    data_state: Callable[[], dict] | None = None,
    restore_data_state: Callable[[dict], None] | None = None,
    stop_after: int | None = None,
    history: list[dict] | None = None,
):
    """Runs `cfg.num_steps` steps from wherever the stage's checkpoints left off; returns the final state.

    `state` is a pytree (a `TrainState`) the checkpoints hold. The loop's step counter, which names the
    checkpoints and is what `batch_fn` sees, counts every step taken; `state.step` counts the updates
    applied and lags it after a skipped non-finite step, so a resumed run starts from the checkpoint's
    name, not from `state.step`. `data_state()` returns the JSON state of the data iterator to store with
    each checkpoint and `restore_data_state(meta)` sets it back on resume. `stop_after` (tests) raises
    `Preempted` after that many steps, as a SIGTERM would. `history`, if given, receives the stage's
    logged rows, those logged before a resume included (read back from its log). With `stage_dir=None`
    nothing is checkpointed or written to disk and a SIGTERM is not intercepted (there is nothing to
    resume from).
    """
    ckpt = Checkpointer(os.path.join(stage_dir, "checkpoints"), max_to_keep=cfg.keep) if stage_dir else None
    start = 0
    if ckpt is not None and ckpt.latest_step is not None:
        start = int(ckpt.latest_step)
        state, meta = ckpt.restore(state)
        if restore_data_state is not None:
            restore_data_state(meta.get("data", {}))
    saved = start if start else None
    writer = None
    if stage_dir:
        # Rows the interrupted run logged after its last checkpoint are logged again by this one.
        writer = MetricsWriter(os.path.join(stage_dir, "logs"), cfg.desc, resume_step=start)
        if history is not None:
            history.extend(read_jsonl(writer.path))
    monitor = BadStepMonitor(cfg.max_bad_steps)

    def save(step):
        nonlocal saved
        if ckpt is not None and step != saved:  # a SIGTERM at a checkpoint step: saved once
            ckpt.save(step, state, {"data": data_state() if data_state else {}})
            saved = step

    pending: list[tuple[int, dict]] = []

    def flush() -> dict:
        row = {}
        for s, m in jax.device_get(pending):
            # logged first: the step that stops the run is on record
            row = writer.write(s, m) if writer is not None else {"step": int(s), **to_python(dict(m))}
            if history is not None:
                history.append(row)
            monitor.update(int(m.get("skipped", 0)), s)
        pending.clear()
        return row

    try:
        with (
            PreemptionGuard() if ckpt is not None else contextlib.nullcontext() as guard,
            tqdm(
                total=cfg.num_steps,
                initial=start,
                desc=cfg.desc,
                dynamic_ncols=True,
                leave=True,
                disable=not cfg.progress,
            ) as bar,
        ):
            step = start
            while step < cfg.num_steps:
                batch = batch_fn(step, state)
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append((step, metrics))
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.num_steps:
                    row = flush()
                    shown = ("loss", "sample/reward_mean", "nll", "bon_reward")
                    bar.set_postfix(
                        {k: v if isinstance(v, str) else f"{v:.4g}" for k, v in row.items() if k in shown}
                    )
                if step % cfg.ckpt_every == 0 or step == cfg.num_steps:
                    save(step)
                preempted = guard is not None and guard.requested()
                if preempted or (stop_after is not None and step - start >= stop_after):
                    flush()  # the log holds every step up to the checkpoint the restart resumes from
                    save(step)
                    if ckpt is not None:
                        ckpt.wait()
                    raise Preempted(f"{cfg.desc}: checkpointed at step {step}; restart to resume")
        if ckpt is not None:
            ckpt.wait()
    finally:
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return state
