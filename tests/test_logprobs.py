"""Chunked teacher-forced log-probs (`bon_jax.logprobs`): values and gradients against the full-logits
path, compiled memory that does not grow with V times the rows, and no reference pass when the evaluated
policy is the reference."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.logprobs import sequence_logprobs, taken_logprobs
from bon_jax.models import (
    abstract_params,
    causal_mask,
    get_config,
    init_params,
    make_model,
    positions_from_valid,
)
from bon_jax.models.masks import take_last_valid, valid_from_lengths


def _full_taken_logprobs(h_RD, e_VD, tokens_R, temperature, cap):
    """The unchunked reference: every [R, V] logit, log_softmax, the taken one (float64 under x64)."""
    z_RV = h_RD @ e_VD.T
    l_RV = z_RV if cap is None else cap * jnp.tanh(z_RV / cap)
    return jnp.take_along_axis(jax.nn.log_softmax(l_RV / temperature, -1), tokens_R[:, None], -1)[:, 0]


@pytest.mark.parametrize("temperature, cap, chunk", [
    (1.0, None, None), (0.7, 30.0, 5), (1.3, 2.0, 1), (0.7, None, 64)])
def test_taken_logprobs_values_and_grads_equal_full_logits_in_float64(temperature, cap, chunk):
    """R = 23 rows: chunks of 5 leave a padded last chunk, 1 is one row per step, 64 is more than R. A
    cap of 2 makes the soft-cap's derivative far from 1. Reference: float64 full logits and autodiff."""
    rng = np.random.default_rng(0)
    R, D, V = 23, 16, 97
    h = rng.normal(size=(R, D)) * 1.5
    e = rng.normal(size=(V, D)) * D**-0.5 * 2.0
    tokens = rng.integers(0, V, R)
    weights = rng.normal(size=R)
    weights[3] = 0.0

    def total(fn, h, e):
        lp = fn(h, e, jnp.asarray(tokens))
        return (lp * weights.astype(lp.dtype)).sum(), lp

    chunked = functools.partial(taken_logprobs, temperature=temperature, final_logit_soft_cap=cap,
                                chunk=chunk)
    (v, lp), (gh, ge) = jax.jit(jax.value_and_grad(functools.partial(total, chunked), (0, 1),
                                                   has_aux=True))(
        jnp.asarray(h, jnp.float32), jnp.asarray(e, jnp.float32))
    with jax.enable_x64(True):
        full = functools.partial(_full_taken_logprobs, temperature=temperature, cap=cap)
        (v64, lp64), (gh64, ge64) = jax.value_and_grad(functools.partial(total, full), (0, 1),
                                                       has_aux=True)(jnp.asarray(h), jnp.asarray(e))
        assert lp64.dtype == jnp.float64
    assert lp.dtype == jnp.float32 and lp.shape == (R,)
    np.testing.assert_allclose(lp, lp64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v, v64, rtol=1e-5, atol=1e-5)
    for g, g64 in ((gh, gh64), (ge, ge64)):
        assert g.dtype == jnp.float32
        g, g64 = np.asarray(g, np.float64), np.asarray(g64)
        assert np.linalg.norm(g - g64) <= 1e-5 * np.linalg.norm(g64)
    np.testing.assert_array_equal(gh[3], 0.0)  # zero cotangent: no gradient


def test_taken_logprobs_refuses_bad_shapes_and_settings():
    h, e, t = jnp.zeros((4, 8)), jnp.zeros((10, 8)), jnp.zeros((4,), jnp.int32)
    with pytest.raises(ValueError, match="embedding"):
        taken_logprobs(h, jnp.zeros((10, 7)), t)
    with pytest.raises(ValueError, match="tokens"):
        taken_logprobs(h, e, jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="temperature"):
        taken_logprobs(h, e, t, temperature=0.0)
    with pytest.raises(ValueError, match="chunk"):
        taken_logprobs(h, e, t, chunk=0)


# ----------------------------------------------------------------------------- sequence_logprobs

B, N, T, TC = 2, 3, 5, 7
PLEN = np.array([3, 5])


@functools.cache
def _setup(cap, vocab_size=128):
    """The tiny Gemma-2-style model cut to one (local, window 4) layer with final cap `cap`, its embedding
    scaled by 3 (sharper logits); left-padded prompts, completions with some lengths short of T_c."""
    cfg = get_config("tiny", final_logit_soft_cap=cap, vocab_size=vocab_size, sliding_window_size=4, num_layers=1)
    params = init_params(cfg, jax.random.key(1))
    params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] * 3.0
    rng = np.random.default_rng(2)
    valid_BT = np.asarray(valid_from_lengths(PLEN, T, "left"))
    prompts_BT = np.where(valid_BT, rng.integers(1, vocab_size, (B, T)), 0)
    lengths_BM = rng.integers(1, TC + 1, (B, N))
    lengths_BM[0, 0] = TC
    completions_BMT = np.where(np.arange(TC) < lengths_BM[..., None], rng.integers(1, vocab_size, (B, N, TC)), 0)
    return cfg, params, jnp.asarray(prompts_BT), jnp.asarray(completions_BMT), jnp.asarray(lengths_BM)


def _reference_sequence_logprobs(params, cfg, prompts_BT, completions_BMT, lengths_BM, temperature):
    """The pre-chunking computation: B * N full (prompt, completion) rows through `Transformer.__call__`
    (every [R, T + T_c, V] logit), log_softmax at the temperature, the next real token's entry."""
    pvalid_RT = jnp.repeat(valid_from_lengths(jnp.asarray(PLEN), T, "left"), N, axis=0)
    cvalid_RT = jnp.arange(TC) < jnp.asarray(lengths_BM).reshape(-1, 1)
    tokens = jnp.concatenate([jnp.repeat(prompts_BT, N, 0), completions_BMT.reshape(B * N, TC)], 1)
    valid = jnp.concatenate([pvalid_RT, cvalid_RT], 1)
    logits_RSV, _ = make_model(cfg).apply({"params": params}, tokens, positions_from_valid(valid),
                                          causal_mask(valid))
    logp_RSV = jax.nn.log_softmax(logits_RSV / temperature, -1)
    prev_RTV = jnp.concatenate([take_last_valid(logp_RSV[:, :T], pvalid_RT)[:, None],
                                logp_RSV[:, T:T + TC - 1]], 1)
    lp_RT = jnp.take_along_axis(prev_RTV, completions_BMT.reshape(B * N, TC, 1), -1)[..., 0]
    return jnp.where(cvalid_RT, lp_RT, 0.0).reshape(B, N, TC)


@pytest.mark.parametrize("cap, temperature, share_prompt, chunk", [(2.0, 0.7, True, 4), (None, 1.3, False, 3)])
def test_sequence_logprobs_values_and_grads_equal_the_full_logits_forward(cap, temperature, share_prompt,
                                                                           chunk):
    """Chunked unembedding (chunks of 4 and 3 rows do not divide B * N * T_c = 42; a final cap of 2 makes
    the cap's derivative far from 1) against every logit of an uncached full forward: values, and
    gradients of a weighted sum in every parameter."""
    cfg, params, prompts, completions, lengths = _setup(cap)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(B, N, TC)), jnp.float32)

    @functools.partial(jax.value_and_grad, has_aux=True)
    def chunked(params):
        lp = sequence_logprobs(params, cfg, prompts, completions, completion_lengths_BM=lengths,
                               prompt_lengths_B=PLEN, padding_side="left", temperature=temperature,
                               share_prompt=share_prompt, chunk=chunk)
        return (lp * weights).sum(), lp

    @functools.partial(jax.value_and_grad, has_aux=True)
    def full(params):
        lp = _reference_sequence_logprobs(params, cfg, prompts, completions, lengths, temperature)
        return (lp * weights).sum(), lp

    (v, lp), g = jax.jit(chunked)(params)
    (v_ref, lp_ref), g_ref = jax.jit(full)(params)
    assert float(jnp.abs(lp_ref).max()) > 1.0  # not a flat distribution
    np.testing.assert_allclose(lp, lp_ref, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(lp)[np.arange(TC) >= np.asarray(lengths)[..., None]], 0.0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    for path, a in jax.tree_util.tree_leaves_with_path(g):
        b = np.asarray(functools.reduce(lambda t, k: t[k.key], path, g_ref), np.float64)
        a = np.asarray(a, np.float64)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-7, jax.tree_util.keystr(path)


def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_compiled_memory_does_not_grow_with_vocab_times_rows():
    """Doubling V at a fixed chunk of 16 rows: the jitted log-probs (forward, and forward + backward in
    every param) grow their temporaries by far less than the [R, V] float32 logits of the R = 8 * 64 =
    512 predicting positions would (the old implementation held those, several times over)."""
    b, n, t, tc, chunk = 2, 4, 4, 64, 16

    def temps(vocab_size):
        cfg = get_config("tiny", vocab_size=vocab_size, num_layers=1)
        params = abstract_params(cfg)
        prompts = jax.ShapeDtypeStruct((b, t), jnp.int32)
        completions = jax.ShapeDtypeStruct((b, n, tc), jnp.int32)
        lp = lambda p, x, y: sequence_logprobs(p, cfg, x, y, chunk=chunk).sum()
        return (_temp_bytes(lp, params, prompts, completions),
                _temp_bytes(jax.grad(lp), params, prompts, completions))

    v = 2048
    full_logits_growth = b * n * tc * v * 4  # [R, 2V] - [R, V] float32
    (fwd_v, bwd_v), (fwd_2v, bwd_2v) = temps(v), temps(2 * v)
    assert fwd_2v - fwd_v < 0.1 * full_logits_growth, (fwd_v, fwd_2v, full_logits_growth)
    # The backward also accumulates grad E [V, D] (D = 32): 64 times smaller than the logits here.
    assert bwd_2v - bwd_v < 0.2 * full_logits_growth, (bwd_v, bwd_2v, full_logits_growth)


# ----------------------------------------------------------------------------- evaluation's reference pass


def test_evaluation_of_the_reference_policy_skips_the_reference_pass(monkeypatch):
    """The base policy (params is ref_params) is its own reference: KL 0 without a teacher-forced pass,
    which for Gemma 3's vocabulary was the pass that ran out of memory. A tuned policy still gets one."""
    from bon_jax.pipeline import evaluate
    from bon_jax.pipeline.rollouts import GradedSamples
    from bon_jax.tasks.base import Example

    calls = []
    m, t_new = 4, 3

    def fake_seq_logp(model_cfg, temperature, per_token=False):
        def seq_logp(ref_params, prompts_BT, plen_B, tokens_BMT, lengths_BM):
            calls.append(ref_params)
            logp_BMT = np.full(tokens_BMT.shape, -2.0 / t_new, np.float32)
            return logp_BMT if per_token else logp_BMT.sum(-1)
        return seq_logp

    def fake_draw(params, model_cfg, tokenizer, task, scorer, chunk, prompts_BT, *args, **kwargs):
        b = len(chunk)
        rewards = np.tile(np.array([1.0, 0.0, 0.0, 1.0], np.float32), (b, 1))
        fields = dict(
            prompt_tokens_BT=prompts_BT, prompt_lengths_B=np.full(b, 2), tokens_BMT=np.ones((b, m, t_new), np.int32),
            lengths_BM=np.full((b, m), t_new), logp_BM=np.full((b, m), -1.0, np.float32),
            token_logp_BMT=np.full((b, m, t_new), -1.0 / t_new, np.float32),
            texts_BM=[["x"] * m for _ in range(b)], rewards_BM=rewards,
            answers_BM=np.array([[None] * m] * b, dtype=object), scores_BM=rewards,
            finished_BM=np.ones((b, m), bool))
        return GradedSamples(**{f.name: fields[f.name] for f in dataclasses.fields(GradedSamples)})

    class Tok:
        def encode_batch(self, texts, **kwargs):
            return np.ones((len(texts), 2), np.int32), np.full(len(texts), 2)

    monkeypatch.setattr(evaluate, "make_sequence_logp", fake_seq_logp)
    monkeypatch.setattr(evaluate, "draw_graded", fake_draw)
    class Task:
        def same_answer(self, a, b):
            return a == b

    examples = [Example(id=str(i), prompt=f"p{i}", answer="a") for i in range(3)]
    run = lambda params, ref: evaluate.evaluate_policy(
        params, None, ref, Tok(), Task(), None, examples, 0, m=m, ks=(1, 2), max_new_tokens=t_new,
        temperature=1.0, max_prompt_len=8, prompts_per_call=2, bootstrap=10)
    base = {"w": np.zeros(2)}
    kls = {k: v["mean"] for k, v in run(base, base).items() if k.startswith("kl")}
    assert kls and all(v == 0.0 for v in kls.values()), kls
    assert calls == []
    tuned = {"w": np.ones(2)}
    assert run(tuned, base)["kl"]["mean"] == pytest.approx(1.0)  # -1 - (-2) per sample
    assert len(calls) == 2 and all(c is base for c in calls)  # 3 prompts, 2 per call
