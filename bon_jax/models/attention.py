"""Grouped-query self-attention with RoPE, optional query/key norm, soft-capping and a sliding window.

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
from bon_jax.models.rope import apply_rope

# Large finite negative rather than -inf: a fully masked row (a padding query) stays NaN-free.
_MASKED = -2.3819763e38


class Attention(nn.Module):
    config: ModelConfig
    attention_type: AttentionType

    @nn.compact
    def __call__(self, x_BTD, positions_BT, attn_mask_BTS, key_positions_BS,
                 cache: LayerCache | None = None, end_index=None):
        """Returns (out_BTD, updated cache or None).

        `key_positions_BS`: positions of the keys the mask's S axis refers to (this call's positions
        without a cache; the cache's positions with this call's written in, with one).
        """
        cfg = self.config
        N, K, G, D, H = cfg.num_heads, cfg.num_kv_heads, cfg.num_groups, cfg.embed_dim, cfg.head_dim
        dt, pdt = cfg.compute_dtype, cfg.params_dtype
        q_BTNH = Einsum((N, D, H), in_axis=1, out_axis=(0, 2), dtype=dt, param_dtype=pdt,
                        name="q_einsum")("BTD,NDH->BTNH", x_BTD)
        kv_2BTKH = Einsum((2, K, D, H), in_axis=2, out_axis=(1, 3), batch_axis=(0,), dtype=dt,
                          param_dtype=pdt, name="kv_einsum")("BTD,CKDH->CBTKH", x_BTD)
        k_BTKH, v_BTKH = kv_2BTKH[0], kv_2BTKH[1]
        if cfg.use_qk_norm:
            q_BTNH = RMSNorm(cfg.norm_eps, pdt, name="query_norm")(q_BTNH)
            k_BTKH = RMSNorm(cfg.norm_eps, pdt, name="key_norm")(k_BTKH)

        is_local = self.attention_type == AttentionType.LOCAL_SLIDING
        rope = dict(base_frequency=cfg.local_rope_base_frequency, scale_factor=1.0) if is_local else \
            dict(base_frequency=cfg.rope_base_frequency, scale_factor=cfg.rope_scale_factor)
        q_BTNH = apply_rope(q_BTNH, positions_BT, **rope) * jnp.asarray(cfg.query_scale, dt)
        k_BTKH = apply_rope(k_BTKH, positions_BT, **rope)

        if cache is not None:
            cache = cache.write(k_BTKH, v_BTKH, end_index)
            k_BSKH, v_BSKH = cache.k_BSKH.astype(dt), cache.v_BSKH.astype(dt)
        else:
            k_BSKH, v_BSKH = k_BTKH, v_BTKH

        B, T = x_BTD.shape[:2]
        q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
        logits_BTKGS = jnp.einsum("BTKGH,BSKH->BTKGS", q_BTKGH, k_BSKH,
                                  preferred_element_type=jnp.float32)
        logits_BTKGS = soft_cap(logits_BTKGS, cfg.attn_logits_soft_cap)
        mask_BTS = attn_mask_BTS
        if is_local:
            mask_BTS = mask_BTS & sliding_window_mask(positions_BT, key_positions_BS,
                                                      cfg.sliding_window_size)
        logits_BTKGS = jnp.where(mask_BTS[:, :, None, None, :], logits_BTKGS, _MASKED)
        probs_BTKGS = nn.softmax(logits_BTKGS, axis=-1).astype(dt)
        out_BTNH = jnp.einsum("BTKGS,BSKH->BTKGH", probs_BTKGS, v_BSKH).reshape(B, T, N, H)
        out_BTD = Einsum((N, H, D), in_axis=(0, 1), out_axis=2, dtype=dt, param_dtype=pdt,
                         name="attn_vec_einsum")("BTNH,NHD->BTD", out_BTNH)
        return out_BTD, cache


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
