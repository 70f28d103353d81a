"""The Gemma-family decoder and its scalar-head (verifier / value) variant.

    x_0 = embed(tokens) * sqrt(D)
    per layer:  y = x + post_attn_norm?(attn(pre_attn_norm(x)))
                x' = y + post_ffw_norm?(mlp(pre_ffw_norm(y)))
    h = final_norm(x_L)
    Transformer:            logits_BTV = soft_cap(h E^T, c_f)   (E: the tied embedding, float32 logits)
    ScalarHeadTransformer:  values_BT  = h w + b               (a Dense(1) head, float32)

Call signature of both: `apply(params, tokens_BT, positions_BT, attn_mask_BTS, cache=None)`
returning `(outputs, cache)`. Without a cache S = T; with one, S is the cache length, the T tokens are
written at `cache.end_index` and the returned cache has `end_index + T`. Masks and positions come from
`bon_jax.models.masks`. `Transformer.hidden_states` / `Transformer.logits` split the call so that callers
can unembed only the positions they need.

Param tree: {embedder: {input_embedding}, layer_i: {pre_attention_norm, attn, post_attention_norm?,
pre_ffw_norm, mlp, post_ffw_norm?}, final_norm} (+ value_head: {kernel, bias} for the scalar variant), so
a value model can start from a policy's params.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from bon_jax.models.attention import _MASKED, Attention, shared_prefix_attention
from bon_jax.models.cache import DecodeKV, KVCache, LayerCache
from bon_jax.models.config import AttentionType, ModelConfig
from bon_jax.models.layers import Embedder, FeedForward, RMSNorm, next_token_logprobs, soft_cap
from bon_jax.models.masks import positions_from_valid, take_last_valid
from bon_jax.models.rope import apply_rope


class Block(nn.Module):
    """One decoder layer (attention then GeGLU, each with pre-norm and optional post-norm)."""

    config: ModelConfig
    attention_type: AttentionType

    @nn.compact
    def __call__(self, x_BTD, positions_BT, attn_mask_BTS, key_positions_BS,
                 cache: LayerCache | None, end_index):
        cfg = self.config
        norm = lambda name: RMSNorm(cfg.norm_eps, cfg.params_dtype, name=name)
        attn_BTD, cache = Attention(cfg, self.attention_type, name="attn")(
            norm("pre_attention_norm")(x_BTD), positions_BT, attn_mask_BTS, key_positions_BS,
            cache, end_index)
        if cfg.use_post_attn_norm:
            attn_BTD = norm("post_attention_norm")(attn_BTD)
        x_BTD = x_BTD + attn_BTD
        ffw_BTD = FeedForward(cfg.embed_dim, cfg.mlp_dim, cfg.compute_dtype, cfg.params_dtype,
                              name="mlp")(norm("pre_ffw_norm")(x_BTD))
        if cfg.use_post_ffw_norm:
            ffw_BTD = norm("post_ffw_norm")(ffw_BTD)
        return x_BTD + ffw_BTD, cache


class _Backbone(nn.Module):
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embedder = Embedder(cfg.vocab_size, cfg.embed_dim, cfg.compute_dtype, cfg.params_dtype)
        self.blocks = [Block(cfg, t, name=f"layer_{i}") for i, t in enumerate(cfg.attention_types)]
        self.final_norm = RMSNorm(cfg.norm_eps, cfg.params_dtype)

    def hidden_states(self, tokens_BT, positions_BT, attn_mask_BTS, cache: KVCache | None = None):
        """(final-normed hidden states h_BTD, updated cache or None)."""
        positions_BT = positions_BT.astype(jnp.int32)
        if cache is None:
            key_positions_BS, end_index, layer_caches = positions_BT, None, [None] * len(self.blocks)
        else:
            key_positions_BS, end_index = cache.write_positions(positions_BT), cache.end_index
            layer_caches = cache.layers
        x_BTD = self.embedder.encode(tokens_BT)
        new_layers = []
        for block, layer_cache in zip(self.blocks, layer_caches):
            x_BTD, layer_cache = block(x_BTD, positions_BT, attn_mask_BTS, key_positions_BS,
                                       layer_cache, end_index)
            new_layers.append(layer_cache)
        if cache is not None:
            cache = KVCache(layers=tuple(new_layers), positions_BS=key_positions_BS,
                            end_index=end_index + tokens_BT.shape[1])
        return self.final_norm(x_BTD), cache


    def logits(self, h_BTD):
        """Tied unembedding with the final soft-cap: [..., D] -> [..., V] float32."""
        return soft_cap(self.embedder.decode(h_BTD), self.config.final_logit_soft_cap)


class Transformer(_Backbone):
    """The language model: `apply(params, tokens_BT, positions_BT, attn_mask_BTS, cache)`
    -> (logits_BTV float32, cache)."""

    def __call__(self, tokens_BT, positions_BT, attn_mask_BTS, cache: KVCache | None = None):
        h_BTD, cache = self.hidden_states(tokens_BT, positions_BT, attn_mask_BTS, cache)
        return self.logits(h_BTD), cache


class ScalarHeadTransformer(_Backbone):
    """Verifier / value model: same backbone, per-token scalars `values_BT` (float32) from a Dense(1)
    on the final-normed hidden states. Use `masks.take_last_valid(values_BT, valid_BT)` for a
    sequence's score."""

    def setup(self):
        super().setup()
        self.value_head = nn.Dense(1, dtype=self.config.compute_dtype,
                                   param_dtype=self.config.params_dtype)

    def __call__(self, tokens_BT, positions_BT, attn_mask_BTS, cache: KVCache | None = None):
        h_BTD, cache = self.hidden_states(tokens_BT, positions_BT, attn_mask_BTS, cache)
        return self.value_head(h_BTD)[..., 0].astype(jnp.float32), cache

    def values_and_surprisal(self, tokens_BT, positions_BT, attn_mask_BTS):
        """(values_BT, surprisal_BT), both float32: surprisal_BT[b, t] = -log p(tokens[b, t] | tokens[b, <t])
        under the backbone's own tied language-model head (0 at t = 0). The embedder is shared with the
        policy the verifier starts from, so at initialisation this is the policy's own surprisal."""
        h_BTD, _ = self.hidden_states(tokens_BT, positions_BT, attn_mask_BTS)
        surprisal_BT = -next_token_logprobs(self.logits(h_BTD), tokens_BT)
        return self.value_head(h_BTD)[..., 0].astype(jnp.float32), surprisal_BT


# ----------------------------------------------------------------------------- Best-of-N decode step
#
# The sampler's inner loop, written against the params directly rather than through the modules above:
# its weights are re-laid out ONCE per sampling call (`decode_weights`: fused q/k/v and gate/up
# projections as plain 2-D matrices in the compute dtype), where the modules' 3-D einsum weights would
# be transposed by XLA on every step of the loop, and its attention reads a prompt prefix shared by the
# N samples of each prompt (`attention.shared_prefix_attention`). The maths is the modules' maths; the
# tests check it against a full uncached forward.


def decode_weights(params, cfg: ModelConfig) -> dict:
    """`Transformer` params -> the decode step's weights (compute dtype; norm scales as stored).

    Per layer: qkv [D, (N + 2K) H] (columns: q heads, then k heads, then v heads), o [N H, D],
    gate_up [D, 2F] (gate columns first), down [F, D], and the norm scales; plus embedding [V, D].
    """
    N, K, D, H, F = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim, cfg.mlp_dim
    dt = cfg.compute_dtype
    layers = []
    for i in range(cfg.num_layers):
        p = params[f"layer_{i}"]
        attn, mlp = p["attn"], p["mlp"]
        q_DX = jnp.transpose(attn["q_einsum"]["w"], (1, 0, 2)).reshape(D, N * H)
        kv_DX = jnp.transpose(attn["kv_einsum"]["w"], (2, 0, 1, 3)).reshape(D, 2 * K * H)
        layer = dict(
            qkv=jnp.concatenate([q_DX, kv_DX], axis=1).astype(dt),
            o=attn["attn_vec_einsum"]["w"].reshape(N * H, D).astype(dt),
            gate_up=jnp.transpose(mlp["gating_einsum"]["w"], (1, 0, 2)).reshape(D, 2 * F).astype(dt),
            down=mlp["linear"]["w"].astype(dt),
            norms={k: v["scale"] for k, v in p.items() if k.endswith("_norm")},
            qk_norms={k: v["scale"] for k, v in attn.items() if k.endswith("_norm")})
        layers.append(layer)
    return dict(layers=tuple(layers), embedding=params["embedder"]["input_embedding"],
                final_norm=params["final_norm"]["scale"])


@flax.struct.dataclass
class PrefixWindow:
    """What the local (sliding-window) layers of the decode step read of the prompts: the slots of each
    prompt's last W = min(window, P) real tokens, gathered once per sampling call (`prefix_window`).

    A decode query sits at a position >= the prompt length L, so a local layer can only see prompt
    positions > L - window: all of them are among these W slots, and the rest of the prompt is masked
    anyway. Attending over W slots instead of P gives the same softmax (the dropped slots contribute
    exp(-inf) = 0) at W / P of the cost.

        kv: `DecodeKV` [B * K, W, H] for the local layers (None for the global ones)
        valid_BW: the slot holds a real token (False for prompts shorter than W)
        positions_BW: its position (L - W + w)
    """

    kv: DecodeKV
    valid_BW: jax.Array
    positions_BW: jax.Array


def prefix_window(cfg: ModelConfig, prefix: DecodeKV, prefix_valid_BP, prefix_positions_BP):
    """The `PrefixWindow` of the prompts, or None when no layer is local or the window is not shorter
    than the prompt width P (nothing to save). Any padding (left, right, both, or inside the prompt):
    the w-th slot is the one holding the real token at position L - W + w."""
    local = tuple(i for i, t in enumerate(cfg.attention_types) if t == AttentionType.LOCAL_SLIDING)
    P = prefix_valid_BP.shape[1]
    if not local or cfg.sliding_window_size is None or cfg.sliding_window_size >= P:
        return None
    W = cfg.sliding_window_size
    want_BW = prefix_valid_BP.sum(-1).astype(jnp.int32)[:, None] - W + jnp.arange(W, dtype=jnp.int32)
    hit_BWP = prefix_valid_BP[:, None, :] & (prefix_positions_BP[:, None, :] == want_BW[:, :, None])
    slots_BW = jnp.argmax(hit_BWP, axis=-1).astype(jnp.int32)
    return PrefixWindow(kv=prefix.take_slots(slots_BW, local), valid_BW=want_BW >= 0,
                        positions_BW=jnp.maximum(want_BW, 0))


def _norm(cfg: ModelConfig, scale, x):
    return RMSNorm(cfg.norm_eps, cfg.params_dtype).apply({"params": {"scale": scale}}, x)


PREFILL_CHUNK = 128  # query slots per attention chunk of `prefill`


def prefill(w: dict, cfg: ModelConfig, tokens_BT, valid_BT, *, chunk: int = PREFILL_CHUNK):
    """The sampler's prefill: prompts -> (last real token's logits_BV float32, `DecodeKV` [B * K, T, H]).

    The maths of `Transformer` with `masks.causal_mask(valid_BT)` and `positions_from_valid(valid_BT)`,
    written against `decode_weights` (plain 2-D matmuls; the modules' 3-D einsum weights cost a
    transpose per call) and with causal attention in query chunks of `chunk` slots: chunk [t0, t1) reads
    key slots [0, t1) only (a key after the query is masked whatever the padding), about half the
    attention work of a full [T, T] score matrix at T = 4 chunks. Only the last real token is unembedded.
    """
    N, K, G, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.num_groups, cfg.head_dim, cfg.embed_dim
    dt = cfg.compute_dtype
    B, T = tokens_BT.shape
    valid_BT = valid_BT.astype(bool)
    positions_BT = positions_from_valid(valid_BT)
    x_BTD = jnp.take(w["embedding"], tokens_BT, axis=0).astype(dt) * jnp.asarray(D**0.5, dt)
    ks, vs = [], []
    for layer, kind in zip(w["layers"], cfg.attention_types):
        norms = layer["norms"]
        qkv_BTX = jnp.dot(_norm(cfg, norms["pre_attention_norm"], x_BTD), layer["qkv"])
        q_BTNH = qkv_BTX[..., :N * H].reshape(B, T, N, H)
        k_BTKH = qkv_BTX[..., N * H:(N + K) * H].reshape(B, T, K, H)
        v_BTKH = qkv_BTX[..., (N + K) * H:].reshape(B, T, K, H)
        if cfg.use_qk_norm:
            q_BTNH = _norm(cfg, layer["qk_norms"]["query_norm"], q_BTNH)
            k_BTKH = _norm(cfg, layer["qk_norms"]["key_norm"], k_BTKH)
        local = kind == AttentionType.LOCAL_SLIDING
        rope = dict(base_frequency=cfg.local_rope_base_frequency, scale_factor=1.0) if local else \
            dict(base_frequency=cfg.rope_base_frequency, scale_factor=cfg.rope_scale_factor)
        q_BTNH = apply_rope(q_BTNH, positions_BT, **rope) * jnp.asarray(cfg.query_scale, dt)
        k_BTKH = apply_rope(k_BTKH, positions_BT, **rope)
        ks.append(jnp.swapaxes(k_BTKH, 1, 2).reshape(B * K, T, H))
        vs.append(jnp.swapaxes(v_BTKH, 1, 2).reshape(B * K, T, H))
        outs = []
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            q_BCKGH = q_BTNH[:, t0:t1].reshape(B, t1 - t0, K, G, H)
            logits_BCKGS = soft_cap(jnp.einsum("BCKGH,BSKH->BCKGS", q_BCKGH, k_BTKH[:, :t1],
                                               preferred_element_type=jnp.float32),
                                    cfg.attn_logits_soft_cap)
            mask_BCS = (jnp.arange(t1)[None, :] <= jnp.arange(t0, t1)[:, None])[None] & \
                valid_BT[:, None, :t1]
            if local:
                mask_BCS = mask_BCS & (positions_BT[:, t0:t1, None] - positions_BT[:, None, :t1]
                                       < cfg.sliding_window_size)
            logits_BCKGS = jnp.where(mask_BCS[:, :, None, None, :], logits_BCKGS, _MASKED)
            probs_BCKGS = nn.softmax(logits_BCKGS, axis=-1).astype(dt)
            outs.append(jnp.einsum("BCKGS,BSKH->BCKGH", probs_BCKGS, v_BTKH[:, :t1]))
        out_BTX = jnp.concatenate(outs, axis=1).reshape(B, T, N * H)
        attn_BTD = jnp.dot(out_BTX, layer["o"])
        if cfg.use_post_attn_norm:
            attn_BTD = _norm(cfg, norms["post_attention_norm"], attn_BTD)
        x_BTD = x_BTD + attn_BTD
        gate_up_BTX = jnp.dot(_norm(cfg, norms["pre_ffw_norm"], x_BTD), layer["gate_up"])
        F = gate_up_BTX.shape[-1] // 2
        ffw_BTD = jnp.dot(nn.gelu(gate_up_BTX[..., :F], approximate=True) * gate_up_BTX[..., F:],
                          layer["down"])
        if cfg.use_post_ffw_norm:
            ffw_BTD = _norm(cfg, norms["post_ffw_norm"], ffw_BTD)
        x_BTD = x_BTD + ffw_BTD
    h_BD = _norm(cfg, w["final_norm"], take_last_valid(x_BTD, valid_BT))
    logits_BV = jnp.einsum("BD,VD->BV", h_BD, w["embedding"].astype(dt),
                           preferred_element_type=jnp.float32)
    return soft_cap(logits_BV, cfg.final_logit_soft_cap), DecodeKV(k=tuple(ks), v=tuple(vs))


def decode_step(w: dict, cfg: ModelConfig, tokens_R, positions_R, prefix: DecodeKV, prefix_valid_BP,
                prefix_positions_BP, own: DecodeKV, slot, window: PrefixWindow | None = None):
    """One token per row through the decoder, reading a shared prompt prefix and the rows' own slots.

    Args:
      w: `decode_weights(params, cfg)`.
      tokens_R, positions_R: the token fed to each of the R = B * n rows and its RoPE position; the n
        rows of a prompt (r = b * n + i) must be at the same position (lock-step decoding).
      prefix: the B prompts' keys/values (`DecodeKV` [B * K, P, H]); prefix_valid_BP marks real slots,
        prefix_positions_BP their positions (for the sliding window of local layers).
      own: the rows' generated keys/values ([R * K, S, H]); this token's are written at slot `slot`, and
        the row reads its own slots 0 .. slot, which hold positions positions_R - slot .. positions_R.
      window: `prefix_window(cfg, prefix, prefix_valid_BP, prefix_positions_BP)`: local layers then read
        only the prompts' last W slots (same result, less work); None: every layer reads all P slots.
    Returns:
      (logits_RV float32 after the final soft-cap, own with this token's keys/values written).
    """
    N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.embed_dim
    dt = cfg.compute_dtype
    R, B = tokens_R.shape[0], prefix_valid_BP.shape[0]
    n, S = R // B, own.length
    q_pos_B = positions_R.reshape(B, n)[:, 0]
    own_back_S = slot - jnp.arange(S)  # how far behind the query each own slot is (< 0: not written)
    x_RD = jnp.take(w["embedding"], tokens_R, axis=0).astype(dt) * jnp.asarray(D**0.5, dt)
    new_k, new_v = [], []
    for i, (layer, kind) in enumerate(zip(w["layers"], cfg.attention_types)):
        norms = layer["norms"]
        h_RD = _norm(cfg, norms["pre_attention_norm"], x_RD)
        qkv_RX = jnp.dot(h_RD, layer["qkv"])
        q_R1NH = qkv_RX[:, :N * H].reshape(R, 1, N, H)
        k_R1KH = qkv_RX[:, N * H:(N + K) * H].reshape(R, 1, K, H)
        v_RKH = qkv_RX[:, (N + K) * H:].reshape(R, K, H)
        if cfg.use_qk_norm:
            q_R1NH = _norm(cfg, layer["qk_norms"]["query_norm"], q_R1NH)
            k_R1KH = _norm(cfg, layer["qk_norms"]["key_norm"], k_R1KH)
        local = kind == AttentionType.LOCAL_SLIDING
        rope = dict(base_frequency=cfg.local_rope_base_frequency, scale_factor=1.0) if local else \
            dict(base_frequency=cfg.rope_base_frequency, scale_factor=cfg.rope_scale_factor)
        q_RNH = (apply_rope(q_R1NH, positions_R[:, None], **rope) * jnp.asarray(cfg.query_scale, dt))[:, 0]
        k_RKH = apply_rope(k_R1KH, positions_R[:, None], **rope)[:, 0]
        write = lambda c, x: lax.dynamic_update_slice(c, x.reshape(R * K, 1, H).astype(c.dtype), (0, slot, 0))
        own_k, own_v = write(own.k[i], k_RKH), write(own.v[i], v_RKH)
        new_k.append(own_k)
        new_v.append(own_v)
        prefix_k, prefix_v = prefix.k[i], prefix.v[i]
        prefix_mask_BP, own_mask_S = prefix_valid_BP, own_back_S >= 0
        if local:
            W, positions_BP = cfg.sliding_window_size, prefix_positions_BP
            if window is not None:  # the prompts' last W slots only
                prefix_k, prefix_v = window.kv.k[i], window.kv.v[i]
                prefix_mask_BP, positions_BP = window.valid_BW, window.positions_BW
            prefix_mask_BP = prefix_mask_BP & (q_pos_B[:, None] - positions_BP < W)
            own_mask_S = own_mask_S & (own_back_S < W)
        out_RNH = shared_prefix_attention(
            q_RNH, prefix_k.astype(dt), prefix_v.astype(dt), prefix_mask_BP, own_k.astype(dt),
            own_v.astype(dt), own_mask_S, cap=cfg.attn_logits_soft_cap, dtype=dt)
        attn_RD = jnp.dot(out_RNH.reshape(R, N * H), layer["o"])
        if cfg.use_post_attn_norm:
            attn_RD = _norm(cfg, norms["post_attention_norm"], attn_RD)
        x_RD = x_RD + attn_RD
        gate_up_RX = jnp.dot(_norm(cfg, norms["pre_ffw_norm"], x_RD), layer["gate_up"])
        F = gate_up_RX.shape[1] // 2
        ffw_RD = jnp.dot(nn.gelu(gate_up_RX[:, :F], approximate=True) * gate_up_RX[:, F:], layer["down"])
        if cfg.use_post_ffw_norm:
            ffw_RD = _norm(cfg, norms["post_ffw_norm"], ffw_RD)
        x_RD = x_RD + ffw_RD
    h_RD = _norm(cfg, w["final_norm"], x_RD)
    logits_RV = jnp.einsum("RD,VD->RV", h_RD, w["embedding"].astype(dt), preferred_element_type=jnp.float32)
    return soft_cap(logits_RV, cfg.final_logit_soft_cap), DecodeKV(k=tuple(new_k), v=tuple(new_v))
