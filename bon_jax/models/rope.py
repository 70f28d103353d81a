"""Rotary position embedding, Gemma's half-split layout.

For head_dim H, frequencies `w_i = base^(-2i/H)`, i < H/2. With x = [x1, x2] split in halves and
angle `a_i = (p / scale_factor) * w_i` at position p:

    rope(x) = [x1 * cos(a) - x2 * sin(a),  x2 * cos(a) + x1 * sin(a)]

so `<rope(q, p), rope(k, s)>` depends on positions only through p - s.
"""

from __future__ import annotations

import jax.numpy as jnp


def apply_rope(x_BTNH, positions_BT, *, base_frequency: float, scale_factor: float = 1.0):
    """Rotates the last axis of `x_BTNH` by the angle of each token's position. Computed in float32."""
    half = x_BTNH.shape[-1] // 2
    fraction_H2 = 2 * jnp.arange(half, dtype=jnp.float32) / x_BTNH.shape[-1]
    inv_freq_H2 = base_frequency ** (-fraction_H2)
    angle_BTH2 = (positions_BT.astype(jnp.float32) / scale_factor)[..., None] * inv_freq_H2
    sin_BT1H2 = jnp.sin(angle_BTH2)[:, :, None, :]
    cos_BT1H2 = jnp.cos(angle_BTH2)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos_BT1H2 - x2 * sin_BT1H2, x2 * cos_BT1H2 + x1 * sin_BT1H2], axis=-1)
    return out.astype(x_BTNH.dtype)
