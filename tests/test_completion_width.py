"""Cutting a rollout to its longest completion's bucket (`rollouts.completion_width` / `cut_completions`,
issue 14): the widths chosen, the refusal to cut a completion, and that the log-probs the update and the
reference pass compute (values and gradients) are the same at the cut width as at max_new_tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.logprobs import sequence_logprobs
from bon_jax.models import get_config, init_params
from bon_jax.pipeline.rollouts import GradedSamples, completion_width, cut_completions


@pytest.mark.parametrize("longest, max_width, width", [
    (0, 48, 16),   # an all-empty batch still gets one static width
    (1, 48, 16),
    (16, 48, 16),  # exactly a bucket
    (17, 48, 32),
    (33, 48, 48),
    (48, 48, 48),
    (33, 40, 40),  # max_new_tokens not a multiple of 16: its own width caps the bucket
    (5, 8, 8),
])
def test_completion_width_is_the_longest_rounded_up_to_16_at_most_max(longest, max_width, width):
    lengths_BM = np.array([[0, longest], [1, 0]])
    assert completion_width(lengths_BM, max_width) == width


def _graded(lengths_BM, T):
    B, M = lengths_BM.shape
    rng = np.random.default_rng(0)
    return GradedSamples(
        prompt_tokens_BT=np.ones((B, 3), np.int32), prompt_lengths_B=np.full(B, 3), tokens_BMT=rng.integers(1, 9, (B, M, T)),
        lengths_BM=lengths_BM, logp_BM=np.zeros((B, M)), token_logp_BMT=rng.normal(size=(B, M, T)),
        texts_BM=[[""] * M] * B, rewards_BM=np.zeros((B, M)), answers_BM=np.zeros((B, M)), scores_BM=None,
        finished_BM=np.ones((B, M), bool))


def test_cut_completions_keeps_every_token_and_refuses_to_cut_one():
    g = _graded(np.array([[3, 20], [0, 7]]), 48)
    cut = cut_completions(g, 32)
    assert cut.tokens_BMT.shape == (2, 2, 32) and cut.token_logp_BMT.shape == (2, 2, 32)
    np.testing.assert_array_equal(cut.tokens_BMT, g.tokens_BMT[:, :, :32])
    np.testing.assert_array_equal(cut.token_logp_BMT, g.token_logp_BMT[:, :, :32])
    assert cut.lengths_BM is g.lengths_BM and cut.scores_BM is None
    cut_completions(g, 20)  # exactly the longest: allowed
    with pytest.raises(ValueError, match="width 19 is shorter than a completion \\(20 tokens\\)"):
        cut_completions(g, 19)


def test_log_probs_and_their_gradients_are_the_same_at_the_cut_width():
    """A tiny random policy; completions of lengths up to 13 in 40 columns, the columns past each length
    filled with random tokens (not pad: the lengths alone must mask them). log pi(y | x) and the gradient of
    sum_bj w_bj log pi(y_bj | x_b) at width 16 equal those at width 40 (float32: to rounding, 1e-4 of
    each gradient's largest entry)."""
    cfg = get_config("tiny", vocab_size=64)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(1)
    B, M, T, Tc = 2, 3, 5, 40
    prompts_BT = rng.integers(1, 64, (B, T))
    prompt_lengths_B = np.array([5, 3])
    prompts_BT[1, :2] = 0  # left-padded
    lengths_BM = np.array([[13, 1, 7], [0, 12, 9]])
    tokens_BMT = rng.integers(1, 64, (B, M, Tc))
    w_BM = jnp.asarray(rng.normal(size=(B, M)), jnp.float32)
    width = completion_width(lengths_BM, Tc)
    assert width == 16

    def loss(p, tokens):
        logp_BMT = sequence_logprobs(p, cfg, prompts_BT, tokens, completion_lengths_BM=lengths_BM,
                                     prompt_lengths_B=prompt_lengths_B, padding_side="left")
        logp_BM = logp_BMT.sum(-1)
        return jnp.sum(w_BM * logp_BM), logp_BM

    loss_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))  # one compile per width, not op by op
    (l_full, logp_full), g_full = loss_and_grad(params, tokens_BMT)
    (l_cut, logp_cut), g_cut = loss_and_grad(params, tokens_BMT[:, :, :width])
    assert np.all(np.asarray(logp_full)[lengths_BM > 0] < -1.0)  # real, non-trivial log-probs
    np.testing.assert_allclose(logp_cut, logp_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(l_cut, l_full, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_cut), jax.tree.leaves(g_full)):
        scale = float(np.abs(b).max())
        assert scale > 0
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
