"""Grouped-query self-attention with RoPE, optional query/key norm, soft-capping and a sliding window.

The per-layer maths (projections, norms, RoPE, residuals) is written once in `transformer.decoder_layer`;
this module holds the attention params and the attention cores: `dot_attention` (the modules and the
sampler's prefill) and `shared_prefix_attention` (the sampler's decode step).

With N query heads in K groups of G = N / K (K = 1: multi-query; K = N: multi-head):

    q_BTNH = rope(norm?(x W_q)) * query_pre_attn_scalar^-1/2,  k_BSKH = rope(norm?(x W_k)),  v = x W_v
    logits[b,t,n,s] = soft_cap(<q[b,t,n], k[b,s,n // G]>, c_a), masked to -inf where not allowed
    out_BTD = softmax_s(logits) v W_o

Keys and values come from the tokens of this call, or, with a cache, from all S cache slots after this
call's keys are written at the cache's end index. The mask is the caller's `attn_mask_BTS` (padding and
causality), intersected with the sliding window on positions for local layers.

Params: `q_einsum/w` [N, D, H], `kv_einsum/w` [2, K, D, H], `attn_vec_einsum/w` [N, H, D],
optionally `query_norm/scale`, `key_norm/scale` [H].
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bon_jax.models.cache import LayerCache
from bon_jax.models.config import AttentionType, ModelConfig
from bon_jax.models.layers import Einsum, RMSNorm, soft_cap
from bon_jax.models.masks import sliding_window_mask

# Large finite negative rather than -inf: a fully masked row (a padding query) stays NaN-free.
_MASKED = -2.3819763e38


def rope_settings(cfg: ModelConfig, attention_type: AttentionType) -> dict:
    """`apply_rope`'s keyword arguments for a layer: local layers use their own base and no scaling."""
    if attention_type == AttentionType.LOCAL_SLIDING:
        return dict(base_frequency=cfg.local_rope_base_frequency, scale_factor=1.0)
    return dict(base_frequency=cfg.rope_base_frequency, scale_factor=cfg.rope_scale_factor)


def dot_attention(q_BTKGH, k_BSKH, v_BSKH, mask_BTS, *, cap: float | None, dtype):
    """`softmax_s(masked(soft_cap(<q, k_s>, cap))) v_s` for queries grouped by kv head: out_BTKGH in `dtype`.

    Scores are accumulated in float32; the probabilities are cast to `dtype` before the product with v.
    """
    logits_BTKGS = soft_cap(jnp.einsum("BTKGH,BSKH->BTKGS", q_BTKGH, k_BSKH,
                                       preferred_element_type=jnp.float32), cap)
    logits_BTKGS = jnp.where(mask_BTS[:, :, None, None, :], logits_BTKGS, _MASKED)
    probs_BTKGS = nn.softmax(logits_BTKGS, axis=-1).astype(dtype)
    return jnp.einsum("BTKGS,BSKH->BTKGH", probs_BTKGS, v_BSKH)


class Attention(nn.Module):
    """The attention params of one layer and what the module path does with them; the maths around them
    (query/key norm, RoPE, the query scale) is `transformer.decoder_layer`'s, shared with the sampler."""

    config: ModelConfig
    attention_type: AttentionType

    def setup(self):
        cfg = self.config
        N, K, D, H = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        self.q_einsum = Einsum((N, D, H), in_axis=1, out_axis=(0, 2), dtype=dt, param_dtype=pdt)
        self.kv_einsum = Einsum((2, K, D, H), in_axis=2, out_axis=(1, 3), batch_axis=(0,), dtype=dt,
                                param_dtype=pdt)
        self.attn_vec_einsum = Einsum((N, H, D), in_axis=(0, 1), out_axis=2, dtype=dt, param_dtype=pdt)
        if cfg.use_qk_norm:
            self.query_norm = RMSNorm(cfg.norm_eps, pdt)
            self.key_norm = RMSNorm(cfg.norm_eps, pdt)

    def project_qkv(self, x_BTD):
        """(q_BTNH, k_BTKH, v_BTKH) = x W_q, x W_k, x W_v."""
        q_BTNH = self.q_einsum("BTD,NDH->BTNH", x_BTD)
        kv_2BTKH = self.kv_einsum("BTD,CKDH->CBTKH", x_BTD)
        return q_BTNH, kv_2BTKH[0], kv_2BTKH[1]

    def norm(self, name: str, x):
        """`query_norm` or `key_norm`."""
        return getattr(self, name)(x)

    def project_out(self, out_BTNH):
        return self.attn_vec_einsum("BTNH,NHD->BTD", out_BTNH)

    def attend(self, q_BTNH, k_BTKH, v_BTKH, positions_BT, attn_mask_BTS, key_positions_BS,
               cache: LayerCache | None = None, end_index=None):
        """(out_BTNH, updated cache or None) for RoPE'd, scaled queries and RoPE'd keys.

        `key_positions_BS`: positions of the keys the mask's S axis refers to (this call's positions
        without a cache; the cache's positions with this call's written in, with one).
        """
        cfg = self.config
        K, G, H, dt = cfg.num_kv_heads, cfg.num_groups, cfg.head_dim, cfg.compute_dtype
        if cache is not None:
            cache = cache.write(k_BTKH, v_BTKH, end_index)
            k_BSKH, v_BSKH = cache.k_BSKH.astype(dt), cache.v_BSKH.astype(dt)
        else:
            k_BSKH, v_BSKH = k_BTKH, v_BTKH
        B, T, N = q_BTNH.shape[:3]
        mask_BTS = attn_mask_BTS
        if self.attention_type == AttentionType.LOCAL_SLIDING:
            mask_BTS = mask_BTS & sliding_window_mask(positions_BT, key_positions_BS,
                                                      cfg.sliding_window_size)
        out_BTKGH = dot_attention(q_BTNH.reshape(B, T, K, G, H), k_BSKH, v_BSKH, mask_BTS,
                                  cap=cfg.attn_logits_soft_cap, dtype=dt)
        return out_BTKGH.reshape(B, T, N, H), cache


def shared_prefix_attention(q_RNH, prefix_k_XPH, prefix_v_XPH, prefix_mask_BP, own_k_YSH, own_v_YSH,
                            own_mask_S, *, cap: float | None, dtype):
    """One query token per row against a prompt prefix shared by groups of rows plus each row's own keys.

    Keys/values are `DecodeKV` arrays: prefix [B * K, P, H], own [R * K, S, H] (K kv heads).
    Rows r = b * n + i (sample i of prompt b, R = B * n) all read prompt b's P prefix slots, masked by
    `prefix_mask_BP` (the same for the n samples: they decode in lock-step, so they sit at the same
    position), and their own S generated slots, masked by `own_mask_S` (the same for every row). With
    q = q_RNH (RoPE'd and scaled), kv head k = query head // G:

        logits = soft_cap(<q, key>, cap) over the P + S keys, masked;  out = softmax(logits) . values

    computed as one softmax over both parts (shared max, summed normaliser) without concatenating them.
    The prefix part is a [n * G, H] x [H, P] matmul per (prompt, kv head): its cost and memory traffic do
    not grow with n the way a prompt cache tiled n times does. Returns out_RNH in `dtype`.
    """
    B = prefix_mask_BP.shape[0]
    R, N, H = q_RNH.shape
    K, P, S = prefix_k_XPH.shape[0] // B, prefix_k_XPH.shape[1], own_k_YSH.shape[1]
    n, G = R // B, N // K
    prefix_k_BKPH, prefix_v_BKPH = (x.reshape(B, K, P, H) for x in (prefix_k_XPH, prefix_v_XPH))
    own_k_RKSH, own_v_RKSH = (x.reshape(R, K, S, H) for x in (own_k_YSH, own_v_YSH))
    f32 = jnp.float32
    q_BKQH = q_RNH.reshape(B, n, K, G, H).transpose(0, 2, 1, 3, 4).reshape(B, K, n * G, H)
    lp_BKnGP = jnp.einsum("BKQH,BKPH->BKQP", q_BKQH, prefix_k_BKPH,
                          preferred_element_type=f32).reshape(B, K, n, G, P)
    lp_BKnGP = jnp.where(prefix_mask_BP[:, None, None, None, :], soft_cap(lp_BKnGP, cap), _MASKED)
    lo_RKGS = jnp.einsum("RKGH,RKSH->RKGS", q_RNH.reshape(R, K, G, H), own_k_RKSH,
                         preferred_element_type=f32)
    lo_RKGS = jnp.where(own_mask_S, soft_cap(lo_RKGS, cap), _MASKED)
    to_R = lambda x_BKnG: x_BKnG.transpose(0, 2, 1, 3).reshape(R, K, G)
    m_BKnG = jnp.maximum(lp_BKnGP.max(-1), lo_RKGS.max(-1).reshape(B, n, K, G).transpose(0, 2, 1, 3))
    ep_BKnGP = jnp.exp(lp_BKnGP - m_BKnG[..., None])
    eo_RKGS = jnp.exp(lo_RKGS - to_R(m_BKnG)[..., None])
    z_RKG = to_R(ep_BKnGP.sum(-1)) + eo_RKGS.sum(-1)
    op_BKQH = jnp.einsum("BKQP,BKPH->BKQH", ep_BKnGP.reshape(B, K, n * G, P).astype(dtype),
                         prefix_v_BKPH, preferred_element_type=f32)
    op_RKGH = op_BKQH.reshape(B, K, n, G, H).transpose(0, 2, 1, 3, 4).reshape(R, K, G, H)
    oo_RKGH = jnp.einsum("RKGS,RKSH->RKGH", eo_RKGS.astype(dtype), own_v_RKSH,
                         preferred_element_type=f32)
    return ((op_RKGH + oo_RKGH) / z_RKG[..., None]).astype(dtype).reshape(R, N, H)
