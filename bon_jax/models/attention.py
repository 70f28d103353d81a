"""Grouped-query self-attention with RoPE, optional query/key norm, soft-capping and a sliding window.

The per-layer maths (projections, norms, RoPE, residuals) is written once in `transformer.decoder_layer`;
this module holds the attention params and the attention cores: `dot_attention` (the modules and the
sampler's prefill) and `shared_prefix_attention` (the sampler's decode step).

With H query heads in G groups of Q = H / G (G = 1: multi-query; G = H: multi-head):

    q_BTHE = rope(norm?(x W_q)) * query_pre_attn_scalar^-1/2,  k_BSGE = rope(norm?(x W_k)),  v = x W_v
    logits[b,t,h,s] = soft_cap(<q[b,t,h], k[b,s,h // Q]>, c_a), masked to -inf where not allowed
    out_BTD = softmax_s(logits) v W_o

Keys and values come from the tokens of this call, or, with a cache, from all S cache slots after this
call's keys are written at the cache's end index. The mask is the caller's `attn_mask_BTS` (padding and
causality), intersected with the sliding window on positions for local layers.

Params: `q_einsum/w` [H, D, E], `kv_einsum/w` [2, G, D, E], `attn_vec_einsum/w` [H, E, D],
optionally `query_norm/scale`, `key_norm/scale` [E].
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


def dot_attention(q_BTGQE, k_BSGE, v_BSGE, mask_BTS, *, cap: float | None, dtype):
    """`softmax_s(masked(soft_cap(<q, k_s>, cap))) v_s` for queries grouped by kv head: out_BTGQE in `dtype`.

    Scores are accumulated in float32; the probabilities are cast to `dtype` before the product with v.
    """
    logits_BTGQS = soft_cap(jnp.einsum("BTGQE,BSGE->BTGQS", q_BTGQE, k_BSGE,
                                       preferred_element_type=jnp.float32), cap)
    logits_BTGQS = jnp.where(mask_BTS[:, :, None, None, :], logits_BTGQS, _MASKED)
    probs_BTGQS = nn.softmax(logits_BTGQS, axis=-1).astype(dtype)
    return jnp.einsum("BTGQS,BSGE->BTGQE", probs_BTGQS, v_BSGE)


class Attention(nn.Module):
    """The attention params of one layer and what the module path does with them; the maths around them
    (query/key norm, RoPE, the query scale) is `transformer.decoder_layer`'s, shared with the sampler."""

    config: ModelConfig
    attention_type: AttentionType

    def setup(self):
        cfg = self.config
        H, G, D, E = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        self.q_einsum = Einsum((H, D, E), in_axis=1, out_axis=(0, 2), dtype=dt, param_dtype=pdt)
        self.kv_einsum = Einsum((2, G, D, E), in_axis=2, out_axis=(1, 3), batch_axis=(0,), dtype=dt,
                                param_dtype=pdt)
        self.attn_vec_einsum = Einsum((H, E, D), in_axis=(0, 1), out_axis=2, dtype=dt, param_dtype=pdt)
        if cfg.use_qk_norm:
            self.query_norm = RMSNorm(cfg.norm_eps, pdt)
            self.key_norm = RMSNorm(cfg.norm_eps, pdt)

    def project_qkv(self, x_BTD):
        """(q_BTHE, k_BTGE, v_BTGE) = x W_q, x W_k, x W_v."""
        q_BTHE = self.q_einsum("BTD,HDE->BTHE", x_BTD)
        kv_BT2GE = self.kv_einsum("BTD,CGDE->BTCGE", x_BTD)
        return q_BTHE, kv_BT2GE[:, :, 0], kv_BT2GE[:, :, 1]

    def norm(self, name: str, x):
        """`query_norm` or `key_norm`."""
        return getattr(self, name)(x)

    def project_out(self, out_BTHE):
        return self.attn_vec_einsum("BTHE,HED->BTD", out_BTHE)

    def attend(self, q_BTHE, k_BTGE, v_BTGE, positions_BT, attn_mask_BTS, key_positions_BS,
               cache: LayerCache | None = None, end_index=None):
        """(out_BTHE, updated cache or None) for RoPE'd, scaled queries and RoPE'd keys.

        `key_positions_BS`: positions of the keys the mask's S axis refers to (this call's positions
        without a cache; the cache's positions with this call's written in, with one).
        """
        cfg = self.config
        G, Q, E, dt = cfg.num_kv_heads, cfg.num_groups, cfg.head_dim, cfg.compute_dtype
        if cache is not None:
            cache = cache.write(k_BTGE, v_BTGE, end_index)
            k_BSGE, v_BSGE = cache.k_BSGE.astype(dt), cache.v_BSGE.astype(dt)
        else:
            k_BSGE, v_BSGE = k_BTGE, v_BTGE
        B, T, H = q_BTHE.shape[:3]
        mask_BTS = attn_mask_BTS
        if self.attention_type == AttentionType.LOCAL_SLIDING:
            mask_BTS = mask_BTS & sliding_window_mask(positions_BT, key_positions_BS,
                                                      cfg.sliding_window_size)
        out_BTGQE = dot_attention(q_BTHE.reshape(B, T, G, Q, E), k_BSGE, v_BSGE, mask_BTS,
                                  cap=cfg.attn_logits_soft_cap, dtype=dt)
        return out_BTGQE.reshape(B, T, H, E), cache


def shared_prefix_attention(q_RHE, prefix_k_XPE, prefix_v_XPE, prefix_mask_BP, own_k_YSE, own_v_YSE,
                            own_mask_S, *, cap: float | None, dtype):
    """One query token per row against a prompt prefix shared by groups of rows plus each row's own keys.

    Keys/values are `DecodeKV` arrays: prefix [B * G, P, E], own [R * G, S, E] (G kv heads).
    Rows r = b * M + i (sample i of prompt b, R = B * M) all read prompt b's P prefix slots, masked by
    `prefix_mask_BP` (the same for the M samples: they decode in lock-step, so they sit at the same
    position), and their own S generated slots, masked by `own_mask_S` (the same for every row). With
    q = q_RHE (RoPE'd and scaled), kv head k = query head // Q:

        logits = soft_cap(<q, key>, cap) over the P + S keys, masked;  out = softmax(logits) . values

    computed as one softmax over both parts (shared max, summed normaliser) without concatenating them.
    The prefix part is a [M * Q, E] x [E, P] matmul per (prompt, kv head): its cost and memory traffic do
    not grow with M the way a prompt cache tiled M times does. Returns out_RHE in `dtype`.
    """
    B = prefix_mask_BP.shape[0]
    R, H, E = q_RHE.shape
    G, P, S = prefix_k_XPE.shape[0] // B, prefix_k_XPE.shape[1], own_k_YSE.shape[1]
    M, Q = R // B, H // G
    prefix_k_BGPE, prefix_v_BGPE = (x.reshape(B, G, P, E) for x in (prefix_k_XPE, prefix_v_XPE))
    own_k_RGSE, own_v_RGSE = (x.reshape(R, G, S, E) for x in (own_k_YSE, own_v_YSE))
    f32 = jnp.float32
    # J = M * Q: the query rows of one prompt and kv head, one matmul against its prefix keys
    q_BGJE = q_RHE.reshape(B, M, G, Q, E).transpose(0, 2, 1, 3, 4).reshape(B, G, M * Q, E)
    lp_BGMQP = jnp.einsum("BGJE,BGPE->BGJP", q_BGJE, prefix_k_BGPE,
                          preferred_element_type=f32).reshape(B, G, M, Q, P)
    lp_BGMQP = jnp.where(prefix_mask_BP[:, None, None, None, :], soft_cap(lp_BGMQP, cap), _MASKED)
    lo_RGQS = jnp.einsum("RGQE,RGSE->RGQS", q_RHE.reshape(R, G, Q, E), own_k_RGSE,
                         preferred_element_type=f32)
    lo_RGQS = jnp.where(own_mask_S, soft_cap(lo_RGQS, cap), _MASKED)
    to_R = lambda x_BGMQ: x_BGMQ.transpose(0, 2, 1, 3).reshape(R, G, Q)
    m_BGMQ = jnp.maximum(lp_BGMQP.max(-1), lo_RGQS.max(-1).reshape(B, M, G, Q).transpose(0, 2, 1, 3))
    ep_BGMQP = jnp.exp(lp_BGMQP - m_BGMQ[..., None])
    eo_RGQS = jnp.exp(lo_RGQS - to_R(m_BGMQ)[..., None])
    z_RGQ = to_R(ep_BGMQP.sum(-1)) + eo_RGQS.sum(-1)
    op_BGJE = jnp.einsum("BGJP,BGPE->BGJE", ep_BGMQP.reshape(B, G, M * Q, P).astype(dtype),
                         prefix_v_BGPE, preferred_element_type=f32)
    op_RGQE = op_BGJE.reshape(B, G, M, Q, E).transpose(0, 2, 1, 3, 4).reshape(R, G, Q, E)
    oo_RGQE = jnp.einsum("RGQS,RGSE->RGQE", eo_RGQS.astype(dtype), own_v_RGSE,
                         preferred_element_type=f32)
    return ((op_RGQE + oo_RGQE) / z_RGQ[..., None]).astype(dtype).reshape(R, H, E)
