"""Padding, positions and attention masks for left-, right- or arbitrarily padded rows.

A row is described by `valid_BT` (True on real tokens). Real tokens keep their order, so:
- RoPE positions count real tokens: the first real token of each row is at position 0;
- causality can be decided by slot (s <= t) because slots and positions are ordered alike;
- padded slots are never attended to.
"""

from __future__ import annotations

import jax.numpy as jnp


def valid_from_pad(tokens_BT, pad_id: int):
    """True where `tokens_BT != pad_id`."""
    return tokens_BT != pad_id


def valid_from_lengths(lengths_B, length: int, padding_side: str = "right"):
    """[B, length] mask of each row's `lengths_B[b]` real tokens, at the end ('left' padding) or start."""
    idx_T = jnp.arange(length)
    lengths_B1 = jnp.asarray(lengths_B)[:, None]
    if padding_side == "right":
        return idx_T < lengths_B1
    if padding_side == "left":
        return idx_T >= length - lengths_B1
    raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")


def positions_from_valid(valid_BT):
    """RoPE positions: index of each real token among its row's real tokens; 0 on padding."""
    valid_BT = jnp.asarray(valid_BT)
    return jnp.where(valid_BT, jnp.cumsum(valid_BT, axis=-1) - 1, 0).astype(jnp.int32)


def causal_mask(valid_BT, cache_length: int | None = None):
    """[B, T, S] mask: query slot t may read key slot s iff s <= t and s is real.

    With `cache_length` (S >= T) the keys are the cache slots and slots >= T are masked: the mask for a
    prefill that writes the T tokens into slots [0, T) of an empty cache.
    """
    valid_BT = jnp.asarray(valid_BT, bool)
    T = valid_BT.shape[-1]
    S = T if cache_length is None else cache_length
    if S < T:
        raise ValueError(f"cache_length {S} < sequence length {T}")
    valid_BS = jnp.pad(valid_BT, ((0, 0), (0, S - T)))
    causal_TS = jnp.arange(S)[None, :] <= jnp.arange(T)[:, None]
    return causal_TS[None] & valid_BS[:, None, :]


def sliding_window_mask(query_positions_BT, key_positions_BS, window: int):
    """[B, T, S]: the key is among the query's last `window` positions, i.e. q - k < window."""
    return (query_positions_BT[:, :, None] - key_positions_BS[:, None, :]) < window


def last_valid_index(valid_BT):
    """[B] slot of each row's last real token (0 for an all-padding row)."""
    valid_BT = jnp.asarray(valid_BT, bool)
    T = valid_BT.shape[-1]
    return jnp.where(valid_BT.any(-1), T - 1 - jnp.argmax(valid_BT[:, ::-1], axis=-1), 0)


def take_last_valid(x_BT, valid_BT):
    """x at each row's last real token: [B, T, ...] -> [B, ...]. E.g. a value model's sequence score."""
    idx_B = last_valid_index(valid_BT)
    return jnp.take_along_axis(x_BT, idx_B.reshape((-1,) + (1,) * (x_BT.ndim - 1)), axis=1)[:, 0]
