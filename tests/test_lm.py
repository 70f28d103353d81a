import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bon_jax.models.unembed
from bon_jax.models import (
    abstract_params,
    causal_mask,
    get_config,
    init_params,
    make_model,
    next_token_logprobs,
    positions_from_valid,
)
from bon_jax.tokenizer import Tokenizer
from bon_jax.train.lm import sequence_batch, sft_loss, token_logprobs
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step

CORPUS = [f"Problem: {a}+{b}=?\nSolution:\n\\boxed{{{a + b}}}" for a in range(20) for b in range(20)]


def _tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


def test_sequence_batch_layout():
    tok = _tok()
    b = sequence_batch(tok, ["Problem: 1+2=?"], ["\\boxed{3}"], 32)
    p_ids, c_ids = tok.encode("Problem: 1+2=?"), tok.encode("\\boxed{3}")
    row = [tok.bos_id] + p_ids + c_ids + [tok.eos_id]
    np.testing.assert_array_equal(b["tokens_BT"][0, : len(row)], row)
    assert not b["tokens_BT"][0, len(row) :].any()
    target = np.zeros(32, bool)
    target[1 + len(p_ids) : len(row)] = True
    np.testing.assert_array_equal(b["target_BT"][0], target)
    assert not b["truncated_B"][0]
    assert sequence_batch(tok, ["Problem: 1+2=?"], ["\\boxed{3}"], 5)["truncated_B"][0]


def test_token_logprobs_match_float64_log_softmax_of_forward():
    cfg = get_config("tiny", vocab_size=320)
    model, params = make_model(cfg), init_params(cfg, jax.random.key(1))
    tokens = jnp.array([[2, 5, 7, 9, 1, 0, 0], [2, 11, 3, 4, 8, 6, 1]], jnp.int32)
    valid = tokens != 0
    got = jax.jit(lambda p, t, v: token_logprobs(model, p, t, v))(params, tokens, valid)
    forward = jax.jit(model.apply)
    for b in range(2):
        n = int(valid[b].sum())
        pos = jnp.arange(n)[None]
        mask = jnp.tril(jnp.ones((n, n), bool))[None]
        logits, _ = forward({"params": params}, tokens[b : b + 1, :n], pos, mask)
        logits = np.asarray(logits[0], np.float64)
        ref = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        want = [ref[t - 1, int(tokens[b, t])] for t in range(1, n)]
        np.testing.assert_allclose(np.asarray(got[b, 1:n]), want, atol=1e-5)
        assert float(got[b, 0]) == 0.0 and not np.asarray(got[b, n:]).any()


def test_sft_memorises_a_tiny_corpus():
    tok = _tok()
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    model = make_model(cfg)
    opt = adamw(1e-2, 150, warmup=10)
    step = jax.jit(make_update_step(sft_loss(model), opt), donate_argnums=0)
    state = TrainState.create(init_params(cfg, jax.random.key(0)), opt)
    prompts = [c.split("\n")[0] + "\nSolution:\n" for c in CORPUS[:16]]
    comps = [c.split("Solution:\n")[1] for c in CORPUS[:16]]
    batch = {
        k: jnp.asarray(v) for k, v in sequence_batch(tok, prompts, comps, 32).items() if k != "truncated_B"
    }
    losses = []
    for _ in range(150):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.25 * losses[0], losses[::25]


# ----------------------------------------------------------------------------- chunked unembedding


def _full_logits_token_logprobs(model, params, tokens_BT, valid_BT):
    """The pre-chunking computation: every [B, T, V] logit of the forward, log_softmax, the next token's."""
    logits_BTV, _ = model.apply({"params": params}, tokens_BT, positions_from_valid(valid_BT),
                                causal_mask(valid_BT))
    return jnp.where(valid_BT, next_token_logprobs(logits_BTV, tokens_BT), 0.0)


def _tiny_batch(cap):
    """One-layer tiny model with final cap `cap` and a 3x embedding (sharp logits); B = 3 rows of T = 8
    with different lengths, so B * (T - 1) = 21 rows are not a multiple of the chunks used."""
    cfg = get_config("tiny", vocab_size=96, num_layers=1, final_logit_soft_cap=cap)
    params = init_params(cfg, jax.random.key(3))
    params["embedder"]["input_embedding"] = params["embedder"]["input_embedding"] * 3.0
    rng = np.random.default_rng(5)
    valid = np.arange(8) < np.array([[8], [5], [3]])
    tokens = np.where(valid, rng.integers(1, 96, (3, 8)), 0)
    target = valid & (np.arange(8) >= np.array([[2], [1], [1]]))
    batch = {"tokens_BT": jnp.asarray(tokens, jnp.int32), "valid_BT": jnp.asarray(valid),
             "target_BT": jnp.asarray(target)}
    return cfg, params, batch


def _assert_grads_close(g, g_ref, rtol):
    for path, a in jax.tree_util.tree_leaves_with_path(g):
        b = np.asarray(functools.reduce(lambda t, k: t[k.key], path, g_ref), np.float64)
        a = np.asarray(a, np.float64)
        assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b) + 1e-7, jax.tree_util.keystr(path)


def test_sft_loss_values_and_grads_equal_the_full_logits_loss(cap=2.0, chunk=4):
    """`sft_loss` (chunked unembedding) against the same loss from every [B, T, V] logit: the per-token
    log-probs, the loss and its gradient in every parameter (a cap of 2 makes the cap's derivative far
    from 1; chunks of 4 leave a padded last chunk)."""
    cfg, params, batch = _tiny_batch(cap)
    model = make_model(cfg)

    def full_loss(params, batch):
        logp_BT = _full_logits_token_logprobs(model, params, batch["tokens_BT"], batch["valid_BT"])
        target_BT = batch["target_BT"].astype(jnp.float32)
        return -(logp_BT * target_BT).sum() / target_BT.sum()

    with jax.default_matmul_precision("highest"):
        (v, _), g = jax.jit(jax.value_and_grad(sft_loss(model, chunk=chunk), has_aux=True))(params, batch)
        v_ref, g_ref = jax.jit(jax.value_and_grad(full_loss))(params, batch)
        lp = jax.jit(functools.partial(token_logprobs, model, chunk=chunk))(
            params, batch["tokens_BT"], batch["valid_BT"])
        lp_ref = jax.jit(functools.partial(_full_logits_token_logprobs, model))(
            params, batch["tokens_BT"], batch["valid_BT"])
    assert float(jnp.abs(lp_ref).max()) > 1.0
    np.testing.assert_allclose(lp, lp_ref, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(lp)[~np.asarray(batch["valid_BT"])], 0.0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    _assert_grads_close(g, g_ref, 1e-4)


def test_verifier_surprisal_values_and_grads_equal_the_full_logits_surprisal():
    """`ScalarHeadTransformer.values_and_surprisal` (chunked unembedding) against -log_softmax of every
    [B, T, V] logit of the same backbone: surprisal and the gradient of a weighted sum of it."""
    cfg, params, batch = _tiny_batch(2.0)
    verifier = make_model(cfg, scalar_head=True)
    vparams = {**params, "value_head": {"kernel": jnp.ones((cfg.embed_dim, 1)) * 0.1, "bias": jnp.zeros((1,))}}
    tokens, valid = batch["tokens_BT"], batch["valid_BT"]
    inputs = (tokens, positions_from_valid(valid), causal_mask(valid))
    weights = jnp.asarray(np.random.default_rng(6).normal(size=tokens.shape), jnp.float32)

    def chunked(p):
        values, surprisal = verifier.apply({"params": p}, *inputs, method="values_and_surprisal")
        return (surprisal * weights).sum(), (values, surprisal)

    def full(p):
        surprisal = -next_token_logprobs(verifier.apply({"params": p}, verifier.apply(
            {"params": p}, *inputs, method="hidden_states")[0], method="logits"), tokens)
        return (surprisal * weights).sum(), surprisal

    with jax.default_matmul_precision("highest"):
        (v, (values, s)), g = jax.jit(jax.value_and_grad(chunked, has_aux=True))(vparams)
        (v_ref, s_ref), g_ref = jax.jit(jax.value_and_grad(full, has_aux=True))(vparams)
    np.testing.assert_allclose(values, jax.jit(verifier.apply)({"params": vparams}, *inputs)[0], atol=1e-6)
    assert float(s_ref.max()) > 1.0
    np.testing.assert_allclose(s, s_ref, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(s)[:, 0], 0.0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    g_ref["value_head"] = g["value_head"]  # the weighted surprisal does not depend on the head
    _assert_grads_close(g, g_ref, 1e-4)


@pytest.mark.parametrize("what", ["sft_loss", "verifier_surprisal"])
def test_compiled_memory_does_not_grow_with_vocab_times_rows(monkeypatch, what):
    """Doubling V: the jitted SFT loss / the verifier's summed surprisal and their gradients grow their
    temporaries by far less than the [R, V] float32 logits of the R = 8 * 64 predicting positions would
    (the old code held those, several times over). The default chunk (`CHUNK_ELEMENTS // V` rows) is made
    16 rows at V = 2048."""
    monkeypatch.setattr(bon_jax.models.unembed, "CHUNK_ELEMENTS", 16 * 2048)
    b, t = 8, 65

    def temps(vocab_size):
        cfg = get_config("tiny", vocab_size=vocab_size, num_layers=1)
        tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
        valid = jax.ShapeDtypeStruct((b, t), jnp.bool_)
        if what == "sft_loss":
            loss = sft_loss(make_model(cfg))
            params = abstract_params(cfg)
            f = lambda p, x, v: loss(p, {"tokens_BT": x, "valid_BT": v, "target_BT": v})[0]
        else:
            verifier = make_model(cfg, scalar_head=True)
            params = abstract_params(cfg, scalar_head=True)
            f = lambda p, x, v: verifier.apply({"params": p}, x, positions_from_valid(v), causal_mask(v),
                                               method="values_and_surprisal")[1].sum()
        return tuple(jax.jit(fn).lower(params, tokens, valid).compile().memory_analysis().temp_size_in_bytes
                     for fn in (f, jax.grad(f)))

    v = 2048
    full_logits_growth = b * (t - 1) * v * 4  # [R, 2V] - [R, V] float32
    (fwd_v, bwd_v), (fwd_2v, bwd_2v) = temps(v), temps(2 * v)
    assert fwd_2v - fwd_v < 0.1 * full_logits_growth, (fwd_v, fwd_2v, full_logits_growth)
    # The backward also accumulates grad E [V, D] (D = 32): 64 times smaller than the logits here.
    assert bwd_2v - bwd_v < 0.2 * full_logits_growth, (bwd_v, bwd_2v, full_logits_growth)
