"""The plain-JAX reference sampler of `make bench-peers` (benchmarks/peers/jax_reference_peer.py) is a
correct sampler: its cached decode gives the logits of a full forward, its inverse-CDF draw follows the
softmax, and a sample has the workload's shape."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "peers"))
from jax_reference_peer import MODEL, build  # noqa: E402

FNS = build(jax, jnp, lax)


def test_cached_decode_equals_a_full_forward():
    params = FNS["init"](jax.random.key(0))
    r = np.random.default_rng(0)
    T_p, T_new = 5, 4
    tokens = jnp.asarray(r.integers(2, MODEL["vocab_size"], (2, T_p + T_new)), jnp.int32)
    S = T_p + T_new
    key_pos = jnp.arange(S)
    G, E = MODEL["num_kv_heads"], MODEL["head_dim"]
    empty = lambda: [(jnp.zeros((2, G, S, E)), jnp.zeros((2, G, S, E))) for _ in range(MODEL["num_layers"])]
    positions = lambda t0, t1: jnp.broadcast_to(jnp.arange(t0, t1), (2, t1 - t0))
    forward = jax.jit(FNS["forward"])  # one compile per shape, not thousands of op-by-op dispatches
    logits, caches = forward(params, tokens[:, :T_p], positions(0, T_p), empty(), 0, key_pos)
    for t in range(T_p, S):
        full, _ = forward(params, tokens[:, :t], positions(0, t), empty(), 0, key_pos)
        np.testing.assert_allclose(logits, full, rtol=1e-4, atol=1e-4)
        logits, caches = forward(params, tokens[:, t:t + 1], positions(t, t + 1), caches, t, key_pos)
    assert float(jnp.std(logits)) > 0.1


def test_inverse_cdf_draws_follow_the_softmax():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05] + [1e-30] * (MODEL["vocab_size"] - 4)]))
    draws = jax.vmap(lambda k: FNS["inverse_cdf"](logits, k)[0])(jax.random.split(jax.random.key(1), 20000))
    freq = np.bincount(np.asarray(draws), minlength=4)[:4] / 20000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)  # 4.5 sigma at most
    out = jax.jit(FNS["sample"], static_argnums=(3, 4))(FNS["init"](jax.random.key(0)),
                                                        jnp.full((2, 3), 5, jnp.int32), jax.random.key(2), 3, 4)
    assert out.shape == (2, 3, 4) and out.dtype == jnp.int32
