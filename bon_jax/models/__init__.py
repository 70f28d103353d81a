"""Gemma-family decoder (Flax Linen), its KV cache, masks and named configs."""

from bon_jax.models.cache import KVCache, LayerCache, init_cache, tile_cache
from bon_jax.models.config import (
    AttentionType,
    ModelConfig,
    attention_pattern,
    config_names,
    get_config,
)
from bon_jax.models.layers import next_token_logprobs
from bon_jax.models.masks import (
    causal_mask,
    last_valid_index,
    positions_from_valid,
    take_last_valid,
    valid_from_lengths,
    valid_from_pad,
)
from bon_jax.models.params import abstract_params, count_params, init_params, make_model
from bon_jax.models.transformer import ScalarHeadTransformer, Transformer

__all__ = [
    "AttentionType", "KVCache", "LayerCache", "ModelConfig", "ScalarHeadTransformer", "Transformer",
    "abstract_params", "attention_pattern", "causal_mask", "config_names", "count_params",
    "get_config", "init_cache", "init_params", "last_valid_index", "make_model", "next_token_logprobs",
    "positions_from_valid", "take_last_valid", "tile_cache", "valid_from_lengths", "valid_from_pad",
]
