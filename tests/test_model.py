"""Gemma-family decoder: numbers against a float64 numpy forward, cached decoding against the full
forward pass, padding, sliding window, scalar head, published parameter counts."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.errors import ConfigError
from bon_jax.models import (
    abstract_params,
    attention_pattern,
    causal_mask,
    count_params,
    get_config,
    init_cache,
    init_params,
    make_model,
    positions_from_valid,
    take_last_valid,
    valid_from_lengths,
    valid_from_pad,
)

TINY = get_config("tiny")
CONFIGS = {
    # multi-query, global attention, no caps or post-norms
    "mqa": TINY.replace(num_kv_heads=1, attention_types=(), attn_logits_soft_cap=None,
                        final_logit_soft_cap=None, use_post_attn_norm=False,
                        use_post_ffw_norm=False),
    # grouped-query (4 heads, 2 kv heads), global attention
    "gqa": TINY.replace(attention_types=(), attn_logits_soft_cap=None, final_logit_soft_cap=None),
    # Gemma 2 style: local (window 4) / global alternating, both soft-caps, sandwich norms
    "window_softcap": TINY.replace(sliding_window_size=4, attn_logits_soft_cap=5.0,
                                   final_logit_soft_cap=3.0),
    # Gemma 3 style options: query/key norm, separate RoPE bases, scaled global positions
    "gemma3_like": TINY.replace(num_layers=3, attention_types=attention_pattern(3, ("local", "local",
                                "global")), sliding_window_size=3, use_qk_norm=True,
                                local_rope_base_frequency=10_000, rope_base_frequency=1_000_000,
                                rope_scale_factor=8.0, attn_logits_soft_cap=None,
                                final_logit_soft_cap=None, query_pre_attn_scalar=16),
}


@functools.cache
def _params(cfg):
    """Random params of the model's shapes (numpy, no init compile), with non-zero norm scales so
    that `1 + scale` is exercised."""
    rng = np.random.default_rng(0)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        std = 0.3 if "scale" in name else (cfg.embed_dim**-0.5 if "embedding" in name else 0.2)
        return jnp.asarray(rng.normal(0.0, std, x.shape), x.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(cfg))


# ----------------------------------------------------------------------------- numpy reference


def _np_rms(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * (1 + scale)


def _np_rope(x_THE, pos_T, base, scale):
    half = x_THE.shape[-1] // 2
    angle = (pos_T[:, None] / scale) * base ** (-2.0 * np.arange(half) / x_THE.shape[-1])
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x1, x2 = x_THE[..., :half], x_THE[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def _np_cap(x, cap):
    return x if cap is None else cap * np.tanh(x / cap)


def _np_forward(params, cfg, tokens_T):
    """Float64 logits [T, V] of one unpadded row, written from the Gemma 2/3 equations."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    E = p["embedder"]["input_embedding"]
    T, Q = len(tokens_T), cfg.num_groups
    pos = np.arange(T, dtype=np.float64)
    x = E[tokens_T] * math.sqrt(cfg.embed_dim)
    for i, kind in enumerate(cfg.attention_types):
        lp = p[f"layer_{i}"]
        h = _np_rms(x, lp["pre_attention_norm"]["scale"], cfg.norm_eps)
        q = np.einsum("td,ndh->tnh", h, lp["attn"]["q_einsum"]["w"])
        k = np.einsum("td,kdh->tkh", h, lp["attn"]["kv_einsum"]["w"][0])
        v = np.einsum("td,kdh->tkh", h, lp["attn"]["kv_einsum"]["w"][1])
        if cfg.use_qk_norm:
            q = _np_rms(q, lp["attn"]["query_norm"]["scale"], cfg.norm_eps)
            k = _np_rms(k, lp["attn"]["key_norm"]["scale"], cfg.norm_eps)
        local = kind.value == "local"
        base = cfg.local_rope_base_frequency if local else cfg.rope_base_frequency
        scale = 1.0 if local else cfg.rope_scale_factor
        q = _np_rope(q, pos, base, scale) / math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
        k = _np_rope(k, pos, base, scale)
        allowed = np.tril(np.ones((T, T), bool))
        if local:
            allowed &= (np.arange(T)[:, None] - np.arange(T)[None, :]) < cfg.sliding_window_size
        out = np.zeros_like(q)
        for n in range(cfg.num_heads):
            logits = _np_cap(q[:, n] @ k[:, n // Q].T, cfg.attn_logits_soft_cap)
            logits = np.where(allowed, logits, -np.inf)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            out[:, n] = (probs / probs.sum(-1, keepdims=True)) @ v[:, n // Q]
        attn = np.einsum("tnh,nhd->td", out, lp["attn"]["attn_vec_einsum"]["w"])
        if cfg.use_post_attn_norm:
            attn = _np_rms(attn, lp["post_attention_norm"]["scale"], cfg.norm_eps)
        x = x + attn
        h = _np_rms(x, lp["pre_ffw_norm"]["scale"], cfg.norm_eps)
        gate, up = (h @ w for w in lp["mlp"]["gating_einsum"]["w"])
        gelu = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
        ffw = (gelu * up) @ lp["mlp"]["linear"]["w"]
        if cfg.use_post_ffw_norm:
            ffw = _np_rms(ffw, lp["post_ffw_norm"]["scale"], cfg.norm_eps)
        x = x + ffw
    x = _np_rms(x, p["final_norm"]["scale"], cfg.norm_eps)
    return _np_cap(x @ E.T, cfg.final_logit_soft_cap)


@functools.cache
def _jitted_apply(cfg, scalar_head=False):
    return jax.jit(make_model(cfg, scalar_head=scalar_head).apply)


@functools.cache
def _jitted_full_forward(cfg, scalar_head=False):
    """Uncached forward of padded rows: positions and the causal mask from `valid_BT`."""

    def forward(params, tokens_BT, valid_BT):
        out, cache = make_model(cfg, scalar_head=scalar_head).apply(
            {"params": params}, tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT))
        assert cache is None
        return out

    return jax.jit(forward)


def _full_forward(params, cfg, tokens_BT, valid_BT, scalar_head=False):
    return np.asarray(_jitted_full_forward(cfg, scalar_head)(params, tokens_BT, valid_BT))


# Every test batch has this shape (3 rows: a short, a full and a middle prompt), so that each config
# compiles its full forward, prefill and decode step once.
LENGTHS, TP, TG = [2, 7, 5], 7, 6


def _batch(cfg, side):
    """Prompts of LENGTHS padded with 0 to TP on `side`, followed by TG generated tokens (never 0)."""
    rng = np.random.default_rng(1)
    pvalid_BT = np.asarray(valid_from_lengths(np.asarray(LENGTHS), TP, side))
    prompt_BT = np.where(pvalid_BT, rng.integers(1, cfg.vocab_size, (3, TP)), 0)
    gen_BT = rng.integers(1, cfg.vocab_size, (3, TG))
    return prompt_BT, pvalid_BT, gen_BT


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_padded_forward_matches_float64_numpy_reference(name, side):
    """Each padded row's logits at its real tokens equal the float64 forward of those tokens alone
    (so padding is invisible and RoPE positions start at 0 on each row's first real token)."""
    cfg = CONFIGS[name]
    params = _params(cfg)
    prompt_BT, pvalid_BT, gen_BT = _batch(cfg, side)
    tokens_BT = np.concatenate([prompt_BT, gen_BT], 1)
    valid_BT = np.concatenate([pvalid_BT, np.ones_like(gen_BT, bool)], 1)
    np.testing.assert_array_equal(valid_from_pad(tokens_BT, 0), valid_BT)
    logits_BTV = _full_forward(params, cfg, tokens_BT, valid_BT)
    assert logits_BTV.dtype == np.float32 and logits_BTV.shape == (3, TP + TG, cfg.vocab_size)
    for b in range(3):
        ref = _np_forward(params, cfg, tokens_BT[b][valid_BT[b]])
        np.testing.assert_allclose(logits_BTV[b][valid_BT[b]], ref, atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_matches_full_forward(name, side):
    """Prefill a padded prompt into a cache, then feed TG more tokens one at a time: every step's logits
    equal the uncached forward of the whole prefix (max abs diff < 1e-4)."""
    cfg = CONFIGS[name]
    params = _params(cfg)
    apply = _jitted_apply(cfg)
    prompt_BT, pvalid_BT, gen_BT = _batch(cfg, side)
    S = TP + TG
    ref_BSV = _full_forward(params, cfg, np.concatenate([prompt_BT, gen_BT], 1),
                            np.concatenate([pvalid_BT, np.ones_like(gen_BT, bool)], 1))

    cache = init_cache(cfg, 3, S)
    logits_BTV, cache = apply({"params": params}, prompt_BT, positions_from_valid(pvalid_BT),
                              causal_mask(pvalid_BT, S), cache)
    assert int(cache.end_index) == TP
    err_BT = np.abs(np.asarray(logits_BTV) - ref_BSV[:, :TP]).max(-1)
    assert err_BT[pvalid_BT].max() < 1e-4

    key_valid_BS = np.pad(pvalid_BT, ((0, 0), (0, TG)))
    for j in range(TG):
        slot = TP + j
        key_valid_BS[:, slot] = True
        positions_B1 = (np.asarray(LENGTHS) + j)[:, None]
        step_B1V, cache = apply({"params": params}, gen_BT[:, j:j + 1], positions_B1,
                                key_valid_BS[:, None, :], cache)
        assert np.abs(np.asarray(step_B1V)[:, 0] - ref_BSV[:, slot]).max() < 1e-4, f"step {j}"
    assert int(cache.end_index) == S
    assert cache.layers[0].k_BSGE.shape == (3, S, cfg.num_kv_heads, cfg.head_dim)


def test_sliding_window_limits_receptive_field():
    """One local layer of window W: the logits at position p depend on tokens p-W+1..p only."""
    W, p = 3, 10
    cfg = TINY.replace(num_layers=1, attention_types=("local",), sliding_window_size=W)
    params = _params(cfg)
    tokens_BT = np.repeat(np.random.default_rng(2).integers(1, cfg.vocab_size, (1, TP + TG)), 3, 0)
    tokens_BT[1, p - W] = 0  # outside the window of p
    tokens_BT[2, p - W + 1] = 0  # inside it
    logits_BTV = _full_forward(params, cfg, tokens_BT, np.ones_like(tokens_BT, bool))
    np.testing.assert_allclose(logits_BTV[1, p], logits_BTV[0, p], atol=1e-6)
    assert np.abs(logits_BTV[2, p] - logits_BTV[0, p]).max() > 1e-3


def test_bfloat16_compute_runs_close_to_float32():
    cfg = CONFIGS["window_softcap"]
    params = _params(cfg)
    prompt_BT, pvalid_BT, _ = _batch(cfg, "left")
    f32 = _full_forward(params, cfg, prompt_BT, pvalid_BT)
    bf16 = _full_forward(params, cfg.replace(dtype="bfloat16"), prompt_BT, pvalid_BT)
    assert bf16.dtype == np.float32
    err = np.abs(bf16 - f32)[pvalid_BT].max()
    assert 0 < err < 0.05 * np.abs(f32).max()


# ----------------------------------------------------------------------------- scalar head


def test_scalar_head_shapes_and_last_valid():
    cfg = CONFIGS["gqa"].replace(num_layers=1, attention_types=())  # one layer: a cheaper init compile
    params = init_params(cfg, jax.random.key(0), scalar_head=True)
    assert set(params) == set(abstract_params(cfg)) | {"value_head"}
    assert params["value_head"]["kernel"].shape == (cfg.embed_dim, 1)
    assert float(jnp.abs(params["final_norm"]["scale"]).max()) == 0.0  # Gemma's (1 + 0) init
    prompt_BT, pvalid_BT, _ = _batch(cfg, "right")
    values_BT = _full_forward(params, cfg, prompt_BT, pvalid_BT, scalar_head=True)
    assert values_BT.shape == (3, TP) and values_BT.dtype == np.float32
    assert len(np.unique(values_BT[1])) == TP  # differs per position
    np.testing.assert_array_equal(take_last_valid(values_BT, pvalid_BT),
                                  [values_BT[b, n - 1] for b, n in enumerate(LENGTHS)])


# ----------------------------------------------------------------------------- configs and sizes


def test_gemma2_parameter_counts():
    n2 = count_params(abstract_params(get_config("gemma2_2b")))
    assert abs(n2 - 2_614_341_888) / 2_614_341_888 < 0.005
    n9 = count_params(abstract_params(get_config("gemma2_9b")))
    assert abs(n9 - 9_241_705_984) / 9_241_705_984 < 0.005
    cfg = get_config("gemma2_2b")
    assert (cfg.num_layers, cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.mlp_dim, cfg.vocab_size, cfg.sliding_window_size) == (26, 2304, 8, 4, 256, 9216,
                                                                       256_000, 4096)
    assert [t.value for t in cfg.attention_types[:3]] == ["local", "global", "local"]


def test_small_configs_and_overrides():
    assert count_params(abstract_params(get_config("tiny"))) < 1_000_000
    assert 2_000_000 < count_params(abstract_params(get_config("small"))) < 10_000_000
    cfg = get_config("small", vocab_size=300, num_layers=6)
    assert cfg.vocab_size == 300 and len(cfg.attention_types) == 6
    assert abstract_params(cfg)["embedder"]["input_embedding"].shape == (300, cfg.embed_dim)
    hash(cfg)  # usable as a static jit argument


@pytest.mark.parametrize("bad", [dict(num_kv_heads=3), dict(attention_types=("global",)),
                                 dict(sliding_window_size=None), dict(dtype="float7"),
                                 dict(vocab_size=0)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ConfigError):
        TINY.replace(**bad)
    with pytest.raises(ConfigError):
        get_config("no_such_model")
