"""Resume and preemption of the training loop and of the stages (issue 13, defect 10).

Every resume test compares a run that was stopped and restarted with one that was not, on a toy
least-squares problem whose parameters move at every step (checked), so equality is not the initial
parameters compared with themselves.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.pipeline.loop import LoopConfig, Preempted, run_loop
from bon_jax.train.checkpoint import Checkpointer
from bon_jax.train.metrics_log import read_jsonl
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step

STEPS = 8


class Killed(Exception):
    """Stands for a kill the loop cannot intercept (SIGKILL, out of memory)."""


def _loss(params, batch):
    err = batch["x_RD"] @ params["w"] - batch["y_R"]
    return jnp.mean(err**2), {"mean_err": jnp.mean(err)}


_OPT = adamw(0.05, STEPS, max_grad_norm=None)
_STEP = jax.jit(make_update_step(_loss, _OPT))


def _init():
    return TrainState.create({"w": jnp.zeros((3,), jnp.float32)}, _OPT)


def _batches(nan_at=(), sigterm_at=(), crash_at=()):
    """batch_fn: step t's batch drawn from seed t; a NaN target at the steps `nan_at` (a skipped step), a
    real SIGTERM or an exception (a hard kill) while preparing the steps `sigterm_at` / `crash_at`."""

    def batch_fn(step, state):
        if step in sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step in crash_at:
            raise Killed
        r = np.random.default_rng(step)
        x = r.normal(size=(8, 3)).astype(np.float32)
        y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * r.normal(size=8)).astype(np.float32)
        if step in nan_at:
            y[0] = np.nan
        return {"x_RD": jnp.asarray(x), "y_R": jnp.asarray(y)}

    return batch_fn


def _rows(stage_dir):
    return read_jsonl(os.path.join(stage_dir, "logs", "train.jsonl"))


def _assert_same_run(resumed_dir, resumed, reference_dir, reference):
    assert not np.allclose(reference.params["w"], 0.0)  # training moved the parameters
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    got, want = _rows(resumed_dir), _rows(reference_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # one row per step
    assert [(r["loss"], r["skipped"]) for r in got] == [(r["loss"], r["skipped"]) for r in want]


def test_sigterm_during_a_checkpoint_step_checkpoints_once_and_resumes_exactly(tmp_path):
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=1)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "preempted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(), cfg)
    # SIGTERM while step 4 is prepared: step 4 is both a periodic checkpoint and the preemption's.
    with pytest.raises(Preempted, match="checkpointed at step 4"):
        run_loop(dir_, _init(), _STEP, _batches(sigterm_at=(3,)), cfg)
    with Checkpointer(os.path.join(dir_, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [4]
    resumed = run_loop(dir_, _init(), _STEP, _batches(), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)


def test_resume_after_a_skipped_nonfinite_step_matches_the_uninterrupted_run(tmp_path):
    """Step 3's loss is NaN: the update is skipped, so `state.step` lags the loop's step by one; the
    restart must resume at the checkpoint's step (5), not at `state.step` (4), which would redo step 5."""
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=100, log_every=1)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "preempted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(nan_at=(2,)), cfg)
    assert int(reference.step) == STEPS - 1
    with pytest.raises(Preempted, match="checkpointed at step 5"):
        run_loop(dir_, _init(), _STEP, _batches(nan_at=(2,)), cfg, stop_after=5)
    resumed = run_loop(dir_, _init(), _STEP, _batches(nan_at=(2,)), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)
    assert [r["skipped"] for r in _rows(dir_)] == [0, 0, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "how, log_every",
    [
        ("killed after logging past its last checkpoint", 1),  # rows 5, 6 were logged twice
        ("preempted between two log flushes", 4),  # rows 1-3 were never logged
    ],
)
def test_metric_log_has_one_row_per_step_after_a_restart(tmp_path, how, log_every):
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=log_every)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(), cfg)
    if how.startswith("killed"):
        with pytest.raises(Killed):
            run_loop(dir_, _init(), _STEP, _batches(crash_at=(6,)), cfg)
        assert [r["step"] for r in _rows(dir_)] == [1, 2, 3, 4, 5, 6]
    else:
        with pytest.raises(Preempted, match="checkpointed at step 3"):
            run_loop(dir_, _init(), _STEP, _batches(), cfg, stop_after=3)
    resumed = run_loop(dir_, _init(), _STEP, _batches(), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)


def test_stage_whose_params_were_saved_but_not_marked_done_completes_on_rerun(tmp_path):
    """A training stage ends with: run_loop, save its params (step 0 of `<stage>/params`), `done.json`.
    Killed between the last two, the rerun finds the loop finished (its last checkpoint is the final
    step) and saves the params again: that save replaces the committed ones instead of failing."""
    from bon_jax.pipeline.stage_cache import stage

    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=4)
    st = stage(str(tmp_path), "base_policy", {"steps": STEPS})
    for _ in range(2):  # the first attempt is killed before mark_done
        assert not st.done
        state = run_loop(st.path, _init(), _STEP, _batches(), cfg)
        with Checkpointer(st.file("params"), max_to_keep=1) as ckpt:
            ckpt.save(0, {"params": state.params})
    st.mark_done()
    assert not np.allclose(state.params["w"], 0.0)
    with Checkpointer(st.file("params"), max_to_keep=1) as ckpt:
        saved, _ = ckpt.restore({"params": _init().params})
        assert ckpt.all_steps() == [0]
    jax.tree.map(np.testing.assert_array_equal, saved["params"], state.params)
