"""Differentiate each distinct sample that carries gradient, once (issue 14).

Two facts make most of the update's B x M log-prob rows redundant:
- equal completions of one prompt have equal log-probs (arith's samples repeat: often 20 of 32 are one
  text), so one computed row serves them all;
- the printed BoN-RL estimators and SFT on Best-of-N samples weight sample j by u_j = P(j wins a random
  N-subset) (`objectives.bon_winner_weights`): with M = N samples per prompt only the top-scored completion
  has u_j > 0 (its copies tie with it), and every other row contributes nothing to the gradient.
  `ObjectiveSpec.winners_only` declares this (exactly, for beta = anchor_coef = 0 and on-policy updates).

The update then runs the policy's forward and backward on K rows per prompt instead of M:

    rows_BK   <- one row per distinct completion among the rows that can carry weight (all rows, or those
                 with u > 0), then others to fill K (a power of two, so few shapes compile)
    logp_BK   <- log pi(y_{b, rows_BK[b, k]} | x_b)                    (differentiated)
    logp_BM   <- at each such row, logp_BK of its completion's row; the sampler's own log-probs elsewhere
                 (constants, at rows of weight exactly 0)

and the objective sees the full [B, M] log-probs as before, so loss and gradient are those of the full
update; the constants enter only its metrics. tests/test_update_rows.py checks both halves: each objective
declaring `winners_only` has a zero gradient in log pi at every row with u = 0, and the loss and parameter
gradients with `rows_BK` equal the full ones.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bon_jax import objectives
from bon_jax.distinct import distinct_columns, token_keys


def gradient_rows(spec, select_BM, n: int, *, beta: float, anchored: bool) -> np.ndarray | None:
    """[B, M] bool: the rows whose weight can be nonzero, or None when it may be nonzero at every row.

    spec: the objective's `ObjectiveSpec`; select_BM: what selects its Best-of-N winner (scores or rewards,
    `spec.selection(options)`); beta: the KL coefficient; anchored: whether an EMA-anchor KL term is on.
    """
    if not spec.winners_only or beta != 0 or anchored or select_BM is None:
        return None
    select_BM = np.asarray(select_BM, np.float32)
    u_BM = objectives.bon_winner_weights(jnp.asarray(select_BM), jnp.ones(select_BM.shape, bool), n)
    return np.asarray(u_BM) > 0


def bucket_rows(active_BM: np.ndarray | None, tokens_BMT, lengths_BM) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows_BK, source_BM): the rows the update computes, and for each sample which of them holds its
    log-prob (-1: none, its weight is 0).

    Each prompt's active samples (all, if `active_BM` is None) are grouped by their completion tokens
    (`bon_jax.distinct.distinct_columns`): equal completions of one prompt have equal log-probs, so one
    computed row serves them all (arith's samples repeat: often 20 of 32 are one text, and they tie at the
    top of the verifier's ranking). rows_BK int32 [B, K] holds each group's first row, then other rows to
    fill K, the smallest power of two >= the largest number of groups of a prompt (few shapes compile);
    source_BM int32 [B, M] maps an active sample to its group's column in rows_BK. None if K would be M
    (nothing to save). The rows of a prompt are distinct.
    """
    return distinct_columns(token_keys(tokens_BMT, lengths_BM), active_BM)


def take_rows(x_BM, rows_BK):
    """x[b, rows_BK[b, k], ...] for every b, k: `[B, M, ...] -> [B, K, ...]`."""
    idx = rows_BK.reshape(rows_BK.shape + (1,) * (x_BM.ndim - 2))
    return jnp.take_along_axis(x_BM, idx, axis=1)


def put_rows(fixed_BM, source_BM, values_BK):
    """[b, m] -> values_BK[b, source_BM[b, m]] where source_BM >= 0, else fixed_BM[b, m] (a constant);
    gradients flow to values_BK only."""
    placed_BM = jnp.take_along_axis(values_BK, jnp.maximum(source_BM, 0), axis=1)
    return jnp.where(source_BM >= 0, placed_BM, jnp.asarray(fixed_BM, values_BK.dtype))


def distinct_logp(seq_logp, params, prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM):
    """`seq_logp(params, prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM) -> [B, M]` (a frozen policy's
    sequence log-probs: the reference pass) computed once per distinct completion of each prompt."""
    rows = bucket_rows(None, tokens_BMT, lengths_BM)
    if rows is None:
        return seq_logp(params, prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM)
    rows_BK, source_BM = rows
    logp_BK = np.asarray(
        seq_logp(params, prompts_BT, prompt_lengths_B, take_rows(tokens_BMT, rows_BK), take_rows(lengths_BM, rows_BK))
    )
    return np.take_along_axis(logp_BK, source_BM, axis=1)  # every row is some completion's: source >= 0


__all__ = ["bucket_rows", "distinct_logp", "gradient_rows", "put_rows", "take_rows"]
