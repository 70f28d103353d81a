"""Local layers of the decode step read only each prompt's last `window` slots (`transformer.PrefixWindow`):
the same samples and log-probs as attending over the whole prompt, and as a full uncached forward, for
prompts longer than the window with left, right and inner padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import sampling
from bon_jax.models import (
    abstract_params,
    causal_mask,
    get_config,
    make_model,
    positions_from_valid,
    transformer,
)
from bon_jax.models.masks import valid_from_lengths
from bon_jax.models.transformer import prefix_window

CFG = get_config("tiny", sliding_window_size=16)
B, N, T, T_NEW = 4, 3, 40, 12
LENGTHS = np.array([40, 33, 17, 9])  # longer and shorter than the window


@functools.cache
def _params():
    rng = np.random.default_rng(1)
    draw = lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype)
    return jax.tree.map(draw, abstract_params(CFG))


def _prompts(side):
    if side == "inner":  # right-padded, plus pad tokens inside the real ones (valid = tokens != pad)
        valid = np.array(valid_from_lengths(LENGTHS, T, "right"))
        valid[:, 3] = valid[:, 20] = valid[:, 26] = False
    else:
        valid = np.asarray(valid_from_lengths(LENGTHS, T, side))
    return np.where(valid, np.random.default_rng(2).integers(1, CFG.vocab_size, (B, T)), 0), valid


def _decode(side, use_window, **settings):
    prompts, valid = _prompts(side)
    settings = sampling.SamplingSettings(max_new_tokens=T_NEW, **settings)
    logits_BV, prefix = sampling._prefill(_params(), jnp.asarray(prompts), jnp.asarray(valid), cfg=CFG)
    out = sampling._decode(_params(), prefix, logits_BV, jnp.asarray(valid), jax.random.key(5),
                           jnp.repeat(jnp.arange(B), N), jnp.tile(jnp.arange(N), B), cfg=CFG,
                           settings=settings, n=N, use_window=use_window)
    return jax.tree.map(np.asarray, out)


def _full_forward_logprobs(side, tokens_RT):
    """Token log-probs of (real prompt tokens + samples), packed left, from an uncached forward."""
    prompts, valid = _prompts(side)
    rows = np.zeros((B * N, T + T_NEW), np.int32)
    starts = []
    for r in range(B * N):
        real = prompts[r // N][valid[r // N]]
        rows[r, :len(real) + T_NEW] = np.concatenate([real, tokens_RT[r]])
        starts.append(len(real) - 1)
    valid_RT = np.arange(T + T_NEW)[None] < (np.array(starts) + 1 + T_NEW)[:, None]
    logits, _ = make_model(CFG).apply({"params": _params()}, rows, positions_from_valid(valid_RT),
                                      causal_mask(valid_RT))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    idx = np.array(starts)[:, None] + np.arange(T_NEW)
    pred = np.take_along_axis(logp, idx[..., None], axis=1)
    return np.take_along_axis(pred, tokens_RT[..., None], axis=-1)[..., 0], pred.argmax(-1)


@pytest.mark.parametrize("side", ["left", "right", "inner"])
@pytest.mark.parametrize("greedy", [True, False])
def test_window_decode_equals_full_prompt_and_full_forward(side, greedy):
    kw = dict(greedy=True) if greedy else dict(temperature=0.9, top_k=40)
    new, old = _decode(side, True, **kw), _decode(side, False, **kw)
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_allclose(new[1], old[1], atol=1e-5)
    ref_lp, ref_argmax = _full_forward_logprobs(side, new[0])
    np.testing.assert_allclose(new[1], ref_lp, atol=1e-4)
    if greedy:
        np.testing.assert_array_equal(new[0], ref_argmax)
    assert (new[2] == T_NEW).all()


def test_window_holds_the_last_real_tokens():
    prompts, valid = _prompts("inner")
    logits_BV, prefix = sampling._prefill(_params(), jnp.asarray(prompts), jnp.asarray(valid), cfg=CFG)
    pos = positions_from_valid(valid)
    win = prefix_window(CFG, prefix, jnp.asarray(valid), pos)
    W, K = CFG.sliding_window_size, CFG.num_kv_heads
    assert win.kv.k[0].shape == (B * K, W, CFG.head_dim) and win.kv.k[1] is None  # layer 1 is global
    for b in range(B):
        real_slots = np.flatnonzero(valid[b])[-W:]
        got = np.asarray(win.valid_BW[b])
        assert got.sum() == len(real_slots) and not got[:W - len(real_slots)].any()
        np.testing.assert_array_equal(np.asarray(win.kv.k[0][b * K])[got],
                                      np.asarray(prefix.k[0][b * K])[real_slots])
        np.testing.assert_array_equal(np.asarray(win.positions_BW[b])[got],
                                      np.asarray(pos[b])[real_slots])
    assert prefix_window(CFG, prefix, jnp.asarray(valid[:, :16]), pos[:, :16]) is None  # P <= window


@pytest.mark.parametrize("side", ["left", "right", "inner"])
def test_chunked_prefill_equals_module_prefill(side):
    """`transformer.prefill` (2-D weights, causal query chunks) against the modules' prefill: the same
    next-token logits and the same keys/values on every real slot (padding slots are never read)."""
    prompts, valid = _prompts(side)
    tokens, valid_j = jnp.asarray(prompts), jnp.asarray(valid)
    new = sampling._prefill(_params(), tokens, valid_j, cfg=CFG, fast=True)
    old = sampling._prefill(_params(), tokens, valid_j, cfg=CFG, fast=False)
    chunked = jax.jit(lambda p: transformer.prefill(transformer.decode_weights(p, CFG), CFG, tokens,
                                                    valid_j, chunk=7))(_params())  # 40 = 5 * 7 + 5
    valid_X = np.repeat(valid, CFG.num_kv_heads, axis=0)
    for got in (new, chunked):
        np.testing.assert_allclose(got[0], old[0], atol=1e-4)
        for a, b in zip(got[1].k + got[1].v, old[1].k + old[1].v):
            np.testing.assert_allclose(np.asarray(a)[valid_X], np.asarray(b)[valid_X], atol=1e-4)
