"""Best-of-N sampler: log-probs against a full forward pass, prefill-once + tile against repeated prompts,
greedy / top-k / top-p, stop tokens, RNG layout independence, compile caching, sequence_logprobs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import sampling
from bon_jax.errors import ConfigError
from bon_jax.models import (
    abstract_params,
    causal_mask,
    get_config,
    make_model,
    positions_from_valid,
    valid_from_lengths,
)
from bon_jax.sampling import SamplingSettings, sample, sample_step, sequence_logprobs

# Tiny Gemma-2-style model (local/global layers, soft-caps) with a window shorter than prompt + output.
CFG = get_config("tiny", sliding_window_size=4)
B, M, T, T_NEW = 3, 4, 6, 8
LENGTHS = np.array([2, 6, 4])
EOS = 1
STOPS = tuple(range(2, 20))  # ~15% of the vocabulary: some rows stop early, some run to T_NEW
SETTINGS = dict(max_new_tokens=T_NEW, temperature=0.8, top_k=50, top_p=0.95, eos_id=EOS,
                stop_ids=STOPS)


@functools.cache
def _params():
    rng = np.random.default_rng(0)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        std = 0.3 if "scale" in name else (CFG.embed_dim**-0.5 if "embedding" in name else 0.3)
        return jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(CFG))


def _prompts(side, seed=0):
    valid_BT = np.asarray(valid_from_lengths(LENGTHS, T, side))
    return np.where(valid_BT, np.random.default_rng(seed).integers(20, CFG.vocab_size, (B, T)), 0)


@functools.cache
def _sample(side, rng_seed=0, **overrides):
    """Cached: several tests look at the same draw."""
    kwargs = {**SETTINGS, **overrides}
    out = sample(_params(), CFG, _prompts(side), M, jax.random.key(rng_seed), **kwargs)
    return jax.tree.map(np.asarray, out)


@jax.jit
def _reference_logprobs(params, tokens_RT, valid_RT):
    """log softmax of an uncached forward over right-padded rows (all log-probs, [R, T, V])."""
    logits, _ = make_model(CFG).apply({"params": params}, tokens_RT, positions_from_valid(valid_RT),
                                      causal_mask(valid_RT))
    return jax.nn.log_softmax(logits, axis=-1)


def _reference_token_logprobs(out, side):
    """For every sample: real prompt tokens then its generated tokens, packed to the left of one row,
    scored by a full forward. Returns (token logprobs [B, M, T_NEW], argmax tokens [B, M, T_NEW])."""
    prompts = _prompts(side)
    rows, lp_idx = np.zeros((B * M, T + T_NEW), np.int32), []
    for b in range(B):
        real = prompts[b][prompts[b] != 0]
        for i in range(M):
            n_gen = out.lengths_BM[b, i]
            seq = np.concatenate([real, out.tokens_BMT[b, i, :n_gen]])
            rows[b * M + i, :len(seq)] = seq
            lp_idx.append(len(real) - 1 + np.arange(T_NEW))
    valid = np.arange(T + T_NEW)[None] < np.array(
        [len(prompts[b][prompts[b] != 0]) + out.lengths_BM[b, i] for b in range(B) for i in range(M)]
    )[:, None]
    logprobs_RTV = np.asarray(_reference_logprobs(_params(), rows, valid))
    idx_RT = np.minimum(np.stack(lp_idx), T + T_NEW - 1)
    pred_RTV = np.take_along_axis(logprobs_RTV, idx_RT[..., None], axis=1)
    tok_lp = np.take_along_axis(pred_RTV, out.tokens_BMT.reshape(B * M, T_NEW, 1), axis=-1)[..., 0]
    return tok_lp.reshape(B, M, T_NEW), pred_RTV.argmax(-1).reshape(B, M, T_NEW)


def _assert_stops_and_padding(out):
    stops = set(STOPS) | {EOS}
    for b in range(B):
        for i in range(M):
            toks, n_gen = out.tokens_BMT[b, i], out.lengths_BM[b, i]
            assert 1 <= n_gen <= T_NEW
            assert not stops & set(toks[:n_gen - 1].tolist()), "generation went on past a stop"
            assert toks[n_gen - 1] in stops or n_gen == T_NEW
            assert (toks[n_gen:] == 0).all() and (out.logprobs_BMT[b, i, n_gen:] == 0).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_logprobs_equal_full_forward_and_rows_stop(side):
    out = _sample(side)
    assert out.tokens_BMT.shape == out.logprobs_BMT.shape == (B, M, T_NEW)
    assert out.lengths_BM.shape == (B, M) and out.logprobs_BMT.dtype == np.float32
    _assert_stops_and_padding(out)
    assert (out.lengths_BM < T_NEW).any() and (out.lengths_BM == T_NEW).any()
    ref, _ = _reference_token_logprobs(out, side)
    valid = np.arange(T_NEW) < out.lengths_BM[..., None]
    np.testing.assert_allclose(out.logprobs_BMT[valid], ref[valid], atol=1e-4)
    assert (out.logprobs_BMT[valid] < 0).all()


def test_sequence_logprobs_match_sampler_and_are_differentiable():
    out = _sample("right")
    prompts = _prompts("right")
    weights = np.random.default_rng(3).uniform(0.5, 1.5, (B, M, T_NEW)).astype(np.float32)

    @jax.jit
    @functools.partial(jax.value_and_grad, has_aux=True)
    def weighted_total(params):
        lp = sequence_logprobs(params, CFG, prompts, out.tokens_BMT,
                               completion_lengths_BM=out.lengths_BM)
        return (lp * weights).sum(), lp

    params = _params()
    (_, lp), grads = weighted_total(params)
    np.testing.assert_allclose(lp, out.logprobs_BMT, atol=1e-4)

    # The directional derivative along the gradient is its norm: compare with central differences.
    grad_norm = float(jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads))))
    assert np.isfinite(grad_norm) and grad_norm > 0
    eps = 1e-2
    shifted = lambda s: jax.tree.map(lambda p, g: p + s * g / grad_norm, params, grads)
    finite_diff = (weighted_total(shifted(eps))[0][0] - weighted_total(shifted(-eps))[0][0]) / (2 * eps)
    np.testing.assert_allclose(float(finite_diff), grad_norm, rtol=2e-2)


@pytest.mark.parametrize("side, lengths_given", [("left", True), ("right", False)])
def test_shared_prompt_logprobs_and_grads_equal_the_full_forward(side, lengths_given):
    """The prompt once per prompt + tiled cache (default) against B * M full (prompt, completion) rows,
    with a window shorter than prompt + completion; without lengths, real tokens are those != pad, and
    one row has a pad inside its completion (a masked slot the positions skip)."""
    out = _sample(side)
    tokens = out.tokens_BMT.copy()
    if not lengths_given:
        tokens[0, 0, 1] = 0
    kwargs = dict(completion_lengths_BM=out.lengths_BM if lengths_given else None,
                  prompt_lengths_B=LENGTHS, padding_side=side, temperature=0.7)
    weights = np.random.default_rng(5).normal(size=tokens.shape).astype(np.float32)
    prompts = _prompts(side)

    @functools.partial(jax.jit, static_argnums=1)
    @functools.partial(jax.value_and_grad, has_aux=True)
    def weighted_total(params, share):
        lp = sequence_logprobs(params, CFG, prompts, tokens, share_prompt=share, **kwargs)
        return (lp * weights).sum(), lp

    (v_shared, lp_shared), g_shared = weighted_total(_params(), True)
    (v_full, lp_full), g_full = weighted_total(_params(), False)
    np.testing.assert_allclose(lp_shared, lp_full, atol=1e-5)
    np.testing.assert_allclose(v_shared, v_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_full)):  # float32 summation order
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b) + 1e-7


def test_prompt_cache_is_shared_by_the_samples():
    prompts = jnp.asarray(_prompts("right"))
    settings = SamplingSettings(max_new_tokens=T_NEW, temperature=0.8, top_k=50, top_p=0.95,
                                stop_ids=tuple(sorted({EOS, *STOPS})))
    logits_BV, prefix = sampling._prefill(_params(), prompts, prompts != 0, cfg=CFG)
    # One copy of each prompt's keys/values, whatever M: [B * K, T, H].
    assert prefix.k[0].shape == (B * CFG.num_kv_heads, T, CFG.head_dim)
    assert logits_BV.shape == (B, CFG.vocab_size)
    tokens_RT, _, lengths_R = sampling._decode(
        _params(), prefix, logits_BV, prompts != 0, jax.random.key(0), jnp.repeat(jnp.arange(B), M),
        jnp.tile(jnp.arange(M), B), cfg=CFG, settings=settings, n=M)
    assert tokens_RT.shape == (B * M, T_NEW) and lengths_R.shape == (B * M,)


def test_prefill_once_then_tile_equals_repeated_prompts():
    tiled = _sample("right")
    repeated = _sample("right", prefill_once=False)
    np.testing.assert_array_equal(tiled.tokens_BMT, repeated.tokens_BMT)
    np.testing.assert_array_equal(tiled.lengths_BM, repeated.lengths_BM)
    np.testing.assert_allclose(tiled.logprobs_BMT, repeated.logprobs_BMT, atol=1e-5)


def test_samples_differ_and_do_not_depend_on_batch_layout():
    out = _sample("right")
    for b in range(B):
        assert len({tuple(out.tokens_BMT[b, i]) for i in range(M)}) > 1, f"prompt {b}"
    assert (_sample("right", rng_seed=1).tokens_BMT != out.tokens_BMT).any()
    # Prompt 0 moved to the last row, between new neighbours, keeping its id 0.
    other = _prompts("right", seed=5)
    moved = np.stack([other[0], other[1], _prompts("right")[0]])
    moved_out = sample(_params(), CFG, moved, M, jax.random.key(0), prompt_ids_B=[7, 8, 0],
                       **SETTINGS)
    np.testing.assert_array_equal(moved_out.tokens_BMT[2], out.tokens_BMT[0])
    np.testing.assert_allclose(moved_out.logprobs_BMT[2], out.logprobs_BMT[0], atol=1e-5)
    assert (moved_out.tokens_BMT[:2] != out.tokens_BMT[:2]).any()


def test_a_batch_drawn_in_chunks_draws_what_the_whole_batch_does():
    """Dynamic sampling draws its extra rounds a chunk of prompts at a time (pipeline/dynamic_sampling.py):
    that changes no sample only if a prompt's samples do not depend on how many prompts share its call."""
    prompts = _prompts("left")
    ids = np.array([11, 12, 13])
    lengths = np.asarray(LENGTHS)
    draw = lambda rows: sample(_params(), CFG, prompts[rows], M, jax.random.key(3), prompt_ids_B=ids[rows],
                               prompt_lengths_B=lengths[rows], padding_side="left", **SETTINGS)
    whole = draw(slice(0, 3))
    for rows in (slice(0, 1), slice(1, 3)):
        part = draw(rows)
        np.testing.assert_array_equal(part.tokens_BMT, whole.tokens_BMT[rows])
        np.testing.assert_array_equal(part.lengths_BM, whole.lengths_BM[rows])
        np.testing.assert_allclose(part.logprobs_BMT, whole.logprobs_BMT[rows], atol=1e-5)


def test_second_call_with_same_shapes_does_not_recompile():
    _sample("right")
    before = dict(sampling.TRACE_COUNTS)
    again = sample(_params(), CFG, _prompts("left", seed=9), M, jax.random.key(42), **SETTINGS)
    jax.block_until_ready(again.tokens_BMT)
    assert dict(sampling.TRACE_COUNTS) == before
    assert before["prefill"] >= 1 and before["decode"] >= 1


def test_top_k_one_equals_greedy_and_greedy_is_argmax():
    greedy = _sample("right", greedy=True, temperature=1.0, top_k=None, top_p=None)
    top1 = _sample("right", top_k=1, top_p=None)
    np.testing.assert_array_equal(top1.tokens_BMT, greedy.tokens_BMT)
    np.testing.assert_allclose(top1.logprobs_BMT, greedy.logprobs_BMT, atol=1e-6)
    assert (greedy.tokens_BMT == greedy.tokens_BMT[:, :1]).all()  # all M samples agree
    _assert_stops_and_padding(greedy)
    _, argmax = _reference_token_logprobs(greedy, "right")
    valid = np.arange(T_NEW) < greedy.lengths_BM[..., None]
    np.testing.assert_array_equal(greedy.tokens_BMT[valid], argmax[valid])


# ----------------------------------------------------------------------------- one step, exactly


@functools.partial(jax.jit, static_argnames="kwargs")
def _many_draws(logits_V, kwargs):
    """20k draws from one row of logits: tokens, 'sampling' log-probs and 'policy' log-probs."""
    # Any key implementation works; rbg compiles much faster than threefry on CPU.
    keys = jax.random.split(jax.random.key(0, impl="rbg"), 20_000)
    logits_RV = jnp.broadcast_to(logits_V, (20_000, logits_V.shape[0]))
    settings = dict(kwargs, max_new_tokens=1)
    tokens, sampling_lp = sample_step(logits_RV, keys, SamplingSettings(**settings,
                                                                        logprobs="sampling"))
    same_tokens, policy_lp = sample_step(logits_RV, keys, SamplingSettings(**settings))
    return tokens, sampling_lp, same_tokens, policy_lp


@pytest.mark.parametrize("kwargs, expected", [
    (dict(), [0.5, 0.3, 0.15, 0.05]),
    (dict(top_k=2), [0.625, 0.375, 0, 0]),
    (dict(top_p=0.7), [0.625, 0.375, 0, 0]),  # mass before token 1 is 0.5 < 0.7; before 2: 0.8
    (dict(top_k=3, top_p=0.85), [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (dict(temperature=0.5), np.array([0.25, 0.09, 0.0225, 0.0025]) / 0.365),
])
def test_sampling_distribution(kwargs, expected):
    """Empirical frequencies of 20k draws match the filtered, renormalised distribution (5 standard
    errors), and 'sampling' log-probs are its log; 'policy' log-probs stay at temperature 1."""
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.asarray(np.log(probs), jnp.float32)
    expected = np.asarray(expected)
    tokens, sampling_lp, same_tokens, policy_lp = (
        np.asarray(x) for x in _many_draws(logits, tuple(sorted(kwargs.items()))))
    freq = np.bincount(tokens, minlength=4) / len(tokens)
    se = np.sqrt(expected * (1 - expected) / len(tokens))
    assert (np.abs(freq - expected) <= 5 * se + 1e-12).all(), (freq, expected)
    np.testing.assert_allclose(sampling_lp, np.log(expected[tokens]), atol=1e-5)
    np.testing.assert_array_equal(same_tokens, tokens)
    np.testing.assert_allclose(policy_lp, np.log(probs[tokens]), atol=1e-5)


@pytest.mark.parametrize("bad", [dict(top_k=0), dict(top_p=0.0), dict(temperature=-1.0),
                                 dict(logprobs="other"), dict(max_new_tokens=0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        sample(_params(), CFG, _prompts("right"), M, jax.random.key(0),
               **{**SETTINGS, **bad})


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="real"):
        sample(_params(), CFG, np.zeros((1, 4), np.int32), 2, jax.random.key(0), max_new_tokens=2)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_nucleus_threshold_keeps_the_smallest_sorted_prefix(top_p):
    """Bisection cut-off == the sorted-prefix definition (float64 numpy reference), row by row."""
    logits = np.random.default_rng(7).normal(0, 3, (64, 1000)).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    keep = np.asarray(probs >= np.asarray(sampling.nucleus_threshold(jnp.asarray(probs), top_p)))
    order = np.argsort(-probs, axis=-1)
    p_sorted = np.take_along_axis(probs.astype(np.float64), order, -1)
    keep_sorted = np.cumsum(p_sorted, -1) - p_sorted < top_p
    ref = np.zeros_like(keep)
    np.put_along_axis(ref, order, keep_sorted, -1)
    np.testing.assert_array_equal(keep, ref)
