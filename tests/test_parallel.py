"""Mesh and sharding helpers on 8 fake CPU devices: mesh shapes, FSDP rules, sharded == unsharded (including
the whole BoN-RL update step on a 2 x 4 mesh)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bon_jax import parallel
from bon_jax.parallel import (
    batch_sharding,
    group_sharding,
    host_local_batch_to_global,
    make_mesh,
    param_sharding,
    replicated,
    shard_params,
    sharded_init,
)


def test_there_are_8_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "data, fsdp, shape",
    [(2, 4, (2, 4)), (8, 1, (8, 1)), (-1, 1, (8, 1)), (-1, 2, (4, 2)), (1, -1, (1, 8)), (2, 2, (2, 2))],
)
def test_mesh_shapes(data, fsdp, shape):
    mesh = make_mesh(data, fsdp)
    assert mesh.axis_names == ("data", "fsdp")
    assert (mesh.shape["data"], mesh.shape["fsdp"]) == shape
    assert mesh.devices.size == shape[0] * shape[1]
    assert len(set(mesh.devices.flat)) == mesh.devices.size
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_mesh_on_given_devices():
    mesh = make_mesh(-1, 2, devices=jax.devices()[4:])
    assert (mesh.shape["data"], mesh.shape["fsdp"]) == (2, 2)
    assert set(mesh.devices.flat) == set(jax.devices()[4:])


@pytest.mark.parametrize(
    "data, fsdp, match",
    [
        (3, 1, "does not divide the 8 devices"),
        (2, 3, "does not divide the 8 devices"),
        (16, 1, "does not divide the 8 devices"),
        (-1, 3, "do not split into 3-device groups"),
        (-1, -1, "at most one"),
        (0, 1, "positive int or -1"),
        (2, -2, "positive int or -1"),
        (2.0, 4, "positive int or -1"),
    ],
)
def test_bad_mesh_refused(data, fsdp, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(data, fsdp)


def _mixed_tree(make):
    return {
        "embed": make((64, 16)),
        "layer": {"w": make((16, 48)), "b": make((48,)), "scale": make((16,))},
        "odd": make((7, 9)),
        "tied": make((32, 32)),
        "scalar": make(()),
    }


def test_param_sharding_rules():
    mesh = make_mesh(2, 4)
    for make in (jnp.zeros, lambda s: jax.ShapeDtypeStruct(s, jnp.float32)):
        specs = jax.tree.map(lambda s: s.spec, param_sharding(_mixed_tree(make), mesh, 0))
        assert specs == {
            "embed": P("fsdp", None),  # largest axis
            "layer": {"w": P(None, "fsdp"), "b": P("fsdp"), "scale": P("fsdp")},
            "odd": P(),  # nothing divisible by 4
            "tied": P("fsdp", None),  # tie: first axis
            "scalar": P(),
        }
    # With a size threshold the small leaves stay replicated.
    specs = jax.tree.map(lambda s: s.spec, param_sharding(_mixed_tree(jnp.zeros), mesh, 1024))
    assert specs["embed"] == P("fsdp", None) and specs["tied"] == P("fsdp", None)
    assert specs["layer"] == {"w": P(), "b": P(), "scale": P()}
    # No fsdp axis: everything replicated.
    specs = jax.tree.map(lambda s: s.spec, param_sharding(_mixed_tree(jnp.zeros), make_mesh(8, 1), 0))
    assert all(s == P() for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_param_sharding_covers_optimizer_state():
    mesh = make_mesh(2, 4)
    params = _mixed_tree(jnp.zeros)
    opt_state = optax.adam(1e-3).init(params)
    shardings = param_sharding(opt_state, mesh, 0)
    adam = shardings[0]
    want = param_sharding(params, mesh, 0)
    assert adam.mu == want and adam.nu == want
    assert adam.count.spec == P()
    placed = jax.device_put(opt_state, shardings)
    assert placed[0].mu["embed"].sharding.spec == P("fsdp", None)
    assert placed[0].mu["embed"].addressable_shards[0].data.shape == (16, 16)


def test_batch_group_and_replicated_shardings():
    mesh = make_mesh(2, 4)
    assert parallel.batch_shards(mesh) == 8
    assert batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert group_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
    assert replicated(mesh).spec == P()
    tokens_BMT = jax.device_put(np.arange(8 * 3 * 5).reshape(8, 3, 5), group_sharding(mesh, 3))
    shard = tokens_BMT.addressable_shards[0]
    assert shard.data.shape == (1, 3, 5)  # one prompt per device, all M samples with it
    with pytest.raises(ValueError):
        group_sharding(mesh, 1)
    with pytest.raises(ValueError):
        batch_sharding(mesh, 0)


# A two-layer MLP in pure jax: its sharded step must reproduce the unsharded one.


def _init_mlp(rng, d_in=16, d_hidden=64, d_out=8):
    k1, k2 = jax.random.split(rng)
    return {
        "w1": jax.random.normal(k1, (d_in, d_hidden)) / np.sqrt(d_in),
        "b1": jnp.full((d_hidden,), 0.1),
        "w2": jax.random.normal(k2, (d_hidden, d_out)) / np.sqrt(d_hidden),
        "b2": jnp.zeros((d_out,)),
    }


def _mlp_loss(params, x_BD, y_BO):
    h_BH = jax.nn.gelu(x_BD @ params["w1"] + params["b1"])
    out_BO = h_BH @ params["w2"] + params["b2"]
    return jnp.mean((out_BO - y_BO) ** 2)


def _np_params(seed, d_in=16, d_hidden=64, d_out=8):
    """Host-side parameters: numpy keeps the tests free of one compile per eager op."""
    r = np.random.default_rng(seed)
    return {
        "w1": (r.standard_normal((d_in, d_hidden)) / np.sqrt(d_in)).astype(np.float32),
        "b1": np.full((d_hidden,), 0.1, np.float32),
        "w2": (r.standard_normal((d_hidden, d_out)) / np.sqrt(d_hidden)).astype(np.float32),
        "b2": np.zeros((d_out,), np.float32),
    }


def _batch(seed, b=16, d_in=16, d_out=8):
    r = np.random.default_rng(seed)
    x_BD = r.standard_normal((b, d_in)).astype(np.float32)
    return x_BD, r.standard_normal((b, d_out)).astype(np.float32)


def test_sharded_mlp_step_matches_unsharded():
    params = _np_params(0)
    x_BD, y_BO = _batch(1)
    grad_fn = jax.value_and_grad(_mlp_loss)

    one = jax.devices()[0]
    ref_loss, ref_grads = jax.jit(grad_fn)(*jax.device_put((params, x_BD, y_BO), one))

    mesh = make_mesh(2, 4)
    p_shardings = param_sharding(params, mesh, min_size_to_shard=0)
    sharded_params = shard_params(params, mesh, min_size_to_shard=0)
    assert sharded_params["w1"].sharding.spec == P(None, "fsdp")
    assert sharded_params["w2"].sharding.spec == P("fsdp", None)
    assert sharded_params["w1"].addressable_shards[0].data.shape == (16, 16)
    data = batch_sharding(mesh, 2)
    step = jax.jit(
        grad_fn,
        in_shardings=(p_shardings, data, data),
        out_shardings=(replicated(mesh), p_shardings),
    )
    loss, grads = step(sharded_params, jax.device_put(x_BD, data), jax.device_put(y_BO, data))

    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6)
        assert grads[name].sharding.is_equivalent_to(p_shardings[name], params[name].ndim)


def test_sharded_train_step_with_donation_matches_unsharded():
    """Three SGD steps with donated, FSDP-sharded params and optimizer state."""
    opt = optax.adam(1e-2)

    def train_step(params, opt_state, x_BD, y_BO):
        loss, grads = jax.value_and_grad(_mlp_loss)(params, x_BD, y_BO)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = _np_params(0)
    batches = [_batch(i) for i in range(3)]

    ref_params, ref_state = params, opt.init(params)
    ref_losses = []
    for x, y in batches:
        ref_params, ref_state, loss = jax.jit(train_step)(ref_params, ref_state, x, y)
        ref_losses.append(loss)

    mesh = make_mesh(2, 4)
    p_sh = param_sharding(params, mesh, 0)
    s_sh = param_sharding(jax.eval_shape(opt.init, params), mesh, 0)
    data = batch_sharding(mesh, 2)
    step = jax.jit(
        train_step,
        in_shardings=(p_sh, s_sh, data, data),
        out_shardings=(p_sh, s_sh, replicated(mesh)),
        donate_argnums=(0, 1),
    )
    state = jax.jit(opt.init, out_shardings=s_sh)(shard_params(params, mesh, 0))
    sharded = shard_params(params, mesh, 0)
    for (x, y), ref_loss in zip(batches, ref_losses, strict=True):
        sharded, state, loss = step(sharded, state, x, y)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(sharded[name], ref_params[name], rtol=1e-5, atol=1e-6)


def test_sharded_init_places_output_as_requested():
    mesh = make_mesh(2, 4)
    rng = jax.random.key(3)
    params = sharded_init(_init_mlp, rng, mesh, min_size_to_shard=0)
    want = param_sharding(jax.eval_shape(_init_mlp, rng), mesh, 0)
    reference = jax.jit(_init_mlp)(rng)
    for name, value in params.items():
        assert value.sharding == want[name]
        np.testing.assert_array_equal(value, reference[name])
    assert params["w1"].addressable_shards[0].data.shape == (16, 16)
    # Default threshold: these leaves are all small, so all replicated.
    small = sharded_init(_init_mlp, rng, mesh)
    assert all(v.sharding.spec == P() for v in small.values())


def test_sharded_init_with_traced_args():
    mesh = make_mesh(1, 8)

    def init_fn(rng, x_BD):
        return {"w": jax.random.normal(rng, (x_BD.shape[-1], 64)) + x_BD.sum()}

    rng, x_BD = jax.random.key(0), np.ones((2, 8), np.float32)
    params = sharded_init(init_fn, rng, mesh, x_BD, min_size_to_shard=0)
    assert params["w"].sharding.spec == P(None, "fsdp")
    np.testing.assert_allclose(params["w"], jax.jit(init_fn)(rng, x_BD)["w"], rtol=1e-6)


def test_host_local_batch_to_global_single_process():
    mesh = make_mesh(2, 4)
    local = {
        "tokens_BT": np.arange(8 * 6, dtype=np.int32).reshape(8, 6),
        "lengths_B": np.arange(8, dtype=np.int32),
    }
    batch = host_local_batch_to_global(local, mesh)
    assert batch["tokens_BT"].shape == (8, 6)
    assert batch["tokens_BT"].sharding == batch_sharding(mesh, 2)
    assert batch["lengths_B"].sharding == batch_sharding(mesh, 1)
    for name in local:
        np.testing.assert_array_equal(batch[name], local[name])
    for shard in batch["tokens_BT"].addressable_shards:
        np.testing.assert_array_equal(shard.data, local["tokens_BT"][shard.index])
        assert shard.data.shape == (1, 6)

    # One sharding for every leaf, and a pytree of shardings.
    group = group_sharding(mesh, 3)
    tokens_BMT = np.arange(8 * 2 * 3).reshape(8, 2, 3)
    out = host_local_batch_to_global([tokens_BMT], mesh, group)
    assert out[0].sharding == group
    np.testing.assert_array_equal(out[0], tokens_BMT)
    out = host_local_batch_to_global(local, mesh, {"tokens_BT": replicated(mesh), "lengths_B": None})
    assert out["tokens_BT"].sharding == replicated(mesh)
    assert out["lengths_B"].sharding == batch_sharding(mesh, 1)
    np.testing.assert_array_equal(out["tokens_BT"], local["tokens_BT"])


def test_process_shard_partitions_items():
    assert parallel.process_shard(10) == slice(0, 10)  # one process
    for n, count in [(10, 3), (8, 4), (2, 4), (0, 2)]:
        slices = [parallel.process_shard(n, i, count) for i in range(count)]
        items = [j for s in slices for j in range(n)[s]]
        assert items == list(range(n))
        sizes = [s.stop - s.start for s in slices]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="outside"):
        parallel.process_shard(10, 3, 3)


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, None),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "jax-coordinator"),
        (
            {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"},
            "slurm",
        ),
        ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, None),
        ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
        ({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}, "cloud-tpu"),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
        ({"MEGASCALE_NUM_SLICES": "2"}, "cloud-tpu"),
    ],
)
def test_detect_multiprocess(env, want):
    assert parallel.detect_multiprocess(env) == want


def test_maybe_initialize_distributed(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert parallel.maybe_initialize_distributed(environ={}) is False
    assert parallel.maybe_initialize_distributed(False, environ={"MEGASCALE_NUM_SLICES": "2"}) is False
    assert calls == []
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}
    assert parallel.maybe_initialize_distributed(environ=env) is True
    assert calls == [{"num_processes": 4, "process_id": 2}]
    assert parallel.maybe_initialize_distributed(True, environ={}, initialization_timeout=5)
    assert calls[-1] == {"initialization_timeout": 5}


def test_use_mesh_context_allows_bare_partition_specs():
    mesh = make_mesh(2, 4)

    @jax.jit
    def f(x_BD):
        return jax.lax.with_sharding_constraint(x_BD * 2, P(("data", "fsdp"), None))

    with parallel.use_mesh(mesh):
        y = f(jnp.ones((8, 4)))
    assert isinstance(y.sharding, NamedSharding)
    assert y.sharding.is_equivalent_to(batch_sharding(mesh, 2), 2)
    assert y.addressable_shards[0].data.shape == (1, 4)
    np.testing.assert_array_equal(y, 2 * np.ones((8, 4)))


# The real model: a forward/backward step of the tiny Gemma-family decoder, FSDP-sharded.


def _lm_batch(vocab_size, b=8, t=16, seed=0):
    r = np.random.default_rng(seed)
    lengths_B = r.integers(4, t + 1, size=b)
    valid_BT = np.arange(t)[None, :] < lengths_B[:, None]
    tokens_BT = np.where(valid_BT, r.integers(4, vocab_size, size=(b, t)), 0).astype(np.int32)
    target_BT = valid_BT & (np.arange(t)[None, :] >= 2)
    return {"tokens_BT": tokens_BT, "valid_BT": valid_BT, "target_BT": target_BT}


@pytest.mark.slow
def test_sharded_model_loss_and_grads_match_unsharded():
    from bon_jax.models import abstract_params, get_config, make_model
    from bon_jax.train.lm import sft_loss

    cfg = get_config("tiny")
    model = make_model(cfg)
    r = np.random.default_rng(0)  # numpy params of the model's shapes: no init compile
    params = jax.tree.map(lambda x: r.normal(0, 0.2, x.shape).astype(x.dtype), abstract_params(cfg))
    batch = _lm_batch(cfg.vocab_size)
    grad_fn = jax.value_and_grad(sft_loss(model), has_aux=True)

    one = jax.devices()[0]
    (ref_loss, _), ref_grads = jax.jit(grad_fn)(*jax.device_put((params, batch), one))

    mesh = make_mesh(2, 4)
    p_sh = param_sharding(params, mesh, min_size_to_shard=0)
    specs = [s.spec for s in jax.tree.leaves(p_sh)]
    assert sum(spec != P() for spec in specs) >= len(specs) // 2  # most leaves really are split
    data = jax.tree.map(lambda x: batch_sharding(mesh, x.ndim), batch)
    step = jax.jit(grad_fn, in_shardings=(p_sh, data), out_shardings=((replicated(mesh), None), p_sh))
    (loss, _), grads = step(shard_params(params, mesh, 0), host_local_batch_to_global(batch, mesh))

    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    for (path, ref), got, sh in zip(flat_ref, jax.tree.leaves(grads), jax.tree.leaves(p_sh), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
        assert got.sharding.is_equivalent_to(sh, got.ndim)


@pytest.mark.slow
@pytest.mark.parametrize("greedy", [True, False])
def test_sharded_sampler_matches_unsharded(greedy):
    from bon_jax.models import abstract_params, get_config
    from bon_jax.sampling import sample

    cfg = get_config("tiny")
    r = np.random.default_rng(1)
    params = jax.tree.map(lambda x: r.normal(0, 0.3, x.shape).astype(x.dtype), abstract_params(cfg))
    lengths_B = r.integers(2, 9, size=8)
    prompts_BT = np.where(
        np.arange(8)[None, :] < lengths_B[:, None], r.integers(4, cfg.vocab_size, size=(8, 8)), 0
    ).astype(np.int32)
    rng = jax.random.key(5)

    def run(params, prompts_BT):
        return sample(params, cfg, prompts_BT, 3, rng, max_new_tokens=6, greedy=greedy, eos_id=1)

    one = jax.devices()[0]
    ref = run(*jax.device_put((params, prompts_BT), one))
    mesh = make_mesh(2, 4)
    out = run(shard_params(params, mesh, 0), jax.device_put(prompts_BT, batch_sharding(mesh, 2)))

    assert out.tokens_BMT.shape == (8, 3, 6)
    # Prompts split over the devices, each prompt's M samples on its own device.
    assert out.tokens_BMT.sharding.is_equivalent_to(group_sharding(mesh, 3), 3)
    np.testing.assert_array_equal(out.tokens_BMT, ref.tokens_BMT)
    np.testing.assert_array_equal(out.lengths_BM, ref.lengths_BM)
    np.testing.assert_allclose(out.logprobs_BMT, ref.logprobs_BMT, rtol=1e-5, atol=1e-6)
    if not greedy:  # the M samples of a prompt differ: the test is not comparing copies
        assert (ref.tokens_BMT[:, 0] != ref.tokens_BMT[:, 1]).any()


@pytest.mark.slow
def test_rl_update_on_2x4_mesh_equals_single_device():
    from bon_jax.models import get_config, init_params
    from bon_jax.objectives import Rollout
    from bon_jax.pipeline.finetune import rl_loss
    from bon_jax.sampling import sample
    from bon_jax.train.optim import adamw
    from bon_jax.train.step import TrainState, make_update_step

    cfg = get_config("tiny")
    params = init_params(cfg, jax.random.key(0))
    B, M = 8, 4
    prompts = jax.random.randint(jax.random.key(1), (B, 6), 3, cfg.vocab_size)
    out = sample(params, cfg, prompts, M, jax.random.key(2), max_new_tokens=8, padding_side="left")
    r = np.random.default_rng(0)
    batch = {
        "prompt_tokens_BT": prompts,
        "prompt_lengths_B": jnp.full((B,), 6, jnp.int32),
        "tokens_BMT": out.tokens_BMT,
        "lengths_BM": out.lengths_BM,
        "rollout": Rollout(
            rewards_BM=jnp.asarray(r.integers(0, 2, (B, M)), jnp.float32),
            scores_BM=jnp.asarray(r.normal(size=(B, M)), jnp.float32),
            ref_logp_BM=jnp.asarray(r.normal(size=(B, M)) - 5, jnp.float32),
        ),
    }
    opt = adamw(1e-2, 10)
    step = make_update_step(rl_loss(cfg, "bon_rl", n=2, beta=0.1, options={}), opt)
    single, m1 = jax.jit(step)(TrainState.create(params, opt), batch)

    mesh = parallel.make_mesh(data=2, fsdp=4)
    state = TrainState.create(params, opt)
    state_sh = parallel.param_sharding(state, mesh, min_size_to_shard=64)
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(state_sh))
    batch_sh = jax.tree.map(lambda x: parallel.batch_sharding(mesh, x.ndim), batch)
    sharded_step = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None))
    sharded, m8 = sharded_step(jax.device_put(state, state_sh), jax.device_put(batch, batch_sh))
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
    # Adam divides by sqrt(v): on coordinates whose gradient is near zero the sharded reductions' different
    # summation order moves the update by up to ~1e-6 (measured 2.7e-6 on 1 of 4096), hence atol 1e-5 =
    # 1e-3 x lr; a wrong sharding moves updates by O(lr).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), sharded.params, single.params
    )
