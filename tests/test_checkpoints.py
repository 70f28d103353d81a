"""Checkpoint loaders: each test writes a checkpoint in a release layout itself (random weights of a small
Gemma 2 / Gemma 3 config, tensor names and layouts spelled out here, independently of the loaders' plans)
and loads it back exactly; a wrong shape, a missing or an unexpected tensor is an error naming it."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from bon_jax import parallel
from bon_jax.models import abstract_params, causal_mask, get_config, make_model
from bon_jax.models.checkpoints import CheckpointLoadError, detect_format, gguf_config, load_checkpoint
from bon_jax.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")


def gemma3_tiny():
    return get_config("gemma3_270m", vocab_size=96, num_layers=6, embed_dim=32, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=48, sliding_window_size=4, query_pre_attn_scalar=8)


def gemma2_tiny():
    return get_config("gemma2_2b", vocab_size=96, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=48, sliding_window_size=4, query_pre_attn_scalar=8, dtype="float32")


def random_params(cfg, seed=0):
    """Random values for every leaf (norms included, so every tensor is checked), numpy float32."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape).astype(np.float32), abstract_params(cfg))


def flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def assert_trees_equal(got, want, *, atol=0.0):
    g, w = flat(got), flat(want)
    assert g.keys() == w.keys()
    for k in w:
        np.testing.assert_allclose(np.asarray(g[k]), w[k], rtol=0, atol=atol, err_msg=k)


def logits(cfg, params, T=8):
    tokens = jnp.arange(T, dtype=jnp.int32)[None] % cfg.vocab_size
    apply = jax.jit(make_model(cfg).apply)
    out, _ = apply({"params": params}, tokens, jnp.arange(T)[None], causal_mask(jnp.ones((1, T), bool)))
    return np.asarray(out)


# ------------------------------------------------------------------------------------------------
# Writers, one per layout, spelled from the formats' documentation.


def hf_tensors(cfg, params):
    """HF Gemma names, nn.Linear [out, in] matrices; norms stored as w (the layer computes 1 + w)."""
    N, K, D, H = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim
    p = flat(params)
    t = {"model.embed_tokens.weight": p["embedder/input_embedding"], "model.norm.weight": p["final_norm/scale"]}
    for i in range(cfg.num_layers):
        a, h = f"layer_{i}/", f"model.layers.{i}."
        q, kv, o = p[a + "attn/q_einsum/w"], p[a + "attn/kv_einsum/w"], p[a + "attn/attn_vec_einsum/w"]
        t[h + "self_attn.q_proj.weight"] = np.einsum("NDH->NHD", q).reshape(N * H, D)
        t[h + "self_attn.k_proj.weight"] = np.einsum("KDH->KHD", kv[0]).reshape(K * H, D)
        t[h + "self_attn.v_proj.weight"] = np.einsum("KDH->KHD", kv[1]).reshape(K * H, D)
        t[h + "self_attn.o_proj.weight"] = np.einsum("NHD->DNH", o).reshape(D, N * H)
        if cfg.use_qk_norm:
            t[h + "self_attn.q_norm.weight"] = p[a + "attn/query_norm/scale"]
            t[h + "self_attn.k_norm.weight"] = p[a + "attn/key_norm/scale"]
        t[h + "input_layernorm.weight"] = p[a + "pre_attention_norm/scale"]
        t[h + "post_attention_layernorm.weight"] = p[a + "post_attention_norm/scale"]
        t[h + "pre_feedforward_layernorm.weight"] = p[a + "pre_ffw_norm/scale"]
        t[h + "post_feedforward_layernorm.weight"] = p[a + "post_ffw_norm/scale"]
        gate_up = p[a + "mlp/gating_einsum/w"]
        t[h + "mlp.gate_proj.weight"] = gate_up[0].T
        t[h + "mlp.up_proj.weight"] = gate_up[1].T
        t[h + "mlp.down_proj.weight"] = p[a + "mlp/linear/w"].T
    return {k: np.ascontiguousarray(v) for k, v in t.items()}


_HF_TO_GGUF = [
    ("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"),
    ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"), ("self_attn.q_norm", "attn_q_norm"), ("self_attn.k_norm", "attn_k_norm"),
    ("input_layernorm", "attn_norm"), ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"), ("post_feedforward_layernorm", "post_ffw_norm"),
    ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down"), ("model.layers.", "blk."),
]


def write_gguf(path, cfg, params, *, arch="gemma3", quantize=(), drop=(), extra=(), vocab=None):
    """llama.cpp's layout: HF's matrices under GGUF names, norm weights stored as 1 + w."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(128)
    w.add_embedding_length(cfg.embed_dim)
    w.add_feed_forward_length(cfg.mlp_dim)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(float(cfg.rope_base_frequency))
    w.add_sliding_window(cfg.sliding_window_size)
    if vocab is not None:
        pieces, scores, types = vocab
        w.add_tokenizer_model("llama")
        w.add_token_list(pieces)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_space_prefix(False)
    expected = {}
    for name, value in hf_tensors(cfg, params).items():
        for a, b in _HF_TO_GGUF:
            name = name.replace(a, b)
        name = name.replace("weight.weight", "weight")
        if name in drop:
            continue
        value = value.astype(np.float32) + (1.0 if "norm" in name else 0.0)
        if name in quantize:
            q = gguf.quantize(value, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            value = gguf.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(value.shape)
        else:
            w.add_tensor(name, value)
        expected[name] = value
    for name, value in extra:
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def release_tree(cfg, params, *, transpose_gating, vocab_pad=0, dtype=np.float32):
    """The Gemma Flax release's FLAT tree: 'transformer/<module path>' -> {param name: array}."""
    p = flat(params)
    tree = {}
    for path, value in p.items():
        module, name = path.rsplit("/", 1)
        module = module.replace("attn/query_norm", "attn/_query_norm").replace("attn/key_norm", "attn/_key_norm")
        if module.endswith("mlp/gating_einsum") and transpose_gating:
            value = value.transpose(0, 2, 1)
        if path == "embedder/input_embedding" and vocab_pad:
            value = np.concatenate([value, np.full((vocab_pad, value.shape[1]), 7.0, value.dtype)])
        tree.setdefault(f"transformer/{module}", {})[name] = jnp.asarray(value.astype(dtype))
    return tree


def save_orbax(path, tree):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.fspath(path), tree)


# ------------------------------------------------------------------------------------------------
# Round trips.


@pytest.mark.parametrize("make_cfg", [gemma3_tiny, gemma2_tiny])
def test_safetensors_round_trip(tmp_path, make_cfg):
    cfg = make_cfg()
    params = random_params(cfg)
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(hf_tensors(cfg, params), str(path))
    assert detect_format(path) == "safetensors" and detect_format(tmp_path) == "safetensors"
    assert_trees_equal(load_checkpoint(tmp_path, cfg), params)


def test_safetensors_bfloat16_shards_and_multimodal_prefix(tmp_path):
    """A Gemma 3 multimodal-style checkpoint: bf16, split in two shards, decoder under
    `language_model.model.`, a vision tower that is skipped, a tied lm_head equal to the embedding."""
    cfg = gemma3_tiny()
    params = random_params(cfg)
    t = {k.replace("model.", "language_model.model.", 1): v.astype(ml_dtypes.bfloat16)
         for k, v in hf_tensors(cfg, params).items()}
    t["lm_head.weight"] = t["language_model.model.embed_tokens.weight"]
    t["vision_tower.patch_embedding.weight"] = np.ones((4, 4), ml_dtypes.bfloat16)
    names = sorted(t)
    half = len(names) // 2
    from safetensors.flax import save_file

    save_file({k: jnp.asarray(t[k]) for k in names[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: jnp.asarray(t[k]) for k in names[half:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    loaded = load_checkpoint(tmp_path, cfg)
    want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert_trees_equal(loaded, want)


@pytest.mark.parametrize("transpose_gating", [False, True])
def test_gemma_flax_release_round_trip(tmp_path, transpose_gating):
    """FLAT release tree (Gemma 3 spelling `_query_norm`), bfloat16 on disk, 128 padding rows in the
    embedding, gating einsum in either orientation."""
    cfg = gemma3_tiny()
    params = random_params(cfg)
    path = tmp_path / "gemma3-tiny"
    save_orbax(path, release_tree(cfg, params, transpose_gating=transpose_gating, vocab_pad=128,
                                  dtype=jnp.bfloat16))
    assert detect_format(path) == "gemma_flax"
    loaded = load_checkpoint(path, cfg)
    want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), params)
    assert_trees_equal(loaded, want)


def test_gemma_flax_nested_layout_gemma2(tmp_path):
    """NESTED tree (Flax init structure, MLP kernels as bare leaves), Gemma 2 options, float32."""
    cfg = gemma2_tiny()
    params = random_params(cfg)
    tree = jax.tree.map(jnp.asarray, params)
    for i in range(cfg.num_layers):
        mlp = tree[f"layer_{i}"]["mlp"]
        tree[f"layer_{i}"]["mlp"] = {"gating_einsum": mlp["gating_einsum"]["w"], "linear": mlp["linear"]["w"]}
    save_orbax(tmp_path / "ckpt", tree)
    assert_trees_equal(load_checkpoint(tmp_path / "ckpt", cfg, format="gemma_flax"), params)


def test_gguf_round_trip_with_quantised_tensor(tmp_path):
    cfg = gemma3_tiny()
    params = random_params(cfg)
    path = tmp_path / "tiny.gguf"
    stored = write_gguf(path, cfg, params, quantize=("blk.0.attn_q.weight", "blk.2.ffn_gate.weight"))
    file_cfg = gguf_config(path)
    assert file_cfg == cfg, "the config read from the GGUF metadata is the model's"
    loaded = load_checkpoint(path, cfg)
    lf = flat(loaded)
    np.testing.assert_array_equal(lf["layer_0/attn/q_einsum/w"],
                                  stored["blk.0.attn_q.weight"].reshape(4, 8, 32).transpose(0, 2, 1))
    np.testing.assert_array_equal(lf["layer_2/mlp/gating_einsum/w"][0], stored["blk.2.ffn_gate.weight"].T)
    pf = flat(params)
    for k in pf:
        if k in ("layer_0/attn/q_einsum/w", "layer_2/mlp/gating_einsum/w"):
            np.testing.assert_allclose(lf[k], pf[k], atol=0.02, err_msg=k)  # Q8_0 rounding
        elif "norm" in k:  # the file holds 1 + w in float32: (1 + w) - 1 is w to within an ulp of 1
            np.testing.assert_allclose(lf[k], pf[k], rtol=0, atol=2.5e-7, err_msg=k)
        else:
            np.testing.assert_array_equal(lf[k], pf[k], err_msg=k)


def test_gguf_gemma2_config(tmp_path):
    cfg = gemma2_tiny()
    params = random_params(cfg)
    write_gguf(tmp_path / "g2.gguf", cfg, params, arch="gemma2")
    assert gguf_config(tmp_path / "g2.gguf") == cfg
    loaded = load_checkpoint(tmp_path / "g2.gguf", cfg)
    np.testing.assert_allclose(logits(cfg, loaded), logits(cfg, params), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Errors name the tensor.


def test_errors_name_missing_unexpected_and_misshaped_tensors(tmp_path):
    cfg = gemma3_tiny()
    params = random_params(cfg)
    t = hf_tensors(cfg, params)
    del t["model.layers.3.mlp.up_proj.weight"]
    t["model.layers.1.self_attn.k_proj.weight"] = np.zeros((3, 32), np.float32)
    t["model.layers.9.mlp.up_proj.weight"] = np.zeros((2, 2), np.float32)
    safetensors_numpy.save_file(t, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointLoadError) as e:
        load_checkpoint(tmp_path / "bad.safetensors", cfg)
    msg = str(e.value)
    assert "missing tensor 'model.layers.3.mlp.up_proj.weight'" in msg
    assert "tensor 'model.layers.1.self_attn.k_proj.weight' has shape (3, 32), expected (16, 32)" in msg
    assert "unexpected tensor 'model.layers.9.mlp.up_proj.weight'" in msg


def test_gguf_errors(tmp_path):
    cfg = gemma3_tiny()
    params = random_params(cfg)
    write_gguf(tmp_path / "a.gguf", cfg, params, drop=("blk.4.attn_k_norm.weight",),
               extra=(("rope_freqs.weight", np.ones(4, np.float32)),))
    with pytest.raises(CheckpointLoadError) as e:
        load_checkpoint(tmp_path / "a.gguf", cfg)
    assert "missing tensor 'blk.4.attn_k_norm.weight'" in str(e.value)
    assert "unexpected tensor 'rope_freqs.weight'" in str(e.value)
    with pytest.raises(CheckpointLoadError, match="mlp_dim=64 but the file has 48"):
        load_checkpoint(tmp_path / "a.gguf", cfg.replace(mlp_dim=64))


def test_gemma_flax_errors(tmp_path):
    cfg = gemma3_tiny()
    tree = release_tree(cfg, random_params(cfg), transpose_gating=True)
    tree["transformer/layer_2/attn/q_einsum"]["w"] = jnp.zeros((4, 32, 4))
    del tree["transformer/layer_5/post_ffw_norm"]
    save_orbax(tmp_path / "ckpt", tree)
    with pytest.raises(CheckpointLoadError) as e:
        load_checkpoint(tmp_path / "ckpt", cfg)
    assert "tensor 'layer_2/attn/q_einsum/w' has shape (4, 32, 4), expected (4, 32, 8)" in str(e.value)
    assert "missing tensor 'layer_5/post_ffw_norm/scale'" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Onto an FSDP sharding.


@pytest.mark.parametrize("fmt", ["gemma_flax", "safetensors", "gguf"])
def test_restore_onto_fsdp_sharding(tmp_path, fmt):
    cfg = gemma3_tiny()
    params = random_params(cfg)
    if fmt == "gemma_flax":
        save_orbax(tmp_path / "ckpt", release_tree(cfg, params, transpose_gating=True))
        path = tmp_path / "ckpt"
    elif fmt == "safetensors":
        path = tmp_path / "model.safetensors"
        safetensors_numpy.save_file(hf_tensors(cfg, params), str(path))
    else:
        path = tmp_path / "m.gguf"
        write_gguf(path, cfg, params)
    mesh = parallel.make_mesh(data=2, fsdp=4)
    loaded = load_checkpoint(path, cfg, mesh=mesh, min_size_to_shard=256)
    want_sh = parallel.param_sharding(params, mesh, min_size_to_shard=256)
    got = jax.tree_util.tree_leaves_with_path(loaded)
    sh = dict((jax.tree_util.keystr(p), s) for p, s in jax.tree_util.tree_leaves_with_path(want_sh))
    sharded = 0
    for p, x in got:
        assert x.sharding.is_equivalent_to(sh[jax.tree_util.keystr(p)], x.ndim), jax.tree_util.keystr(p)
        sharded += any(a is not None for a in x.sharding.spec)
    assert sharded > 0
    atol = 2.5e-7 if fmt == "gguf" else 0.0  # GGUF norms are stored as 1 + w
    assert_trees_equal(loaded, params, atol=atol)


# ------------------------------------------------------------------------------------------------
# The tokenizer inside a GGUF.


def test_tokenizer_from_gguf_vocabulary(tmp_path):
    """A SentencePiece model's vocabulary written to a GGUF the way llama.cpp does (user-defined pieces
    with plain spaces, <unk> as a control piece) and rebuilt: it encodes and decodes as the original."""
    texts = ["def f(x):\n    return x * 2\n", "The cat sat on the mat.  Twice!", "a\tb\n\nc 123 + 45"] * 20
    orig = Tokenizer.train(texts, vocab_size=300, hard_vocab_limit=False, user_defined_symbols=["\u2581" * 4])
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    m = sp_pb2.ModelProto.FromString(orig.to_bytes())
    pieces = [p.piece.replace("\u2581", " ") if p.type == 4 else p.piece for p in m.pieces]
    types = [3 if p.type == 2 else p.type for p in m.pieces]
    cfg = gemma3_tiny().replace(vocab_size=len(pieces))
    path = tmp_path / "tok.gguf"
    write_gguf(path, cfg, random_params(cfg), vocab=(pieces, [p.score for p in m.pieces], types))
    tok = Tokenizer.from_gguf(path)
    assert tok.vocab_size == orig.vocab_size
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
    for text in texts[:3] + ["unseen: ü €", "    indented\n        twice"]:
        assert tok.encode(text) == orig.encode(text), text
        assert tok.decode(tok.encode(text)) == text
