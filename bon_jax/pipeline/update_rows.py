"""Differentiate only the samples that carry gradient (issue 14).

The printed BoN-RL estimators and SFT on Best-of-N samples weight sample j by u_j = P(j wins a random
N-subset) (`objectives.bon_winner_weights`): with M = N samples per prompt only the top-scored one (and any
tied with it) has u_j > 0, so of B x M log-probs the update differentiates, all but about B have weight 0 and
contribute nothing to the gradient. `ObjectiveSpec.winners_only` declares this (exactly, for beta =
anchor_coef = 0 and on-policy updates), and the update then runs the policy's forward and backward on K
rows per prompt instead of M:

    rows_BK   <- the rows with u > 0 first, then others to fill K (a power of two, so few shapes compile)
    logp_BK   <- log pi(y_{b, rows_BK[b, k]} | x_b)                    (differentiated)
    logp_BM   <- logp_BK scattered into the sampler's own log-probs of the rows (constants)

and the objective sees the full [B, M] log-probs as before. Loss and gradient are those of the full update:
the rows left out have weight exactly 0, so their (constant) log-probs only enter the objective's metrics.
tests/test_update_rows.py checks both halves: every objective declaring `winners_only` has a zero gradient
in log pi at every row with u = 0, and the loss and parameter gradients with `rows_BK` equal the full ones.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bon_jax import objectives


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


def bucket_rows(active_BM: np.ndarray | None) -> np.ndarray | None:
    """int32 [B, K]: each prompt's active rows first (in row order), then inactive ones up to K, with K the
    smallest power of two >= the largest count of active rows of a prompt; None if K would be M (nothing to
    save) or `active_BM` is None. The rows of a prompt are distinct."""
    if active_BM is None:
        return None
    rows_M = active_BM.shape[1]
    k = 1 << max(int(active_BM.sum(1).max()) - 1, 0).bit_length()
    if k >= rows_M:
        return None
    order_BM = np.argsort(~active_BM, axis=1, kind="stable")  # active (False after ~) first, row order kept
    return order_BM[:, :k].astype(np.int32)


def take_rows(x_BM, rows_BK):
    """x[b, rows_BK[b, k], ...] for every b, k: `[B, M, ...] -> [B, K, ...]`."""
    idx = rows_BK.reshape(rows_BK.shape + (1,) * (x_BM.ndim - 2))
    return jnp.take_along_axis(x_BM, idx, axis=1)


def put_rows(fixed_BM, rows_BK, values_BK):
    """fixed_BM with [b, rows_BK[b, k]] replaced by values_BK[b, k] (distinct rows per prompt); gradients
    flow to values_BK only."""
    hit_BKM = rows_BK[..., None] == jnp.arange(fixed_BM.shape[1])
    placed_BM = jnp.einsum("bkm,bk->bm", hit_BKM.astype(values_BK.dtype), values_BK)
    return jnp.where(jnp.any(hit_BKM, axis=1), placed_BM, fixed_BM.astype(values_BK.dtype))


__all__ = ["bucket_rows", "gradient_rows", "put_rows", "take_rows"]
