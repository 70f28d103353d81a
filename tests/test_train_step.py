import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.train.optim import adamw, learning_rate_schedule
from bon_jax.train.step import BadStepMonitor, TrainState, make_two_program_step, make_update_step


def _loss(params, batch):
    pred = batch["x"] @ params["w"]
    err = (pred - batch["y"]) * batch["scale"][:, None]
    return jnp.mean(err**2), {"mean_pred": jnp.mean(pred)}


def _batch(seed=0, n=8):
    r = np.random.default_rng(seed)
    return {
        "x": jnp.asarray(r.normal(size=(n, 3)), jnp.float32),
        "y": jnp.asarray(r.normal(size=(n, 2)), jnp.float32),
        "scale": jnp.ones((n,), jnp.float32),
    }


def test_schedule_warmup_then_constant():
    s = learning_rate_schedule(1e-3, 100, 10)
    assert float(s(0)) == 0.0 and np.isclose(float(s(5)), 5e-4) and np.isclose(float(s(50)), 1e-3)


def test_nonfinite_step_is_skipped_and_state_kept():
    opt = adamw(1e-2, 10)
    state = TrainState.create({"w": jnp.ones((3, 2))}, opt)
    step = jax.jit(make_update_step(_loss, opt))
    good, m = step(state, _batch())
    assert int(m["skipped"]) == 0 and int(good.step) == 1
    assert not np.allclose(good.params["w"], 1.0)
    bad_batch = _batch()
    bad_batch["scale"] = bad_batch["scale"].at[3].set(jnp.nan)
    after, m = step(good, bad_batch)
    assert int(m["skipped"]) == 1 and int(after.step) == 1
    jax.tree.map(np.testing.assert_array_equal, after.params, good.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, good.opt_state)


def test_grad_accumulation_equals_full_batch():
    opt = adamw(1e-2, 10, max_grad_norm=None)
    params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}
    full, m1 = jax.jit(make_update_step(_loss, opt))(TrainState.create(params, opt), _batch(n=8))
    acc, m4 = jax.jit(make_update_step(_loss, opt, accum=4))(TrainState.create(params, opt), _batch(n=8))
    np.testing.assert_allclose(acc.params["w"], full.params["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)


def test_bad_step_monitor_stops_after_consecutive_failures():
    mon = BadStepMonitor(3)
    for s, skipped in enumerate([1, 1, 0, 1, 1]):
        mon.update(skipped, s)
    with pytest.raises(FloatingPointError, match="3 consecutive steps"):
        mon.update(1, 5)


def test_grad_accumulation_passes_a_scalar_leaf_to_every_micro_batch():
    """A 0-d batch leaf (the EMA anchor's KL coefficient in fine-tuning) is a per-step scalar: each of the
    `accum` micro-batches gets it whole, so the step equals the full-batch step (it crashed splitting it)."""

    def loss(params, batch):
        value, aux = _loss(params, batch)
        return batch["coef"] * value, aux

    opt = adamw(1e-2, 10, max_grad_norm=None)
    params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}
    batch = dict(_batch(n=8), coef=jnp.float32(0.3))
    full, m1 = jax.jit(make_update_step(loss, opt))(TrainState.create(params, opt), batch)
    acc, m2 = jax.jit(make_update_step(loss, opt, accum=2))(TrainState.create(params, opt), batch)
    assert not np.allclose(full.params["w"], params["w"])
    np.testing.assert_allclose(acc.params["w"], full.params["w"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-6)


def _ema(state, anchor):
    return jax.tree.map(lambda a, p: 0.9 * a + 0.1 * p, anchor, state.params)


@pytest.mark.parametrize("accum", [1, 2])
def test_two_program_step_equals_the_one_program_step(accum):
    """`make_two_program_step` splits the update into a gradient program and an optimiser program (with
    `then`, here an EMA anchor, after it): the same state, anchor and metrics as one jitted program, over
    steps that change the batch's shape, and a non-finite step is skipped by both."""
    opt = adamw(1e-2, 10)
    params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2)}

    def one_program(state, anchor, batch):
        state, metrics = make_update_step(_loss, opt, accum=accum)(state, batch)
        return state, _ema(state, anchor), metrics

    one = jax.jit(one_program)
    two = make_two_program_step(_loss, opt, accum=accum, then=_ema)
    bad = _batch(seed=3, n=4)
    bad["scale"] = bad["scale"].at[1].set(jnp.nan)
    batches = [_batch(seed=0, n=8), _batch(seed=1, n=4), bad, _batch(seed=2, n=8)]
    fresh = lambda: jax.tree.map(jnp.copy, params)  # the two-program step donates its state and anchor
    a = (TrainState.create(fresh(), opt), fresh())
    b = (TrainState.create(fresh(), opt), fresh())
    for batch in batches:
        *a, ma = one(*a, batch)
        *b, mb = two(*b, batch)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), (a, ma), (b, mb))
    assert int(b[0].step) == 3 and not np.allclose(b[1]["w"], params["w"])


def test_two_program_step_compiles_its_optimiser_once():
    """Only the gradient program depends on the batch's shape: two batch shapes, one optimiser program."""
    opt = adamw(1e-2, 10)
    two = make_two_program_step(_loss, opt)
    state = TrainState.create({"w": jnp.ones((3, 2))}, opt)
    for n in (8, 4, 8):
        state, _, _ = two(state, None, _batch(n=n))
    assert two.programs["gradients"]._cache_size() == 2
    assert two.programs["apply"]._cache_size() == 1
