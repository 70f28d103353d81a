import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bon_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
from bon_jax.train.preemption import PreemptionGuard


def _state(seed=0, width=8):
    k = jax.random.PRNGKey(seed)
    return {
        "params": {"w": jax.random.normal(k, (width, 4)), "b": jnp.arange(4.0)},
        "opt": {"mu": jnp.ones((width, 4)), "count": jnp.array(3, jnp.int32)},
        "rng": jax.random.key_data(jax.random.PRNGKey(seed + 1)),
        "step": jnp.array(7, jnp.int32),
    }


def test_save_restore_roundtrip_keeps_last_k(tmp_path):
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, _state(step), {"data": {"epoch": step, "index": 10 * step}})
        assert ckpt.all_steps() == [2, 3]
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ckpt:  # a fresh process resuming
        state, meta = ckpt.restore(jax.tree.map(jnp.zeros_like, _state()))
    want = _state(3)
    jax.tree.map(np.testing.assert_array_equal, state, want)
    assert meta == {"data": {"epoch": 3, "index": 30}}


def test_restore_onto_sharding(tmp_path):
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"))
    sharded = NamedSharding(mesh, P("fsdp", None))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(5, _state())
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P())),
            _state(),
        )
        abstract["params"]["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharded)
        state, _ = ckpt.restore(abstract)
    assert state["params"]["w"].sharding == sharded
    np.testing.assert_array_equal(state["params"]["w"], _state()["params"]["w"])


def test_mismatched_tree_is_refused_by_name(tmp_path):
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(1, _state(width=8))
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        wrong = _state(width=16)
        wrong["params"]["extra"] = jnp.zeros(2)
        with pytest.raises(CheckpointMismatchError) as err:
            ckpt.restore(wrong)
    msg = str(err.value)
    assert "params/w" in msg and "(8, 4)" in msg and "(16, 4)" in msg
    assert "missing in checkpoint: params/extra" in msg


def test_restore_without_checkpoint(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt:
        assert ckpt.latest_step is None
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(_state())


def test_preemption_guard_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested() and guard.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
    from bon_jax.train.metrics_log import MetricsWriter, read_jsonl

    with MetricsWriter(str(tmp_path), "rl") as w:
        w.write(1, {"loss": jnp.float32(0.5), "reward": np.float64(0.25), "bad": float("nan")})
        w.write(2, {"loss": 0.4, "vec": jnp.arange(2)})
    rows = read_jsonl(str(tmp_path / "rl.jsonl"))
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and rows[0]["bad"] == "nan" and rows[1]["vec"] == [0, 1]
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb" / "rl"))


def test_restore_of_dataclass_and_optax_state_from_a_fresh_manager(tmp_path):
    import optax

    from bon_jax.train.step import TrainState

    params = {"w": jnp.ones((4, 3))}
    state = TrainState.create(params, optax.adam(1e-3))
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, state)
    with Checkpointer(tmp_path / "c") as ckpt:
        restored, _ = ckpt.restore(jax.tree.map(jnp.zeros_like, state))
    assert isinstance(restored, TrainState)
    jax.tree.map(np.testing.assert_array_equal, restored, state)


def test_saving_a_step_that_exists_replaces_it(tmp_path):
    """A rerun saves again what its killed predecessor had committed (a stage's params, step 0)."""
    with Checkpointer(tmp_path / "params", max_to_keep=1) as ckpt:
        ckpt.save(0, _state(1))
    with Checkpointer(tmp_path / "params", max_to_keep=1) as ckpt:
        ckpt.save(0, _state(2))
        assert ckpt.all_steps() == [0]
        state, _ = ckpt.restore(_state())
    jax.tree.map(np.testing.assert_array_equal, state, _state(2))


def test_metrics_writer_resuming_drops_the_rows_after_the_checkpoint(tmp_path):
    """Rows a killed run logged after its last checkpoint (and a line torn by the kill) are dropped, as
    the restarted run logs those steps again."""
    from bon_jax.train.metrics_log import MetricsWriter, read_jsonl

    with MetricsWriter(str(tmp_path), "rl", tensorboard=False) as w:
        for step in (1, 2, 3, 4):
            w.write(step, {"loss": float(step)})
    with open(tmp_path / "rl.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    with MetricsWriter(str(tmp_path), "rl", resume_step=2) as w:
        w.write(3, {"loss": 30.0})
    rows = read_jsonl(str(tmp_path / "rl.jsonl"))
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
