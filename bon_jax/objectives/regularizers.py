"""Chow et al.'s regularisation (App. B, Table 2): KL to an EMA anchor of the policy, annealed coefficient.

The anchor KL itself is the `anchor_coef` option of every sample-based objective (J gets
-anchor_coef KL(pi || pi_anchor), estimated with RLOO weights from rollout.anchor_logp_BM). The trainer
keeps the anchor parameters with `ema_update` and passes `anchor_coef=anchor_kl_coef(step)` each step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["anchor_kl_coef", "ema_update"]

CHOW_ANCHOR_RATE = 0.01
JBOND_ANCHOR_RATE = 0.02


def anchor_kl_coef(step, *, start: float = 1.0, end: float = 0.075, delay: int = 10, duration: int = 2500):
    """KL-to-anchor coefficient at `step`: `start` for the first `delay` steps, then linear to `end` over
    `duration` steps, then `end` (Chow et al. App. B: 1.0 -> 0.075 over 2,500 steps after 10 steps).

    `step` may be a Python int (returns a float) or a jax scalar (returns a float32 array, jit-safe).
    """
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    if isinstance(step, (int, float)):
        frac = min(max((step - delay) / duration, 0.0), 1.0)
        return start + (end - start) * frac
    frac = jnp.clip((jnp.asarray(step, jnp.float32) - delay) / duration, 0.0, 1.0)
    return start + (end - start) * frac


def ema_update(anchor_params, params, rate: float = CHOW_ANCHOR_RATE):
    """anchor <- (1 - rate) anchor + rate params, leaf by leaf (Chow: rate 0.01; J-BOND: 0.02)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return jax.tree_util.tree_map(
        lambda a, p: (1.0 - rate) * a + rate * jnp.asarray(p, a.dtype), anchor_params, params
    )
