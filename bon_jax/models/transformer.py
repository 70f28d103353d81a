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
import jax.numpy as jnp

from bon_jax.models.attention import Attention
from bon_jax.models.cache import KVCache, LayerCache
from bon_jax.models.config import AttentionType, ModelConfig
from bon_jax.models.layers import Embedder, FeedForward, RMSNorm, soft_cap


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


class Transformer(_Backbone):
    """The language model: `apply(params, tokens_BT, positions_BT, attn_mask_BTS, cache)`
    -> (logits_BTV float32, cache)."""

    def logits(self, h_BTD):
        """Tied unembedding with the final soft-cap: [..., D] -> [..., V] float32."""
        return soft_cap(self.embedder.decode(h_BTD), self.config.final_logit_soft_cap)

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
