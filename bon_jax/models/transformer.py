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

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from bon_jax.models.attention import Attention, dot_attention, rope_settings, shared_prefix_attention
from bon_jax.models.cache import DecodeKV, KVCache, LayerCache
from bon_jax.models.config import AttentionType, ModelConfig
from bon_jax.models.layers import (
    Embedder,
    FeedForward,
    RMSNorm,
    embed,
    geglu,
    soft_cap,
    unembed,
)
from bon_jax.models.masks import positions_from_valid, take_last_valid
from bon_jax.models.rope import apply_rope
from bon_jax.models.unembed import taken_logprobs


@dataclasses.dataclass(frozen=True)
class LayerOps:
    """How one layer's weights are applied; `decoder_layer` holds the maths around them.

    norm(name, x): RMSNorm with the layer's scale `name` (pre_attention_norm, post_attention_norm,
      pre_ffw_norm, post_ffw_norm, query_norm, key_norm);
    qkv(h_..D) -> (q_..NH, k_..KH, v_..KH): the query, key and value projections;
    attn_out(o_..NH) -> ..D: the output projection;
    ffw(h_..D) -> ..D: the GeGLU MLP.
    """

    norm: Callable
    qkv: Callable
    attn_out: Callable
    ffw: Callable


def decoder_layer(cfg: ModelConfig, attention_type: AttentionType, ops: LayerOps, x_BTD, positions_BT,
                  attend):
    """One decoder layer, the maths every path shares (module docstring; `attention` for the scores):

        q, k, v = qkv(pre_attention_norm(x));  q, k = query_norm?(q), key_norm?(k)
        q = rope(q) * query_pre_attn_scalar^-1/2;  k = rope(k)    (the layer's RoPE base and scale)
        y = x + post_attention_norm?(attn_out(attend(q, k, v)))
        x' = y + post_ffw_norm?(ffw(pre_ffw_norm(y)))

    `attend(q_BTHE, k_BTGE, v_BTGE) -> (out_BTHE, aux)` is the path's attention (the modules: a mask and an
    optional KV cache; prefill: causal, in query chunks; decode: a shared prompt prefix plus the rows' own
    slots). Returns (x'_BTD, aux).
    """
    q_BTHE, k_BTGE, v_BTGE = ops.qkv(ops.norm("pre_attention_norm", x_BTD))
    if cfg.use_qk_norm:
        q_BTHE, k_BTGE = ops.norm("query_norm", q_BTHE), ops.norm("key_norm", k_BTGE)
    rope = rope_settings(cfg, attention_type)
    q_BTHE = apply_rope(q_BTHE, positions_BT, **rope) * jnp.asarray(cfg.query_scale, cfg.compute_dtype)
    k_BTGE = apply_rope(k_BTGE, positions_BT, **rope)
    out_BTHE, aux = attend(q_BTHE, k_BTGE, v_BTGE)
    attn_BTD = ops.attn_out(out_BTHE)
    if cfg.use_post_attn_norm:
        attn_BTD = ops.norm("post_attention_norm", attn_BTD)
    x_BTD = x_BTD + attn_BTD
    ffw_BTD = ops.ffw(ops.norm("pre_ffw_norm", x_BTD))
    if cfg.use_post_ffw_norm:
        ffw_BTD = ops.norm("post_ffw_norm", ffw_BTD)
    return x_BTD + ffw_BTD, aux


class Block(nn.Module):
    """One decoder layer (`decoder_layer`) over the module params: attention then GeGLU, each with pre-norm
    and optional post-norm."""

    config: ModelConfig
    attention_type: AttentionType

    @nn.compact
    def __call__(self, x_BTD, positions_BT, attn_mask_BTS, key_positions_BS,
                 cache: LayerCache | None, end_index):
        cfg = self.config
        attn = Attention(cfg, self.attention_type, name="attn")
        mlp = FeedForward(cfg.embed_dim, cfg.mlp_dim, cfg.compute_dtype, cfg.params_dtype, name="mlp")

        def norm(name, x):
            if name in ("query_norm", "key_norm"):
                return attn.norm(name, x)
            return RMSNorm(cfg.norm_eps, cfg.params_dtype, name=name)(x)

        def attend(q_BTHE, k_BTGE, v_BTGE):
            return attn.attend(q_BTHE, k_BTGE, v_BTGE, positions_BT, attn_mask_BTS, key_positions_BS,
                               cache, end_index)

        ops = LayerOps(norm=norm, qkv=attn.project_qkv, attn_out=attn.project_out, ffw=mlp)
        return decoder_layer(cfg, self.attention_type, ops, x_BTD, positions_BT, attend)


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
        return self.head_values(h_BTD), cache

    def head_values(self, h_BTD):
        """The value head on final-normed hidden states: [..., D] -> [...] float32."""
        return self.value_head(h_BTD)[..., 0].astype(jnp.float32)

    def values_and_surprisal(self, tokens_BT, positions_BT, attn_mask_BTS):
        """(values_BT, surprisal_BT), both float32: surprisal_BT[b, t] = -log p(tokens[b, t] | tokens[b, <t])
        under the backbone's own tied language-model head (0 at t = 0). The embedder is shared with the
        policy the verifier starts from, so at initialisation this is the policy's own surprisal.

        The hidden state at t - 1 is unembedded by `bon_jax.models.unembed.taken_logprobs` (the same soft-capped
        logits as `logits`, in chunks of rows, forward and backward), so no [B, T, V] logits are held."""
        h_BTD, _ = self.hidden_states(tokens_BT, positions_BT, attn_mask_BTS)
        B, T, D = h_BTD.shape
        if T < 2:
            surprisal_BT = jnp.zeros((B, T), jnp.float32)
        else:
            logp_R = taken_logprobs(h_BTD[:, :-1].reshape(B * (T - 1), D), self.embedder.input_embedding,
                                    tokens_BT[:, 1:].reshape(-1).astype(jnp.int32),
                                    final_logit_soft_cap=self.config.final_logit_soft_cap,
                                    compute_dtype=self.config.compute_dtype)
            surprisal_BT = -jnp.pad(logp_R.reshape(B, T - 1), ((0, 0), (1, 0)))
        return self.head_values(h_BTD), surprisal_BT


# ----------------------------------------------------------------------------- Best-of-N decode step
#
# The sampler's prefill and inner loop apply the params directly rather than through the modules above:
# its weights are re-laid out ONCE per sampling call (`decode_weights`: fused q/k/v and gate/up
# projections as plain 2-D matrices in the compute dtype, applied by `fused_ops`), where the modules' 3-D
# einsum weights would be transposed by XLA on every step of the loop, and its attention reads a prompt
# prefix shared by the M samples of each prompt (`attention.shared_prefix_attention`). The layer maths is
# the modules' own `decoder_layer`; the tests check the result against a full uncached forward.


def decode_weights(params, cfg: ModelConfig) -> dict:
    """`Transformer` params -> the decode step's weights (compute dtype; norm scales as stored).

    Per layer: qkv [D, (H + 2G) E] (columns: q heads, then k heads, then v heads), o [H E, D],
    gate_up [D, 2F] (gate columns first), down [F, D], and the norm scales by name (the layer's and
    query_norm / key_norm); plus embedding [V, D].
    """
    H, G, D, E, F = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim, cfg.mlp_dim
    dt = cfg.compute_dtype
    layers = []
    for i in range(cfg.num_layers):
        p = params[f"layer_{i}"]
        attn, mlp = p["attn"], p["mlp"]
        q_DX = jnp.transpose(attn["q_einsum"]["w"], (1, 0, 2)).reshape(D, H * E)
        kv_DX = jnp.transpose(attn["kv_einsum"]["w"], (2, 0, 1, 3)).reshape(D, 2 * G * E)
        layer = dict(
            qkv=jnp.concatenate([q_DX, kv_DX], axis=1).astype(dt),
            o=attn["attn_vec_einsum"]["w"].reshape(H * E, D).astype(dt),
            gate_up=jnp.transpose(mlp["gating_einsum"]["w"], (1, 0, 2)).reshape(D, 2 * F).astype(dt),
            down=mlp["linear"]["w"].astype(dt),
            norms={k: v["scale"] for part in (p, attn) for k, v in part.items() if k.endswith("_norm")})
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

        kv: `DecodeKV` [B * G, W, E] for the local layers (None for the global ones)
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


def fused_ops(cfg: ModelConfig, layer: dict, *, one_token: bool = False) -> LayerOps:
    """`LayerOps` over one layer of `decode_weights`: plain 2-D matmuls. Activations are [B, T, D], or
    [R, D] with `one_token` (decode: one token per row), whose heads are then [R, 1, heads, E]."""
    H, G, E = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def qkv(h_D):
        qkv_X = jnp.dot(h_D, layer["qkv"])
        lead = (qkv_X.shape[0], 1) if one_token else qkv_X.shape[:-1]
        return (qkv_X[..., :H * E].reshape(*lead, H, E), qkv_X[..., H * E:(H + G) * E].reshape(*lead, G, E),
                qkv_X[..., (H + G) * E:].reshape(*lead, G, E))

    def attn_out(out_BTHE):
        lead = out_BTHE.shape[:1] if one_token else out_BTHE.shape[:2]
        return jnp.dot(out_BTHE.reshape(*lead, H * E), layer["o"])

    def ffw(h_TD):
        gate_up_TX = jnp.dot(h_TD, layer["gate_up"])
        F = gate_up_TX.shape[-1] // 2
        return jnp.dot(geglu(gate_up_TX[..., :F], gate_up_TX[..., F:]), layer["down"])

    return LayerOps(
        norm=lambda name, x: _norm(cfg, layer["norms"][name], x),
        qkv=qkv,
        attn_out=attn_out,
        ffw=ffw,
    )


PREFILL_CHUNK = 128  # query slots per attention chunk of `prefill`


def prefill(w: dict, cfg: ModelConfig, tokens_BT, valid_BT, *, chunk: int = PREFILL_CHUNK):
    """The sampler's prefill: prompts -> (last real token's logits_BV float32, `DecodeKV` [B * G, T, E]).

    The maths of `Transformer` with `masks.causal_mask(valid_BT)` and `positions_from_valid(valid_BT)`,
    written against `decode_weights` (plain 2-D matmuls; the modules' 3-D einsum weights cost a
    transpose per call) and with causal attention in query chunks of `chunk` slots: chunk [t0, t1) reads
    key slots [0, t1) only (a key after the query is masked whatever the padding), about half the
    attention work of a full [T, T] score matrix at T = 4 chunks. Only the last real token is unembedded.
    """
    H, G, Q, E = cfg.num_heads, cfg.num_kv_heads, cfg.num_groups, cfg.head_dim
    dt = cfg.compute_dtype
    B, T = tokens_BT.shape
    valid_BT = valid_BT.astype(bool)
    positions_BT = positions_from_valid(valid_BT)
    x_BTD = embed(w["embedding"], tokens_BT, dt)
    ks, vs = [], []
    for layer, kind in zip(w["layers"], cfg.attention_types):
        local = kind == AttentionType.LOCAL_SLIDING

        def attend(q_BTHE, k_BTGE, v_BTGE, local=local):
            outs = []
            for t0 in range(0, T, chunk):
                t1 = min(T, t0 + chunk)
                mask_BCS = (jnp.arange(t1)[None, :] <= jnp.arange(t0, t1)[:, None])[None] & \
                    valid_BT[:, None, :t1]
                if local:
                    mask_BCS = mask_BCS & (positions_BT[:, t0:t1, None] - positions_BT[:, None, :t1]
                                           < cfg.sliding_window_size)
                outs.append(dot_attention(q_BTHE[:, t0:t1].reshape(B, t1 - t0, G, Q, E), k_BTGE[:, :t1],
                                          v_BTGE[:, :t1], mask_BCS, cap=cfg.attn_logits_soft_cap, dtype=dt))
            as_kv = lambda x_BTGE: jnp.swapaxes(x_BTGE, 1, 2).reshape(B * G, T, E)
            return jnp.concatenate(outs, axis=1).reshape(B, T, H, E), (as_kv(k_BTGE), as_kv(v_BTGE))

        x_BTD, (k_XTE, v_XTE) = decoder_layer(cfg, kind, fused_ops(cfg, layer), x_BTD, positions_BT, attend)
        ks.append(k_XTE)
        vs.append(v_XTE)
    h_BD = _norm(cfg, w["final_norm"], take_last_valid(x_BTD, valid_BT))
    logits_BV = unembed(w["embedding"], h_BD, dt)
    return soft_cap(logits_BV, cfg.final_logit_soft_cap), DecodeKV(k=tuple(ks), v=tuple(vs))


def decode_step(w: dict, cfg: ModelConfig, tokens_R, positions_R, prefix: DecodeKV, prefix_valid_BP,
                prefix_positions_BP, own: DecodeKV, slot, window: PrefixWindow | None = None):
    """One token per row through the decoder, reading a shared prompt prefix and the rows' own slots.

    Args:
      w: `decode_weights(params, cfg)`.
      tokens_R, positions_R: the token fed to each of the R = B * n rows and its RoPE position; the n
        rows of a prompt (r = b * n + i) must be at the same position (lock-step decoding).
      prefix: the B prompts' keys/values (`DecodeKV` [B * G, P, E]); prefix_valid_BP marks real slots,
        prefix_positions_BP their positions (for the sliding window of local layers).
      own: the rows' generated keys/values ([R * G, S, E]); this token's are written at slot `slot`, and
        the row reads its own slots 0 .. slot, which hold positions positions_R - slot .. positions_R.
      window: `prefix_window(cfg, prefix, prefix_valid_BP, prefix_positions_BP)`: local layers then read
        only the prompts' last W slots (same result, less work); None: every layer reads all P slots.
    Returns:
      (logits_RV float32 after the final soft-cap, own with this token's keys/values written).
    """
    G, E = cfg.num_kv_heads, cfg.head_dim
    dt = cfg.compute_dtype
    R, B = tokens_R.shape[0], prefix_valid_BP.shape[0]
    n, S = R // B, own.length
    q_pos_B = positions_R.reshape(B, n)[:, 0]
    own_back_S = slot - jnp.arange(S)  # how far behind the query each own slot is (< 0: not written)
    x_RD = embed(w["embedding"], tokens_R, dt)
    new_k, new_v = [], []
    for i, (layer, kind) in enumerate(zip(w["layers"], cfg.attention_types)):

        def attend(q_R1HE, k_R1GE, v_R1GE, i=i, local=kind == AttentionType.LOCAL_SLIDING):
            write = lambda c, x_R1GE: lax.dynamic_update_slice(c, x_R1GE.reshape(R * G, 1, E).astype(c.dtype),
                                                                (0, slot, 0))
            own_k, own_v = write(own.k[i], k_R1GE), write(own.v[i], v_R1GE)
            prefix_k, prefix_v = prefix.k[i], prefix.v[i]
            prefix_mask_BP, own_mask_S = prefix_valid_BP, own_back_S >= 0
            if local:
                W, positions_BP = cfg.sliding_window_size, prefix_positions_BP
                if window is not None:  # the prompts' last W slots only
                    prefix_k, prefix_v = window.kv.k[i], window.kv.v[i]
                    prefix_mask_BP, positions_BP = window.valid_BW, window.positions_BW
                prefix_mask_BP = prefix_mask_BP & (q_pos_B[:, None] - positions_BP < W)
                own_mask_S = own_mask_S & (own_back_S < W)
            out_RHE = shared_prefix_attention(
                q_R1HE[:, 0], prefix_k.astype(dt), prefix_v.astype(dt), prefix_mask_BP, own_k.astype(dt),
                own_v.astype(dt), own_mask_S, cap=cfg.attn_logits_soft_cap, dtype=dt)
            return out_RHE[:, None], (own_k, own_v)

        x_RD, (own_k, own_v) = decoder_layer(cfg, kind, fused_ops(cfg, layer, one_token=True), x_RD,
                                             positions_R[:, None], attend)
        new_k.append(own_k)
        new_v.append(own_v)
    h_RD = _norm(cfg, w["final_norm"], x_RD)
    logits_RV = unembed(w["embedding"], h_RD, dt)
    return soft_cap(logits_RV, cfg.final_logit_soft_cap), DecodeKV(k=tuple(new_k), v=tuple(new_v))
