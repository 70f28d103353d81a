"""The KV cache: a pytree of fixed-size arrays, written in place with `lax.dynamic_update_slice`.

Layout (S = cache length, the static maximum of prompt + generated tokens; G kv heads; E head_dim):

    KVCache(
      layers=(LayerCache(k_BSGE, v_BSGE), ...),  # one per layer, compute dtype
      positions_BS,                               # int32 RoPE position of the token in each slot
      end_index,                                  # int32 scalar: next slot to write, shared by all rows
    )

Slots are shared by rows: a forward of T tokens writes slots [end_index, end_index + T) of every row.
Which slots a query may read is the caller's attention mask (padding, causality); the stored positions let
local layers apply the sliding window by position, so left- and right-padded rows are both exact.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from bon_jax.models.config import ModelConfig


@flax.struct.dataclass
class LayerCache:
    k_BSGE: jax.Array
    v_BSGE: jax.Array

    def write(self, k_BTGE, v_BTGE, end_index) -> LayerCache:
        start = (0, end_index, 0, 0)
        return LayerCache(
            k_BSGE=lax.dynamic_update_slice(self.k_BSGE, k_BTGE.astype(self.k_BSGE.dtype), start),
            v_BSGE=lax.dynamic_update_slice(self.v_BSGE, v_BTGE.astype(self.v_BSGE.dtype), start))


@flax.struct.dataclass
class KVCache:
    layers: tuple[LayerCache, ...]
    positions_BS: jax.Array
    end_index: jax.Array

    @property
    def batch_size(self) -> int:
        return self.positions_BS.shape[0]

    @property
    def length(self) -> int:
        return self.positions_BS.shape[1]

    def write_positions(self, positions_BT) -> jax.Array:
        """Key positions [B, S] once `positions_BT` are stored at the current end index."""
        return lax.dynamic_update_slice(
            self.positions_BS, positions_BT.astype(jnp.int32), (0, self.end_index))


def init_cache(cfg: ModelConfig, batch_size: int, length: int, dtype=None) -> KVCache:
    """An empty cache of `length` slots per row (zeros; end_index 0)."""
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (batch_size, length, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        layers=tuple(LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                     for _ in range(cfg.num_layers)),
        positions_BS=jnp.zeros((batch_size, length), jnp.int32),
        end_index=jnp.zeros((), jnp.int32))


def tile_cache(cache: KVCache, n: int) -> KVCache:
    """Repeats each row n times: row b of the input becomes rows b*n .. b*n + n - 1 ([B*n, ...])."""
    rep = lambda x: jnp.repeat(x, n, axis=0)
    return KVCache(
        layers=tuple(LayerCache(rep(c.k_BSGE), rep(c.v_BSGE)) for c in cache.layers),
        positions_BS=rep(cache.positions_BS),
        end_index=cache.end_index)


@flax.struct.dataclass
class DecodeKV:
    """Keys and values of every layer for the Best-of-N decode step (`transformer.decode_step`).

        k[l], v[l]: [X * G, S, E]  (X = B prompt rows for the shared prompt part, R = B * M sample rows
                                    for the generated part; G kv heads, row-major; S slots)

    Kv-head-major so that the decode step's dots read a contiguous [S, E] block per (row, kv head) with
    no transpose, and 3-D so that a write of one slot inside the decode loop is a plain in-place
    dynamic-update-slice (with a size-1 kv-head axis XLA fused a reshape into it and copied the whole
    cache several times per step: 10% of a step). The prompt part is written once by the prefill and read by all M samples of its
    prompt; the generated part is written one slot per step (`write`).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @property
    def length(self) -> int:
        return self.k[0].shape[1]

    @classmethod
    def from_cache(cls, cache: KVCache) -> DecodeKV:
        """A prefilled `KVCache` ([B, S, G, E] per layer) in the decode layout."""
        t = lambda x: jnp.swapaxes(x, 1, 2).reshape(-1, x.shape[1], x.shape[3])
        return cls(k=tuple(t(c.k_BSGE) for c in cache.layers), v=tuple(t(c.v_BSGE) for c in cache.layers))

    @classmethod
    def zeros(cls, cfg: ModelConfig, rows: int, length: int, dtype=None) -> DecodeKV:
        dtype = cfg.compute_dtype if dtype is None else dtype
        shape = (rows * cfg.num_kv_heads, length, cfg.head_dim)
        return cls(k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
                   v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)))

    def take_slots(self, slots_BW, layers) -> DecodeKV:
        """Slots `slots_BW[b]` of prompt b ([B, W] int) of the layers in `layers`: [B * G, W, E] each, in
        the order of slots_BW; None for the other layers. One gather, e.g. once per sampling call."""
        G = self.k[0].shape[0] // slots_BW.shape[0]
        idx_XW1 = jnp.repeat(slots_BW, G, axis=0)[:, :, None]
        take = lambda i, x: jnp.take_along_axis(x, idx_XW1, axis=1) if i in layers else None
        return DecodeKV(k=tuple(take(i, x) for i, x in enumerate(self.k)),
                        v=tuple(take(i, x) for i, x in enumerate(self.v)))
