"""Verifiers: calibration metrics vs brute force, sampler-output packing, the learned verifier's token path vs
unpadded full forwards, a tiny arith verifier that beats chance on held-out problems, oracle and sentiment."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.models import (
    abstract_params,
    causal_mask,
    get_config,
    init_params,
    make_model,
    positions_from_valid,
)
from bon_jax.tasks.arith import ArithTask, check_steps
from bon_jax.tasks.arith import corrupt_solution as corrupt
from bon_jax.tasks.base import Example
from bon_jax.tasks.sentiment import SentimentScorer
from bon_jax.tokenizer import Tokenizer
from bon_jax.train.checkpoint import CheckpointMismatchError
from bon_jax.train.lm import sequence_batch
from bon_jax.verifiers import (
    HAZARD_OFFSET,
    LearnedVerifier,
    OracleVerifier,
    Samples,
    SentimentVerifier,
    Verifier,
    auc,
    bce_loss,
    binary_metrics,
    class_weights,
    encode_pairs,
    expected_calibration_error,
    init_verifier_params,
    load_verifier,
    noisy_or_logit,
    pack_prompt_completion,
    pairwise_accuracy,
    ranking_loss,
    save_verifier,
    score_completion_tokens,
    score_tokens,
    sequence_logits,
    train_verifier,
)

# --------------------------------------------------------------------------------------------------
# Calibration metrics.


def brute_force_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pair_counting_with_ties(seed):
    r = np.random.default_rng(seed)
    y = r.integers(0, 2, 60)
    s = r.integers(0, 5, 60).astype(np.float32)  # 5 levels: many ties within and across classes
    s[y == 1] += r.integers(0, 2, (y == 1).sum())  # and a real signal
    assert auc(s, y) == pytest.approx(brute_force_auc(s, y), abs=1e-12)
    assert auc(-s, y) == pytest.approx(1.0 - brute_force_auc(s, y), abs=1e-12)


def test_auc_edge_cases():
    y = np.array([0, 1, 0, 1])
    assert auc([3.0, 3.0, 3.0, 3.0], y) == 0.5
    assert auc([0.0, 1.0, 0.5, 2.0], y) == 1.0
    assert auc([1.0, 0.0, 2.0, 0.5], y) == 0.0
    assert np.isnan(auc([1.0, 2.0], [1, 1]))
    with pytest.raises(ValueError, match="labels"):
        auc([1.0, 2.0], [0, 2])
    with pytest.raises(ValueError, match="finite"):
        auc([np.nan, 2.0], [0, 1])


def brute_force_ece(p, y, num_bins):
    total = 0.0
    for k in range(num_bins):
        lo, hi = k / num_bins, (k + 1) / num_bins
        in_bin = (p >= lo) & ((p < hi) | ((k == num_bins - 1) & (p <= hi)))
        if in_bin.any():
            total += in_bin.sum() / len(p) * abs(y[in_bin].mean() - p[in_bin].mean())
    return total


def test_ece_matches_definition_and_bin_edges():
    r = np.random.default_rng(0)
    p = r.uniform(size=500)
    y = (r.uniform(size=500) < p**2).astype(int)  # miscalibrated: P(y=1 | p) = p^2
    assert expected_calibration_error(p, y, 10) == pytest.approx(brute_force_ece(p, y, 10), abs=1e-12)
    assert expected_calibration_error(p, y, 10) > 0.1
    # Dyadic edges are exact: 0.25 opens bin 1, 1.0 closes the last bin.
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    y = np.array([0, 1, 1, 0, 1, 1])
    assert expected_calibration_error(p, y, 4) == pytest.approx(brute_force_ece(p, y, 4), abs=1e-12)
    # Overconfident by exactly 0.4.
    assert expected_calibration_error(np.full(10, 0.9), np.arange(10) % 2, 10) == pytest.approx(0.4)


def test_ece_of_a_calibrated_set_is_near_zero():
    r = np.random.default_rng(1)
    n = 200_000
    p = r.uniform(size=n)
    y = r.uniform(size=n) < p
    # Each of the 10 bins has ~20k points: |gap| has sd ~ 0.0035, so ECE ~ 0.003; 0.01 is ~4 sd.
    assert expected_calibration_error(p, y, 10) < 0.01


def test_binary_metrics_from_logits():
    z = np.array([-2.0, -0.5, 0.5, 3.0])
    y = np.array([0, 1, 0, 1])
    m = binary_metrics(z, y, num_bins=10)
    prob = 1 / (1 + np.exp(-z))
    assert m["accuracy"] == 0.5 and m["positive_rate"] == 0.5 and m["count"] == 4
    assert m["auc"] == pytest.approx(0.75)
    assert m["bce"] == pytest.approx(np.mean(-(y * np.log(prob) + (1 - y) * np.log(1 - prob))), rel=1e-12)
    assert m["ece"] == pytest.approx(brute_force_ece(prob, y, 10), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Packing and the learned verifier's token path.


def test_packing_equals_per_row_construction():
    r = np.random.default_rng(0)
    B, N, Tp, Tc = 3, 4, 7, 6
    prompt_lengths = [7, 3, 1]  # bos + 6, bos + 2, bos only
    prompts = np.zeros((B, Tp), np.int32)
    for b, L in enumerate(prompt_lengths):
        prompts[b, Tp - L:] = [2] + list(r.integers(4, 50, L - 1))
    completions = r.integers(1, 50, (B, N, Tc)).astype(np.int32)  # garbage past each length too
    lengths = r.integers(0, Tc + 1, (B, N)).astype(np.int32)
    lengths[0, 0], lengths[2, 3] = 0, Tc
    tokens, valid = map(np.asarray, pack_prompt_completion(prompts, completions, lengths))
    assert tokens.shape == valid.shape == (B * N, Tp + Tc) and tokens.dtype == np.int32
    for b in range(B):
        real_prompt = [t for t in prompts[b] if t != 0]
        for n in range(N):
            L = int(lengths[b, n])
            row = [0] * (Tp - len(real_prompt)) + real_prompt + list(completions[b, n, :L]) + [0] * (Tc - L)
            np.testing.assert_array_equal(tokens[b * N + n], row)
            np.testing.assert_array_equal(valid[b * N + n], np.array(row) != 0)
    jitted = jax.jit(pack_prompt_completion, static_argnums=3)(prompts, completions, lengths, 0)
    np.testing.assert_array_equal(jitted[0], tokens)


@pytest.fixture(scope="module")
def arith_task():
    return ArithTask(seed=0, num_train=1000, num_validation=0, num_test=200, levels=(1,),
                     kinds=("expr", "linear"))


@pytest.fixture(scope="module")
def tokenizer(arith_task):
    return Tokenizer.train(list(arith_task.corpus("train")), vocab_size=400, hard_vocab_limit=False)


def tiny_config(tokenizer):
    """The one model config of this file (one init compilation): Gemma 2's options, 3 layers."""
    return get_config("tiny", vocab_size=tokenizer.vocab_size, num_layers=3)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    cfg = tiny_config(tokenizer)
    params = init_params(cfg, jax.random.key(3), scalar_head=True)
    # A fresh head has tiny variance across inputs; scale it so that score differences are visible.
    params = dict(params, value_head=jax.tree.map(lambda x: 10.0 * x, params["value_head"]))
    return cfg, params


def _sampler_outputs(tokenizer, prompts, completions_BM, Tc):
    """What a sampler returns: left-padded [bos] prompts, completion tokens ending in eos, garbage after."""
    prompt_BT, _ = tokenizer.encode_batch(prompts, add_bos=True, pad_side="left")
    B, N = len(completions_BM), len(completions_BM[0])
    tokens_BMT = np.full((B, N, Tc), 7, np.int32)
    lengths_BM = np.zeros((B, N), np.int32)
    for b, row in enumerate(completions_BM):
        for n, c in enumerate(row):
            ids = tokenizer.encode(c) + [tokenizer.eos_id]
            tokens_BMT[b, n, : len(ids)] = ids
            lengths_BM[b, n] = len(ids)
    return prompt_BT, tokens_BMT, lengths_BM


def test_score_tokens_on_packed_rows_equals_unpadded_full_forward(tiny):
    cfg, params = tiny
    r = np.random.default_rng(1)
    B, N, Tp, Tc = 2, 3, 8, 12
    prompts = np.zeros((B, Tp), np.int32)
    prompts[0, 2:] = [2] + list(r.integers(4, cfg.vocab_size, 5))  # bos + 5
    prompts[1, 5:] = [2] + list(r.integers(4, cfg.vocab_size, 2))  # bos + 2
    completions = r.integers(1, cfg.vocab_size, (B, N, Tc)).astype(np.int32)
    lengths = np.array([[1, 4, 7], [4, 7, 10]], np.int32)  # real lengths 7, 10, 13 in both rows
    z_BM = np.asarray(score_completion_tokens(params, cfg, prompts, completions, lengths))
    tokens_MS, valid_MS = map(np.asarray, pack_prompt_completion(prompts, completions, lengths))
    z_chunked = np.asarray(score_tokens(params, cfg, tokens_MS, valid_MS, row_chunk=4))  # 6 rows: 2 chunks
    # Reference: each row's real tokens alone, unpadded; rows of equal length share one forward.
    forward = jax.jit(lambda p, t: make_model(cfg, scalar_head=True).apply(
        {"params": p}, t, positions_from_valid(jnp.ones(t.shape, bool)), causal_mask(jnp.ones(t.shape, bool)))[0])
    rows = [tokens_MS[m][valid_MS[m]] for m in range(B * N)]
    for length in {len(row) for row in rows}:
        ms = [m for m in range(B * N) if len(rows[m]) == length]
        want = np.asarray(forward(params, np.stack([rows[m] for m in ms])))[:, -1]
        np.testing.assert_allclose(z_BM.reshape(-1)[ms], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z_chunked[ms], want, rtol=1e-5, atol=1e-5)
    assert np.ptp(z_BM) > 1e-2  # the rows really differ


def test_packed_sampler_rows_hold_the_training_layout(arith_task, tokenizer):
    exs = arith_task.examples("train")[:2]
    completions = [[exs[0].reference, "1+1=2\n\\boxed{2}", ""],
                   [exs[1].reference, exs[0].reference, "\\boxed{7}"]]
    prompt_BT, comp_BMT, len_BM = _sampler_outputs(tokenizer, [e.prompt for e in exs], completions, Tc=24)
    tokens_RT, valid_RT = map(np.asarray, pack_prompt_completion(prompt_BT, comp_BMT, len_BM))
    for r in range(6):
        b, i = divmod(r, 3)
        real = tokens_RT[r][valid_RT[r]]
        want = sequence_batch(tokenizer, [exs[b].prompt], [completions[b][i]], len(real))
        np.testing.assert_array_equal(real, want["tokens_BT"][0])
        assert want["valid_BT"].all()


@pytest.mark.parametrize("pooling", ["last", "noisy_or", "noisy_or_surprisal", "likelihood"])
def test_learned_verifier_text_and_token_paths_agree(arith_task, tokenizer, tiny, pooling):
    cfg, params = tiny
    verifier = LearnedVerifier(params, cfg, tokenizer, row_chunk=4, pooling=pooling)
    assert isinstance(verifier, Verifier)
    exs = list(arith_task.examples("test")[:3])
    completions = [[e.reference, e.reference.replace("\\boxed{", "\\boxed{1")] for e in exs]
    z_text = verifier.score(exs, completions)
    prompt_BT, comp_BMT, len_BM = _sampler_outputs(tokenizer, [e.prompt for e in exs], completions, Tc=32)
    z_tok = verifier.score(exs, Samples(comp_BMT, len_BM, prompt_BT))
    z_tok_no_prompt = verifier.score(exs, Samples(comp_BMT, len_BM))  # prompts encoded by the verifier
    assert z_text.shape == (3, 2) and z_text.dtype == np.float32
    np.testing.assert_allclose(z_tok, z_text, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_tok_no_prompt, z_text, rtol=1e-5, atol=1e-5)
    graded = Samples(comp_BMT, len_BM, prompt_BT, texts_BM=completions, rewards_BM=np.zeros((3, 2), np.float32))
    np.testing.assert_allclose(verifier.score(exs, graded), z_text, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(verifier.probabilities(exs, completions), np.exp(-np.logaddexp(0.0, -z_text)), rtol=1e-5,
                               atol=1e-30)  # XLA flushes denormals
    with pytest.raises(ValueError, match="examples"):
        verifier.score(exs[:2], completions)


def test_learned_verifier_scores_repeated_completions_as_each_alone(arith_task, tokenizer, tiny):
    """Each prompt's distinct completions are scored once (bon_jax.distinct): with M = 8 samples holding 3
    distinct texts, every sample's score must equal its completion's score by `score_pairs` (one packed
    row per pair, no grouping), on the text and the token path."""
    cfg, params = tiny
    verifier = LearnedVerifier(params, cfg, tokenizer, pooling="likelihood")
    exs = list(arith_task.examples("test")[:2])
    options = [[e.reference, e.reference.replace("\\boxed{", "\\boxed{1"), "1+1=2"] for e in exs]
    picks = [[0, 1, 0, 0, 2, 1, 0, 0], [2, 2, 2, 0, 2, 1, 2, 2]]
    completions = [[options[b][i] for i in row] for b, row in enumerate(picks)]
    want = verifier.score_pairs([e.prompt for e in exs for _ in range(8)], [c for row in completions for c in row])
    z_text = verifier.score(exs, completions)
    prompt_BT, comp_BMT, len_BM = _sampler_outputs(tokenizer, [e.prompt for e in exs], completions, Tc=32)
    z_tok = verifier.score(exs, Samples(comp_BMT, len_BM, prompt_BT))
    assert len({float(z) for z in z_text[0]}) == 3  # the three texts score differently
    np.testing.assert_allclose(z_text, want.reshape(2, 8), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z_tok, want.reshape(2, 8), rtol=1e-5, atol=1e-5)


def _float64_noisy_or(v, mask):
    """log P(correct) - log P(error) with P(correct) = prod over masked t of (1 - sigmoid(v_t)), float64."""
    v = np.asarray(v, np.float64)
    log_p = np.sum(np.where(mask, -np.logaddexp(0.0, v), 0.0), axis=-1)  # log(1 - sigmoid(v)) = -softplus(v)
    return log_p - np.log(-np.expm1(log_p))


def test_noisy_or_logit_matches_a_float64_product_of_hazards():
    r = np.random.default_rng(0)
    v = r.normal(0.0, 3.0, (6, 20)).astype(np.float32)
    mask = r.random((6, 20)) < 0.6
    v[4] = -25.0  # hazards ~1e-11: P(correct) ~ 1 - 1e-10, z ~ 23, where exp(-S) alone rounds to 1
    v[5] = 8.0  # certain error: z ~ -S
    mask[5, :] = True
    z = np.asarray(noisy_or_logit(jnp.asarray(v), jnp.asarray(mask)), np.float64)
    np.testing.assert_allclose(z, _float64_noisy_or(v, mask), rtol=2e-5, atol=1e-4)
    assert z[4] > 20 and np.isfinite(z).all()
    # No completion token at all: certainly correct, clamped finite.
    assert np.isfinite(float(noisy_or_logit(jnp.zeros((1, 3)), jnp.zeros((1, 3), bool))[0]))


def test_noisy_or_pools_the_completion_tokens_of_a_full_forward(arith_task, tokenizer, tiny):
    cfg, params = tiny
    exs = list(arith_task.examples("test")[:3])
    prompts, completions = [e.prompt for e in exs], [e.reference for e in exs]
    batch = encode_pairs(tokenizer, prompts, completions)
    z = np.asarray(score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], None, batch["target_BT"],
                                "noisy_or"))
    forward = make_model(cfg, scalar_head=True)
    for b in range(3):
        row = batch["tokens_BT"][b][batch["valid_BT"][b]][None]
        ones = np.ones(row.shape, bool)
        values = np.asarray(forward.apply({"params": params}, row, positions_from_valid(ones), causal_mask(ones))[0])
        n_prompt = 1 + len(tokenizer.encode(prompts[b]))  # bos + prompt: not pooled
        mask = np.arange(row.shape[1]) >= n_prompt
        want = _float64_noisy_or(values[0] + HAZARD_OFFSET, mask)
        np.testing.assert_allclose(z[b], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="completion mask"):
        score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], pooling="noisy_or")
    with pytest.raises(ValueError, match="pooling"):
        LearnedVerifier(params, cfg, tokenizer, pooling="mean")


def test_surprisal_pooling_starts_as_the_policys_own_likelihood(arith_task, tokenizer, tiny):
    """With the policy's backbone and a zero value head, noisy_or_surprisal's z is the noisy-OR of the
    policy's surprisal (from a full forward of the language model) shifted by HAZARD_OFFSET, and
    likelihood's z is the policy's log-likelihood of the completion."""
    from bon_jax.train.lm import token_logprobs

    cfg, _ = tiny
    r = np.random.default_rng(0)
    policy = jax.tree.map(lambda a: (0.3 * r.normal(size=a.shape)).astype(a.dtype), abstract_params(cfg))
    params, _ = init_verifier_params(cfg, jax.random.key(1), policy, zero_head=True)
    assert all(not np.any(x) for x in jax.tree.leaves(params["value_head"]))
    exs = list(arith_task.examples("test")[:4])
    batch = encode_pairs(tokenizer, [e.prompt for e in exs], [e.reference if i % 2 else "\\boxed{3}"
                                                              for i, e in enumerate(exs)])
    z = np.asarray(score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], None, batch["target_BT"],
                                "noisy_or_surprisal"))
    logp_BT = np.asarray(token_logprobs(make_model(cfg), policy, batch["tokens_BT"], batch["valid_BT"]))
    want = _float64_noisy_or(-logp_BT + HAZARD_OFFSET, batch["target_BT"])
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)
    assert np.ptp(z) > 0.1
    # 'likelihood': the completion's log-likelihood under the policy (eos included, prompt excluded).
    z = np.asarray(score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], None, batch["target_BT"],
                                "likelihood"))
    np.testing.assert_allclose(z, np.sum(np.where(batch["target_BT"], logp_BT, 0.0), axis=-1), rtol=1e-4, atol=1e-4)


def test_zero_steps_train_nothing_the_verifier_is_the_backbone_likelihood(arith_task, tokenizer, tiny):
    """`steps=0` returns the backbone with a zero head (whose 'likelihood' score is the completion's
    log-likelihood, test above) and no training metrics; it is refused where the head would score."""
    cfg, _ = tiny
    r = np.random.default_rng(0)
    policy = jax.tree.map(lambda a: (0.3 * r.normal(size=a.shape)).astype(a.dtype), abstract_params(cfg))
    exs = list(arith_task.examples("test")[:6])
    prompts, texts = [e.prompt for e in exs], [e.reference for e in exs]
    labels = np.array([1.0, 0.0] * 3)
    kw = dict(steps=0, batch_size=4, lr=1e-3, init_params=policy, zero_init_head=True, progress=False,
              eval_data=(prompts, texts, labels, np.array([0, 0, 1, 1, 2, 2])))
    params, metrics = train_verifier(cfg, tokenizer, prompts, texts, labels, pooling="likelihood", **kw)
    want, _ = init_verifier_params(cfg, jax.random.key(0), policy, zero_head=True)
    jax.tree.map(np.testing.assert_array_equal, params, want)
    assert not any(k.startswith("train/") for k in metrics) and "eval/auc" in metrics
    with pytest.raises(ValueError, match="steps = 0"):
        train_verifier(cfg, tokenizer, prompts, texts, labels, pooling="last", **kw)
    with pytest.raises(ValueError, match="steps = 0"):
        train_verifier(cfg, tokenizer, prompts, texts, labels, pooling="likelihood", **{**kw, "zero_init_head": False})


def test_init_from_policy_copies_the_backbone_and_keeps_a_fresh_head(tokenizer, tiny):
    cfg, _ = tiny
    r = np.random.default_rng(0)
    # A policy's param tree (the language model's, from its abstract shapes), filled with random values.
    policy = jax.tree.map(lambda a: r.normal(size=a.shape).astype(a.dtype), abstract_params(cfg))
    fresh = init_params(cfg, jax.random.key(1), scalar_head=True)
    params, copied = init_verifier_params(cfg, jax.random.key(1), policy)
    assert len(copied) == len(jax.tree.leaves(policy)) and "value_head" not in " ".join(copied)
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in params.items() if k != "value_head"}, policy)
    jax.tree.map(np.testing.assert_array_equal, params["value_head"], fresh["value_head"])
    other = dict(policy, final_norm={"scale": np.zeros(cfg.embed_dim + 1, np.float32)})
    with pytest.raises(ValueError, match="final_norm/scale has shape"):
        init_verifier_params(cfg, jax.random.key(1), other)


def test_bce_loss_and_class_weights(tokenizer, tiny):
    cfg, params = tiny
    assert class_weights(0.25, None) == (1.0, 1.0)
    w0, w1 = class_weights(0.25, "balanced")
    assert (w0, w1) == pytest.approx((2 / 3, 2.0))
    with pytest.raises(ValueError):
        class_weights(0.0, "balanced")
    batch = encode_pairs(tokenizer, ["Problem: a\n"] * 4, ["1", "22", "333", "4444"])
    y = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    inputs = {"tokens_BT": batch["tokens_BT"], "valid_BT": batch["valid_BT"], "label_B": y}
    (loss, aux), z = jax.jit(lambda p, b: (bce_loss(cfg, (w0, w1))(p, b),
                                           sequence_logits(p, cfg, b["tokens_BT"], b["valid_BT"])))(params, inputs)
    z = np.asarray(z, np.float64)
    p = 1 / (1 + np.exp(-z))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    # Balanced: the positive carries half the total weight, the three negatives the other half.
    assert float(loss) == pytest.approx(np.mean(np.where(y > 0, w1, w0) * bce), rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * bce[0] + 0.5 * bce[1:].mean(), rel=1e-5)
    assert float(aux["bce"]) == pytest.approx(bce.mean(), rel=1e-5)
    # Bad inputs are refused before anything compiles.
    with pytest.raises(ValueError, match="labels"):
        train_verifier(cfg, tokenizer, ["a", "b"], ["c", "d"], [1], steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="0/1"):
        train_verifier(cfg, tokenizer, ["a"], ["c"], [0.5], steps=1, batch_size=1, lr=1e-3)
    with pytest.raises(ValueError, match="only"):
        train_verifier(cfg.replace(vocab_size=100), tokenizer, ["a"], ["c"], [1], steps=1, batch_size=1, lr=1e-3)


# --------------------------------------------------------------------------------------------------
# Within-prompt ranking: loss, minibatches by prompt, pairwise accuracy.


def brute_force_ranking(z, y, g):
    """float64 loops over all ordered pairs: (mean softplus(z_j - z_i) over same-group (pos i, neg j), pairs)."""
    terms = [np.log1p(np.exp(z[j] - z[i])) for i in range(len(z)) for j in range(len(z))
             if g[i] == g[j] and y[i] == 1 and y[j] == 0]
    return (float(np.mean(terms)) if terms else 0.0), len(terms)


def brute_force_listwise(z, y, g):
    """float64, group by group: (mean over groups with both classes of -log(sum_correct e^z / sum_all e^z),
    number of such groups)."""
    terms = []
    for group in np.unique(g):
        zg, yg = z[g == group], y[g == group]
        if yg.min() == 0 and yg.max() == 1:
            terms.append(-np.log(np.exp(zg[yg == 1]).sum() / np.exp(zg).sum()))
    return (float(np.mean(terms)) if terms else 0.0), len(terms)


@pytest.mark.parametrize("ranking, enumerate_in_float64", [("pairwise", brute_force_ranking),
                                                           ("listwise", brute_force_listwise)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_loss_matches_enumeration(ranking, enumerate_in_float64, seed):
    r = np.random.default_rng(seed)
    z = r.normal(size=40) * 3
    y = (r.random(40) < 0.3).astype(np.float32)
    g = r.integers(0, 6, 40)
    loss = lambda z, y, g: ranking_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(g), ranking)
    value, count = loss(z, y, g)
    want, terms = enumerate_in_float64(z, y, g)
    assert terms > 1 and int(count) == terms  # pairs, or groups with both classes
    assert float(value) == pytest.approx(want, rel=1e-5)
    # A per-group shift of the scores changes nothing: only a prompt's own completions are compared.
    assert float(loss(z + 10.0 * g, y, g)[0]) == pytest.approx(want, rel=1e-4)
    # No same-prompt (correct, incorrect) pair: the term is 0, not NaN.
    value, count = loss(np.zeros(4), np.array([1.0, 0.0, 1.0, 0.0]), np.arange(4))
    assert int(count) == 0 and float(value) == 0.0


def test_an_unknown_ranking_is_refused():
    with pytest.raises(ValueError, match="ranking must be one of"):
        ranking_loss(jnp.zeros(4), jnp.ones(4), jnp.arange(4), "pointwise")


def test_listwise_ranking_pushes_the_top_scored_incorrect_completion_hardest():
    """What it is for: Best-of-N fails on the incorrect completion scored highest. The pairwise term pushes
    every incorrect completion below a correct one about equally when they are all above it; the listwise
    term's push on each is its softmax weight, so the top one gets most."""
    z = jnp.array([0.0, 3.0, 1.0, -2.0])  # one correct completion (row 0), three incorrect ones
    y, g = jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.zeros(4, jnp.int32)
    grad = np.asarray(jax.grad(lambda z: ranking_loss(z, y, g, "listwise")[0])(z))
    assert grad[0] < 0 and np.all(grad[1:] > 0)  # the correct one up, the incorrect ones down
    assert grad[1] > 5 * grad[2] > 5 * 5 * grad[3]
    np.testing.assert_allclose(grad[1:], np.asarray(jax.nn.softmax(z))[1:], rtol=1e-5)


def test_pairwise_accuracy_is_within_group_auc():
    r = np.random.default_rng(3)
    z = np.round(r.normal(size=60), 1)  # ties happen
    y = (r.random(60) < 0.4).astype(float)
    g = r.integers(0, 6, 60)
    acc, pairs = pairwise_accuracy(z, y, g)
    wins = [1.0 if z[i] > z[j] else 0.5 if z[i] == z[j] else 0.0 for i in range(60) for j in range(60)
            if g[i] == g[j] and y[i] == 1 and y[j] == 0]
    assert pairs == len(wins) and acc == pytest.approx(np.mean(wins))
    # One group: the plain AUC. Scores that only say which group (prompt) a row is in: chance.
    assert pairwise_accuracy(z, y, np.zeros(60))[0] == pytest.approx(auc(z, y))
    assert pairwise_accuracy(g.astype(float), y, g)[0] == 0.5


def test_held_out_selection_matches_subset_enumeration():
    import itertools

    from bon_jax.verifiers.train import held_out_selection

    r = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), 4)
    z = r.integers(0, 3, 20).astype(float)  # ties
    y = (r.random(20) < 0.4).astype(float)
    out = held_out_selection(z, y, groups)
    assert set(out) == {f"{m}_at_{k}" for m in ("bon", "pass") for k in (1, 2, 4)}
    for k in (1, 2, 4):
        bon, pas = [], []
        for g in range(5):
            zg, yg = z[groups == g], y[groups == g]
            subsets = list(itertools.combinations(range(4), k))
            # best of the subset, ties shared uniformly among the subset's tied best
            bon.append(np.mean([np.mean([yg[i] for i in s if zg[i] == max(zg[list(s)])]) for s in subsets]))
            pas.append(np.mean([max(yg[list(s)]) for s in subsets]))
        assert out[f"bon_at_{k}"] == pytest.approx(np.mean(bon), abs=1e-6)
        assert out[f"pass_at_{k}"] == pytest.approx(np.mean(pas), abs=1e-6)


def test_grouped_minibatches_keep_each_prompt_together():
    from bon_jax.verifiers.train import _epoch_batches

    groups = np.repeat(np.arange(10), 4)
    r = np.random.default_rng(0)
    order = _epoch_batches(40, 8, 10, r, groups)  # two passes
    for one_pass in order.reshape(2, 40):
        assert sorted(one_pass) == list(range(40))
        g = groups[one_pass]
        assert all(len(set(g[k:k + 4])) == 1 for k in range(0, 40, 4))  # contiguous, whole groups
    assert not np.array_equal(order[:5], order[5:])  # reshuffled between passes


def test_ranking_needs_prompt_ids(tokenizer, tiny):
    cfg, _ = tiny
    with pytest.raises(ValueError, match="groups"):
        train_verifier(cfg, tokenizer, ["a", "b"], ["c", "d"], [1, 0], steps=1, batch_size=2, lr=1e-3,
                       ranking_weight=1.0)
    with pytest.raises(ValueError, match="group ids"):
        train_verifier(cfg, tokenizer, ["a", "b"], ["c", "d"], [1, 0], steps=1, batch_size=2, lr=1e-3,
                       groups=[0], ranking_weight=1.0)


# --------------------------------------------------------------------------------------------------
# A learned verifier on arith: reference solutions (correct) vs one-digit corruptions (incorrect).

def make_triples(examples, seed, kinds):
    """Per problem: its reference (label 1) and one corruption of a random kind (label 0)."""
    r = random.Random(seed)
    prompts, completions, labels, which = [], [], [], []
    for ex in examples:
        kind = r.choice(kinds)
        prompts += [ex.prompt, ex.prompt]
        completions += [ex.reference, corrupt(ex.reference, r, kind)]
        labels += [1, 0]
        which += ["reference", kind]
    return prompts, completions, np.array(labels), np.array(which)


def test_corruptions_are_wrong_and_keep_the_shape(arith_task):
    task, r = arith_task, random.Random(0)
    exs = task.examples("train")[:200]
    for kind in ("answer", "step", "propagate", "carry"):
        for ex in exs:
            bad = corrupt(ex.reference, r, kind)
            wrong_answer = task.grade(ex, bad).reward == 0.0
            n_steps, n_true = check_steps(bad)
            assert bad != ex.reference and (wrong_answer or n_true < n_steps)
            assert n_steps == check_steps(ex.reference)[0]
            if kind == "answer":
                assert wrong_answer and n_true == n_steps
            if kind in ("propagate", "carry"):
                assert n_true == n_steps - 1  # exactly one false step, everything after it consistent
    # The task's hard negatives (the verifier's `corrupted_references`) always have a wrong answer.
    for kinds in (("answer", "propagate"), ("carry",), ("answer", "propagate", "carry")):
        for ex in exs:
            bad = task.corrupt(ex.reference, r, kinds)
            assert task.grade(ex, bad).reward == 0.0 and check_steps(bad)[0] == check_steps(ex.reference)[0]


def test_a_carry_slip_is_off_by_one_above_the_units(arith_task):
    """The false step of a `carry` corruption is its true result +- 10^k, k >= 1 where the result has two
    digits or more (+-1 otherwise), and the slip propagates: the boxed answer follows the false step."""
    from bon_jax.tasks.arith import check_step, step_error, step_lines

    r, offsets, answer_moved = random.Random(1), [], 0
    for ex in arith_task.examples("train")[:300]:
        bad = corrupt(ex.reference, r, "carry")
        lines = step_lines(bad)
        wrong = [ln for ln in lines if not check_step(ln)]
        if len(wrong) != 1:  # an inexact division downstream fell back to an unpropagated `step` slip
            continue
        off = step_error(wrong[0])
        true = int(wrong[0].rpartition("=")[2]) - off
        offsets.append(off)
        assert abs(off) == (10 ** (len(str(abs(off))) - 1)) and (abs(off) >= 10 or abs(true) < 10)
        assert len(str(abs(off))) <= len(str(abs(true)))  # the slipped place is one of the true result's
        answer_moved += arith_task.grade(ex, bad).reward == 0.0
    assert len(offsets) > 250 and {-10, 10} <= set(offsets)
    assert answer_moved >= 0.95 * len(offsets)


@pytest.fixture(scope="module", params=["last", "noisy_or", "noisy_or_surprisal", "likelihood"])
def trained(arith_task, tokenizer, request):
    """The verifier of the end-to-end test: 3-layer tiny model, 400 steps of batch 32 at width 48, with
    each pooling; 800 for 'likelihood', whose score is the backbone's own language model, learnt here from
    scratch along with the classifier. At 400 steps that pooling failed this test at 3 of seeds 0-3 (held-out
    AUC 0.54-0.75, BCE 0.64-0.96); at 800 steps its AUC was 0.86-0.92 and its BCE 0.37-0.56, 0.74 at seed 3."""
    kinds = ("answer", "step")
    train = make_triples(arith_task.examples("train"), 0, kinds)
    held_out = make_triples(arith_task.examples("test"), 1, kinds)  # disjoint problems (hash split)
    cfg = tiny_config(tokenizer)
    held_out_prompt_ids = np.arange(len(held_out[0])) // 2  # (reference, corruption) of one problem
    steps = 800 if request.param == "likelihood" else 400
    params, metrics = train_verifier(cfg, tokenizer, *train[:3], steps=steps, batch_size=32, lr=3e-3, seed=0,
                                     warmup=20, width=48, eval_data=(*held_out[:3], held_out_prompt_ids),
                                     pooling=request.param)
    return cfg, params, metrics, held_out, request.param


def test_learned_verifier_beats_chance_on_held_out_problems(arith_task, tokenizer, trained):
    cfg, params, metrics, (prompts, completions, labels, which), pooling = trained
    assert not set(prompts) & {ex.prompt for ex in arith_task.examples("train")}
    assert metrics["positive_rate"] == 0.5 and metrics["train_truncated"] == 0 and metrics["skipped_steps"] == 0
    assert metrics["eval/truncated"] == 0 and metrics["eval/count"] == len(labels)
    # Length alone says nothing: corrupted solutions are as long as references.
    lengths = np.array([len(tokenizer.encode(c)) for c in completions])
    assert abs(auc(lengths, labels) - 0.5) < 0.05
    assert metrics["train/loss_last"] < metrics["train/loss_first"]
    assert metrics["eval/auc"] > 0.7, metrics
    if pooling != "likelihood":
        # Calibrated: better than predicting 1/2 for all. Not asked of 'likelihood', whose logit is a sum of
        # per-token log-probs that grows with the completion's length: its held-out BCE was 0.74 at seed 3
        # (docs above) and 0.80 at seed 0 when compiled at -O0, with AUC above 0.7 both times; what BoN
        # uses it for is ranking, asserted here and below.
        assert metrics["eval/bce"] < np.log(2), metrics
    assert metrics["eval/accuracy"] > 0.6, metrics
    # The metrics are those of the verifier's own scores.
    verifier = LearnedVerifier(params, cfg, tokenizer, pooling=pooling)
    exs = [Example(id=str(i), prompt=p) for i, p in enumerate(prompts[::2])]
    z_BM = verifier.score(exs, [list(completions[i:i + 2]) for i in range(0, len(completions), 2)])
    assert auc(z_BM.reshape(-1), labels) == pytest.approx(metrics["eval/auc"], abs=1e-9)
    # Best-of-2 by the verifier picks the reference more often than chance; pairwise accuracy says so.
    assert np.mean(z_BM[:, 0] > z_BM[:, 1]) > 0.6
    assert metrics["eval/pairs"] == len(prompts) // 2
    assert metrics["eval/pairwise_accuracy"] == pytest.approx(np.mean(z_BM[:, 0] > z_BM[:, 1]), abs=1e-9)


def test_training_with_the_ranking_term_reports_it(arith_task, tokenizer):
    prompts, completions, labels, _ = make_triples(arith_task.examples("train")[:16], 0, ("answer",))
    groups = np.arange(len(prompts)) // 2
    _, metrics = train_verifier(tiny_config(tokenizer), tokenizer, prompts, completions, labels, steps=3,
                                batch_size=8, lr=1e-3, width=48, groups=groups, ranking_weight=1.0,
                                eval_data=(prompts, completions, labels, groups), progress=False)
    assert np.isfinite(metrics["train/rank_last"]) and metrics["train/rank_last"] > 0
    assert metrics["eval/pairs"] == 16 and 0 <= metrics["eval/pairwise_accuracy"] <= 1


def test_save_and_load_round_trip(tmp_path, arith_task, tokenizer, trained):
    cfg, params, metrics, _, pooling = trained
    verifier = LearnedVerifier(params, cfg, tokenizer, pooling=pooling)
    verifier.save(tmp_path / "v", meta={"metrics": metrics})
    loaded = LearnedVerifier.load(tmp_path / "v")
    assert loaded.cfg == cfg and loaded.pooling == pooling
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), loaded.params)
    exs = list(arith_task.examples("test")[:4])
    completions = [[e.reference, "\\boxed{0}"] for e in exs]
    np.testing.assert_array_equal(loaded.score(exs, completions), verifier.score(exs, completions))
    _, _, _, meta = load_verifier(tmp_path / "v")
    assert meta["metrics"]["eval/auc"] == metrics["eval/auc"]
    # Params that do not fit the config are refused with the differing paths named.
    save_verifier(tmp_path / "bad", params, cfg.replace(mlp_dim=2 * cfg.mlp_dim))
    with pytest.raises(CheckpointMismatchError, match="mlp"):
        load_verifier(tmp_path / "bad")


# --------------------------------------------------------------------------------------------------
# Oracle and sentiment verifiers.


def test_oracle_verifier_equals_task_rewards(arith_task, tokenizer):
    exs = list(arith_task.examples("test")[:3])
    completions = [[e.reference, corrupt(e.reference, random.Random(i), "answer"), "no answer",
                    f"\\boxed{{{e.answer}}}"] for i, e in enumerate(exs)]
    oracle = OracleVerifier(arith_task, tokenizer)
    assert isinstance(oracle, Verifier)
    scores = oracle.score(exs, completions)
    np.testing.assert_array_equal(scores, arith_task.grade_batch(exs, completions).rewards_BM)
    np.testing.assert_array_equal(scores, np.tile([1.0, 0.0, 0.0, 1.0], (3, 1)))
    assert scores.dtype == np.float32
    _, comp_BMT, len_BM = _sampler_outputs(tokenizer, [e.prompt for e in exs], completions, Tc=40)
    np.testing.assert_array_equal(oracle.score(exs, Samples(comp_BMT, len_BM)), scores)
    with pytest.raises(ValueError, match="tokenizer"):
        OracleVerifier(arith_task).score(exs, Samples(comp_BMT, len_BM))


def test_every_verifier_scores_graded_samples(arith_task, tokenizer):
    """The pipeline hands each verifier one `Samples` (texts, tokens, lengths, prompt tokens, rewards): the
    oracle reads the rewards (the task that graded them may be the evaluation task, not its own), the
    sentiment verifier the texts; ungraded samples are graded, malformed ones refused."""
    exs = list(arith_task.examples("test")[:2])
    texts = [[e.reference, "no answer"] for e in exs]
    rewards = np.array([[0.5, 0.25], [0.0, 1.0]], np.float32)  # not what grading gives: read, not recomputed
    graded = Samples(texts_BM=texts, rewards_BM=rewards)
    for oracle in (OracleVerifier(), OracleVerifier(arith_task)):
        assert isinstance(oracle, Verifier)
        np.testing.assert_array_equal(oracle.score(exs, graded), rewards)
    np.testing.assert_array_equal(OracleVerifier(arith_task).score(exs, Samples(texts_BM=texts)), [[1, 0], [1, 0]])
    with pytest.raises(ValueError, match="graded samples only"):
        OracleVerifier().score(exs, texts)

    class Lengths:
        def score_texts(self, texts):
            return np.array([len(t) / 1000 for t in texts], np.float32)

    sentiment = SentimentVerifier(Lengths(), score_on="completion")
    assert isinstance(sentiment, Verifier)
    np.testing.assert_array_equal(sentiment.score(exs, graded), sentiment.score(exs, texts))
    _, comp_BMT, len_BM = _sampler_outputs(tokenizer, [e.prompt for e in exs], texts, Tc=40)
    np.testing.assert_array_equal(SentimentVerifier(Lengths(), score_on="completion", tokenizer=tokenizer).score(
        exs, Samples(comp_BMT, len_BM)), sentiment.score(exs, texts))

    with pytest.raises(ValueError, match="texts_BM or tokens_BMT"):
        Samples(rewards_BM=rewards)
    with pytest.raises(ValueError, match="rewards"):
        Samples(texts_BM=texts, rewards_BM=rewards[:, :1])
    with pytest.raises(ValueError, match="texts are"):
        Samples(comp_BMT, len_BM, texts_BM=[row[:1] for row in texts])
    with pytest.raises(ValueError, match="examples"):
        OracleVerifier().score(exs[:1], graded)


def test_sentiment_verifier_is_monotone_in_obvious_sentiment():
    exs = [Example(id="a", prompt="I watched this movie last night."),
           Example(id="b", prompt="The film follows a nurse.")]
    row = [" It was wonderful and I loved it, a truly great film.", " It was a film.",
           " It was terrible and I hated it, an awful boring film."]
    for score_on in ("full", "completion"):
        verifier = SentimentVerifier(score_on=score_on)
        assert isinstance(verifier, Verifier)
        s = verifier.score(exs, [row, row])
        assert s.shape == (2, 3) and s.dtype == np.float32
        assert np.all(s[:, 0] > s[:, 1]) and np.all(s[:, 1] > s[:, 2])
        assert np.all((s >= 0) & (s <= 1))
    full = SentimentVerifier().score(exs, [row, row])
    np.testing.assert_allclose(full[0], SentimentScorer().score_texts([exs[0].prompt + c for c in row]))
