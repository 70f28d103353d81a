"""Model configuration: one frozen dataclass for the whole Gemma family, and named configs.

The config is hashable (every field is a scalar, a string or a tuple), so it can be a static argument of
`jax.jit`. Each layer names its attention type, so Gemma 2 (local/global alternating) and Gemma 3 (five local
layers per global one, query/key norm, separate RoPE bases) are the same dataclass with different values.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import jax.numpy as jnp

from bon_jax.errors import ConfigError


class AttentionType(str, enum.Enum):
    """How a layer attends: to every earlier token, or to the last `sliding_window_size` tokens."""

    GLOBAL = "global"
    LOCAL_SLIDING = "local"


def attention_pattern(num_layers: int, pattern: tuple[str, ...]) -> tuple[AttentionType, ...]:
    """Repeats `pattern` (e.g. `('local', 'global')`) over `num_layers` layers, truncating the last cycle."""
    cycle = tuple(AttentionType(p) for p in pattern)
    return tuple(cycle[i % len(cycle)] for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and options of a Gemma-family decoder.

    Attributes:
      vocab_size: V, size of the tied input/output embedding.
      num_layers: L.
      embed_dim: D, width of the residual stream.
      num_heads: H query heads.
      num_kv_heads: G key/value heads; H % G == 0. G == 1 is multi-query, 1 < G < H grouped-query.
      head_dim: E, width of one head.
      mlp_dim: F, hidden width of the GeGLU feed-forward.
      attention_types: one `AttentionType` per layer.
      sliding_window_size: W; a local layer's query at position p sees keys at positions q with p - q < W.
      query_pre_attn_scalar: queries are scaled by `query_pre_attn_scalar ** -0.5`; None means head_dim.
      attn_logits_soft_cap: c_a; attention logits become `c_a * tanh(logits / c_a)` (Gemma 2). None: off.
      final_logit_soft_cap: c_f; same on the output logits. None: off.
      use_post_attn_norm / use_post_ffw_norm: Gemma 2's sandwich norms on each sublayer's output.
      use_qk_norm: per-head RMSNorm of queries and keys before RoPE (Gemma 3).
      rope_base_frequency / local_rope_base_frequency: RoPE base of global / local layers.
      rope_scale_factor: positions of global layers are divided by this (Gemma 3 long-context models).
      norm_eps: RMSNorm epsilon.
      dtype: compute dtype name ('float32', 'bfloat16'); also the KV cache dtype.
      param_dtype: parameter storage dtype name.
    """

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    attention_types: tuple[AttentionType, ...] = ()
    sliding_window_size: int | None = None
    query_pre_attn_scalar: float | None = None
    attn_logits_soft_cap: float | None = None
    final_logit_soft_cap: float | None = None
    use_post_attn_norm: bool = False
    use_post_ffw_norm: bool = False
    use_qk_norm: bool = False
    rope_base_frequency: int = 10_000
    local_rope_base_frequency: int = 10_000
    rope_scale_factor: float = 1.0
    norm_eps: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        # An empty pattern means "all global"; strings are accepted so ConfigDict overrides work.
        types = self.attention_types or (AttentionType.GLOBAL,) * self.num_layers
        object.__setattr__(self, "attention_types", tuple(AttentionType(t) for t in types))
        self.validate()

    def validate(self) -> None:
        for key in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim",
                    "mlp_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}", f"must be positive, got {getattr(self, key)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("model.num_kv_heads",
                              f"num_heads={self.num_heads} is not a multiple of {self.num_kv_heads}")
        if len(self.attention_types) != self.num_layers:
            raise ConfigError("model.attention_types",
                              f"{len(self.attention_types)} types for {self.num_layers} layers")
        if AttentionType.LOCAL_SLIDING in self.attention_types and not self.sliding_window_size:
            raise ConfigError("model.sliding_window_size", "local layers need a positive window")
        if self.head_dim % 2:
            raise ConfigError("model.head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        for key in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, key))
            except TypeError as e:
                raise ConfigError(f"model.{key}", f"unknown dtype {getattr(self, key)!r}") from e

    @property
    def num_groups(self) -> int:
        """Q = H / G query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    @property
    def query_scale(self) -> float:
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)

    def replace(self, **overrides) -> ModelConfig:
        return dataclasses.replace(self, **overrides)


def _gemma2(num_layers, embed_dim, num_heads, num_kv_heads, mlp_dim, query_pre_attn_scalar):
    return ModelConfig(
        vocab_size=256_000,
        num_layers=num_layers,
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=256,
        mlp_dim=mlp_dim,
        attention_types=attention_pattern(num_layers, ("local", "global")),
        sliding_window_size=4096,
        query_pre_attn_scalar=query_pre_attn_scalar,
        attn_logits_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        dtype="bfloat16",
    )


def _gemma3(num_layers, embed_dim, num_heads, num_kv_heads, head_dim, mlp_dim, sliding_window_size,
            query_pre_attn_scalar):
    # Gemma 3 text decoder: five local layers per global one, query/key RMSNorm, RoPE base 1e4 on local
    # and 1e6 on global layers, sandwich norms, no soft-capping, vocabulary 262144.
    return ModelConfig(
        vocab_size=262_144,
        num_layers=num_layers,
        embed_dim=embed_dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        mlp_dim=mlp_dim,
        attention_types=attention_pattern(num_layers, ("local",) * 5 + ("global",)),
        sliding_window_size=sliding_window_size,
        query_pre_attn_scalar=query_pre_attn_scalar,
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
        use_qk_norm=True,
        rope_base_frequency=1_000_000,
        local_rope_base_frequency=10_000,
    )


def _tiny():
    # Gemma 2's options all switched on, at a size where a test forward takes milliseconds.
    return ModelConfig(
        vocab_size=128, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
        mlp_dim=64, attention_types=attention_pattern(2, ("local", "global")), sliding_window_size=8,
        attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0, use_post_attn_norm=True,
        use_post_ffw_norm=True,
    )


def _small():
    # 4.07M parameters at vocab 1024 (0.26M of them the embedding): trains on two CPU cores in minutes.
    return ModelConfig(
        vocab_size=1024, num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=1, head_dim=64,
        mlp_dim=1024, attention_types=attention_pattern(4, ("local", "global")),
        sliding_window_size=128, attn_logits_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_post_attn_norm=True, use_post_ffw_norm=True,
    )


_CONFIGS = {
    "tiny": _tiny,
    "small": _small,
    "gemma2_2b": lambda: _gemma2(26, 2304, 8, 4, 9216, 256),
    "gemma2_9b": lambda: _gemma2(42, 3584, 16, 8, 14336, 256),
    # 268M parameters, 170M of them the embedding; window 512; global layers 5, 11, 17.
    "gemma3_270m": lambda: _gemma3(18, 640, 4, 1, 256, 2048, 512, 256),
    "gemma3_1b": lambda: _gemma3(26, 1152, 4, 1, 256, 6912, 512, 256),
}


def config_names() -> tuple[str, ...]:
    return tuple(_CONFIGS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The named config with `overrides` applied, e.g. `get_config('small', vocab_size=512)`."""
    if name not in _CONFIGS:
        raise ConfigError("model.name", f"unknown model {name!r}; known: {', '.join(_CONFIGS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"model.{sorted(unknown)[0]}", "not a ModelConfig field")
    base = _CONFIGS[name]()
    if "num_layers" in overrides and "attention_types" not in overrides:
        # Keep the named model's local/global cycle when only the depth changes.
        overrides["attention_types"] = attention_pattern(
            overrides["num_layers"], _period(base.attention_types))
    return dataclasses.replace(base, **overrides)


def _period(types: tuple[AttentionType, ...]) -> tuple[AttentionType, ...]:
    for p in range(1, len(types) + 1):
        if all(types[i] == types[i % p] for i in range(len(types))):
            return types[:p]
    return types
