"""Differentiating only the rows that carry gradient (`pipeline.update_rows`, issue 14).

Two halves, both needed for the pruned update to be exact:
- every objective declaring `ObjectiveSpec.winners_only` has d loss / d log pi = 0 at each sample that cannot
  win a Best-of-N draw (`bon_winner_weights` = 0), at beta = 0; and a nonzero one at some winner;
- `finetune.rl_loss` given `update_rows_BK` (those rows differentiated, the others constants) has the loss
  and parameter gradients of the full update, on a tiny policy, even with constants far from the true
  log-probs (so no constant can leak into the loss).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import objectives
from bon_jax.models import get_config, init_params
from bon_jax.pipeline import finetune as F
from bon_jax.pipeline.update_rows import bucket_rows, distinct_logp, gradient_rows, put_rows, take_rows

WINNERS_ONLY = [name for name in objectives.names() if objectives.spec(name).winners_only]


def test_the_printed_bon_estimators_and_bon_distillation_declare_winners_only():
    assert WINNERS_ONLY == ["bon_distill_sft", "bon_rl_s", "bon_rl_v"]


def _rollout(rng, B, M, *, ties=True):
    rewards = rng.integers(0, 2, (B, M)).astype(np.float32)
    scores = rng.normal(size=(B, M)).astype(np.float32)
    if ties:  # a tie at the top of prompt 0, and between two lower rows of prompt 1
        scores[0, 1] = scores[0, 3] = scores[0].max() + 1.0
        scores[1, 2] = scores[1, 5] = scores[1].min() - 1.0
    return objectives.Rollout(rewards_BM=jnp.asarray(rewards), scores_BM=jnp.asarray(scores))


@pytest.mark.parametrize("name", WINNERS_ONLY)
@pytest.mark.parametrize("n", [8, 5, 1])
def test_samples_that_cannot_win_have_zero_gradient(name, n):
    B, M = 4, 8
    rng = np.random.default_rng(n)
    rollout = _rollout(rng, B, M)
    spec = objectives.spec(name)
    select = rollout.rewards_BM if spec.selection() == "reward" else rollout.scores_BM
    active = gradient_rows(spec, select, n, beta=0.0, anchored=False)
    extra = {"values_B": jnp.asarray(rng.uniform(size=B), jnp.float32)} if spec.value_baseline else {}
    fn = objectives.get(name)
    logp = jnp.asarray(rng.normal(size=(B, M)) - 5.0, jnp.float32)
    grad = np.asarray(jax.grad(lambda lp: fn(lp, rollout, n=n, **extra)[0])(logp))
    assert np.all(grad[~active] == 0.0), (name, n, grad, active)
    assert np.any(grad[active] != 0.0)
    if n == M and spec.selection() == "score":  # only the top (prompt 0: its two tied tops) wins all M
        assert active.sum(1).tolist()[0] == 2 and np.all(active.sum(1)[1:] <= 2)


def test_no_rows_are_left_out_with_a_kl_term_an_anchor_or_an_objective_that_weights_all():
    scores = np.arange(8, dtype=np.float32)[None]
    spec = objectives.spec("bon_rl_v")
    assert gradient_rows(spec, scores, 8, beta=0.0, anchored=False).sum() == 1
    assert gradient_rows(spec, scores, 8, beta=0.1, anchored=False) is None
    assert gradient_rows(spec, scores, 8, beta=0.0, anchored=True) is None
    for name in ("bon_rl", "kl_rl", "grpo", "bon_sft", "vbon"):
        assert gradient_rows(objectives.spec(name), scores, 8, beta=0.0, anchored=False) is None


def test_bucket_rows_computes_each_distinct_active_completion_once_in_a_power_of_two():
    B, M, T = 3, 8, 4
    tokens = np.arange(B * M * T).reshape(B, M, T) % 97 + 1
    lengths = np.full((B, M), 3)
    active = np.zeros((B, M), bool)
    active[0, 5] = True
    active[1, [2, 6]] = True
    active[2, [1, 4, 7]] = True
    tokens[2, 4, :3] = tokens[2, 1, :3]  # prompt 2: rows 1 and 4 are one completion (past the length: differ)
    tokens[2, 4, 3] = 0
    rows, source = bucket_rows(active, tokens, lengths)
    assert rows.shape == (3, 2) and rows.dtype == np.int32 and source.dtype == np.int32
    assert rows[0, 0] == 5 and rows[1].tolist() == [2, 6] and rows[2].tolist() == [1, 7]
    assert all(len(set(r)) == len(r) for r in rows.tolist())
    expected = np.full((B, M), -1)
    expected[0, 5], expected[1, 2], expected[1, 6] = 0, 0, 1
    expected[2, 1], expected[2, 4], expected[2, 7] = 0, 0, 1
    np.testing.assert_array_equal(source, expected)
    active[1, [0, 1, 3]] = True  # 5 distinct active -> K = 8 = M: nothing to save
    assert bucket_rows(active, tokens, lengths) is None
    tokens[1] = tokens[1, 0]  # ... unless they are one completion
    rows, source = bucket_rows(active, tokens, lengths)
    assert rows.shape[1] == 2 and set(source[1][active[1]]) == {0}
    none_active = bucket_rows(np.zeros((B, M), bool), tokens, lengths)
    assert none_active[0].shape == (B, 1) and np.all(none_active[1] == -1)  # one row (weight 0) each
    # No selection (every row may carry weight): the distinct completions of each prompt.
    all_rows = bucket_rows(None, np.repeat(tokens[:, :1], M, axis=1), lengths)
    assert all_rows[0].shape == (B, 1) and np.all(all_rows[1] == 0)


def test_take_and_put_rows_round_trip():
    x = jnp.arange(2 * 4 * 3).reshape(2, 4, 3)
    rows = jnp.asarray([[3, 0], [1, 2]])
    np.testing.assert_array_equal(take_rows(x, rows)[1, 0], x[1, 1])
    fixed = jnp.full((2, 4), -7.0)
    source = jnp.asarray([[1, -1, 1, 0], [-1, 0, 1, -1]])
    out = put_rows(fixed, source, jnp.asarray([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(out, [[2.0, -7.0, 2.0, 1.0], [-7.0, 3.0, 4.0, -7.0]])


@pytest.mark.parametrize(
    "name, n, beta",
    [("bon_rl_v", 6, 0.0), ("bon_rl_v", 4, 0.0), ("bon_rl_s", 6, 0.0), ("bon_distill_sft", 6, 0.0),
     ("kl_rl", 1, 0.1), ("bon_rl_v", 6, 0.1)],
)
def test_the_pruned_update_has_the_full_updates_loss_and_gradients(name, n, beta):
    """A tiny random policy, 3 prompts x 6 samples, each completion repeated (so every top ties); the rows left out get constants 3 nats off their true log-probs. Loss and every parameter
    gradient equal the full update's (float32 rounding), for winners-only objectives and, with a KL term,
    for objectives where every row carries weight (only the repeats are saved)."""
    cfg = get_config("tiny", vocab_size=64)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(2)
    B, M, T, Tc = 3, 6, 4, 16
    prompts = rng.integers(1, 64, (B, T))
    prompt_lengths = np.array([4, 3, 4])
    prompts[1, :1] = 0
    lengths = rng.integers(1, Tc + 1, (B, M))
    tokens = rng.integers(1, 64, (B, M, Tc))
    rollout = _rollout(rng, B, M, ties=False)
    scores = np.asarray(rollout.scores_BM).copy()
    for src, dst in ((0, 3), (1, 4), (2, 5), (0, 1)):  # 2 distinct completions at prompt 0, 3 at the others
        tokens[:, dst], lengths[:, dst], scores[:, dst] = tokens[:, src], lengths[:, src], scores[:, src]
    tokens[1:, 1], lengths[1:, 1] = rng.integers(1, 64, (B - 1, Tc)), 9
    rollout = dataclasses.replace(rollout, scores_BM=jnp.asarray(scores))
    spec = objectives.spec(name)
    select = rollout.rewards_BM if spec.selection() == "reward" else rollout.scores_BM
    rows = bucket_rows(gradient_rows(spec, select, n, beta=beta, anchored=False), tokens, lengths)
    assert rows is not None and rows[0].shape[1] < M
    batch = dict(prompt_tokens_BT=prompts, prompt_lengths_B=prompt_lengths, tokens_BMT=tokens, lengths_BM=lengths,
                 rollout=rollout)
    if spec.value_baseline:
        batch["values_B"] = jnp.asarray([0.3, 0.5, 0.9], jnp.float32)
    seq_logp = F.make_sequence_logp(cfg)
    true_logp = seq_logp(params, prompts, prompt_lengths, tokens, lengths)
    if beta:
        batch["rollout"] = dataclasses.replace(rollout, ref_logp_BM=true_logp - rng.uniform(size=(B, M)))
    # Jitted as training runs it (and one compile instead of thousands of op-by-op dispatches).
    loss_and_grad = jax.jit(jax.value_and_grad(F.rl_loss(cfg, name, n=n, beta=beta, options={}), has_aux=True))
    (l_full, _), g_full = loss_and_grad(params, batch)
    pruned = dict(batch, update_rows_BK=rows[0], update_source_BM=rows[1],
                  sampled_logp_BM=np.asarray(true_logp) - 3.0)
    (l_cut, _), g_cut = loss_and_grad(params, pruned)
    assert float(l_full) != 0.0
    np.testing.assert_allclose(l_cut, l_full, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_cut), jax.tree.leaves(g_full)):
        scale = float(np.abs(b).max())
        assert scale > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


def test_the_reference_pass_over_distinct_completions_equals_the_full_one():
    cfg = get_config("tiny", vocab_size=64)
    params = init_params(cfg, jax.random.key(3))
    rng = np.random.default_rng(4)
    B, M, T, Tc = 2, 8, 3, 8
    prompts, prompt_lengths = rng.integers(1, 64, (B, T)), np.array([3, 3])
    tokens, lengths = rng.integers(1, 64, (B, M, Tc)), rng.integers(1, Tc + 1, (B, M))
    tokens[:, 4:], lengths[:, 4:] = tokens[:, :4], lengths[:, :4]  # each completion twice
    tokens[0, 7, lengths[0, 7]:] = 0  # the same completion, other padding
    seq_logp = F.make_sequence_logp(cfg)
    calls = []
    counting = lambda p, *a: calls.append(a[2].shape) or seq_logp(p, *a)
    got = distinct_logp(counting, params, prompts, prompt_lengths, tokens, lengths)
    assert calls == [(B, 4, Tc)]
    np.testing.assert_allclose(got, seq_logp(params, prompts, prompt_lengths, tokens, lengths), rtol=1e-5, atol=1e-5)
