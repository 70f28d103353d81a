"""The learned verifier's shared-prompt scoring (each prompt through the backbone once, its M completions
against the tiled cache) against the packed rows' full forward, the prompt repeated M times."""

import jax
import numpy as np
import pytest

from bon_jax.models import get_config, init_params
from bon_jax.verifiers.learned import POOLINGS, score_completion_tokens

B, M, TP, TC = 3, 3, 7, 6


@pytest.fixture(scope="module")
def model():
    # Window 8 < Tp + Tc = 13: the local layer's window is exercised by both paths.
    cfg = get_config("tiny", vocab_size=48)
    params = init_params(cfg, jax.random.key(0), scalar_head=True)
    # A fresh head varies little across inputs; scale it so that the scores differ visibly.
    return cfg, dict(params, value_head=jax.tree.map(lambda x: 10.0 * x, params["value_head"]))


def _sampler_outputs(vocab: int):
    """Left-padded prompts of 7, 4 and 1 (bos only) real tokens; completions of every length from 0 to Tc,
    with non-pad garbage after each length (what a sampler leaves)."""
    r = np.random.default_rng(0)
    prompts_BT = np.zeros((B, TP), np.int32)
    for b, n in enumerate((7, 4, 1)):
        prompts_BT[b, TP - n:] = [2] + list(r.integers(4, vocab, n - 1))
    completions_BMT = r.integers(3, vocab, (B, M, TC)).astype(np.int32)
    lengths_BM = np.array([[0, 3, 6], [1, 6, 4], [6, 2, 5]], np.int32)
    return prompts_BT, completions_BMT, lengths_BM


@pytest.mark.parametrize("pooling", POOLINGS)
def test_shared_prompt_scores_equal_the_repeated_prompt_forward(model, pooling):
    cfg, params = model
    prompts_BT, completions_BMT, lengths_BM = _sampler_outputs(cfg.vocab_size)
    # 'process': every fifth token id holds a newline, so the completions have several steps.
    newlines_V = (np.arange(cfg.vocab_size) % 5 == 0).astype(np.int32) if pooling == "process" else None
    score = lambda **kw: np.asarray(score_completion_tokens(
        params, cfg, prompts_BT, completions_BMT, lengths_BM, 0, pooling=pooling, newlines_V=newlines_V, **kw))
    want = score(share_prompt=False)
    # row_chunk=4: one prompt (its 3 rows) per chunk, 3 chunks; once (the chunking is pooling-blind).
    for row_chunk in (None, 4) if pooling == "noisy_or_surprisal" else (None,):
        got = score(share_prompt=True, row_chunk=row_chunk)
        assert got.shape == (B, M) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the samples really score differently

