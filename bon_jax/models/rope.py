"""Rotary position embedding, Gemma's half-split layout.

For head_dim E, frequencies `w_i = base^(-2i/E)`, i < E/2. With x = [x1, x2] split in halves and
angle `a_i = (p / scale_factor) * w_i` at position p:

    rope(x) = [x1 * cos(a) - x2 * sin(a),  x2 * cos(a) + x1 * sin(a)]

so `<rope(q, p), rope(k, s)>` depends on positions only through p - s.
"""

from __future__ import annotations

import jax.numpy as jnp


def apply_rope(x_BTHE, positions_BT, *, base_frequency: float, scale_factor: float = 1.0):
    """Rotates the last axis of `x_BTHE` by the angle of each token's position. Computed in float32."""
    half = x_BTHE.shape[-1] // 2
    fraction_E2 = 2 * jnp.arange(half, dtype=jnp.float32) / x_BTHE.shape[-1]
    inv_freq_E2 = base_frequency ** (-fraction_E2)
    angle_BTE2 = (positions_BT.astype(jnp.float32) / scale_factor)[..., None] * inv_freq_E2
    sin_BT1E2 = jnp.sin(angle_BTE2)[:, :, None, :]
    cos_BT1E2 = jnp.cos(angle_BTE2)[:, :, None, :]
    x1, x2 = jnp.split(x_BTHE.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BT1E2 - x2 * sin_BT1E2, x2 * cos_BT1E2 + x1 * sin_BT1E2], axis=-1)
    return out.astype(x_BTHE.dtype)
