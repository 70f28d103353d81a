"""GGUF files (llama.cpp's format) of Gemma 2 / Gemma 3 text decoders, quantised or not.

The `gguf` package (an optional dependency: `pip install bon_jax[gguf]`) memory-maps the file and
dequantises one tensor at a time to float32 (Q4_K, Q5_0, Q6_K, Q8_0, F16, BF16, F32 ...). The
dequantised weights are the ground truth: no further rounding happens here unless `param_dtype` asks.

Layout, as llama.cpp's converter writes Gemma (numpy shapes, i.e. GGUF's `ne` reversed):

    token_embd.weight           [V, D]          -> embedder/input_embedding (tied: no output.weight)
    blk.i.attn_q.weight         [N*H, D]        -> layer_i/attn/q_einsum/w [N, D, H]
    blk.i.attn_k / attn_v       [K*H, D]        -> layer_i/attn/kv_einsum/w [2, K, D, H]
    blk.i.attn_output.weight    [D, N*H]        -> layer_i/attn/attn_vec_einsum/w [N, H, D]
    blk.i.attn_q_norm / k_norm  [H]             -> layer_i/attn/query_norm, key_norm (Gemma 3)
    blk.i.attn_norm, post_attention_norm, ffn_norm, post_ffw_norm [D] -> the four sandwich norms
    blk.i.ffn_gate / ffn_up     [F, D]          -> layer_i/mlp/gating_einsum/w [2, D, F]
    blk.i.ffn_down              [D, F]          -> layer_i/mlp/linear/w [F, D]
    output_norm.weight          [D]             -> final_norm/scale

Norm weights: Gemma computes `x * (1 + w)`; llama.cpp stores `1 + w` (its converter adds the 1), so
1 is subtracted here. Q and K are not permuted for Gemma (llama.cpp permutes them for LLaMA only): Gemma
uses the half-split RoPE layout that llama.cpp calls NEOX, which is ours too.

Metadata the file does not carry is Gemma's fixed recipe: the local:global pattern (Gemma 2 alternates;
Gemma 3 has five local layers per global one), the local RoPE base (1e4), soft-capping (Gemma 2: 50 on
attention, 30 on logits; Gemma 3: none) and `query_pre_attn_scalar` (head_dim for every size but 27B).
"""

from __future__ import annotations

import os

import numpy as np

from bon_jax.errors import DataError
from bon_jax.models.checkpoints._common import CheckpointLoadError, assemble, hf_style_plan
from bon_jax.models.config import AttentionType, ModelConfig, attention_pattern


def _gguf():
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - the extra is installed in CI
        raise ImportError("reading GGUF files needs the `gguf` package: pip install 'bon_jax[gguf]'") from e
    return gguf


_NAMES = {
    "embed": "token_embd.weight",
    "final_norm": "output_norm.weight",
    "pre_attention_norm": "blk.{i}.attn_norm.weight",
    "q": "blk.{i}.attn_q.weight",
    "k": "blk.{i}.attn_k.weight",
    "v": "blk.{i}.attn_v.weight",
    "o": "blk.{i}.attn_output.weight",
    "q_norm": "blk.{i}.attn_q_norm.weight",
    "k_norm": "blk.{i}.attn_k_norm.weight",
    "post_attention_norm": "blk.{i}.post_attention_norm.weight",
    "pre_ffw_norm": "blk.{i}.ffn_norm.weight",
    "post_ffw_norm": "blk.{i}.post_ffw_norm.weight",
    "gate": "blk.{i}.ffn_gate.weight",
    "up": "blk.{i}.ffn_up.weight",
    "down": "blk.{i}.ffn_down.weight",
}


def gguf_name(kind: str, layer: int | None) -> str:
    return _NAMES[kind].format(i=layer)


_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8",
            11: "<i8", 12: "<f8"}  # GGUF value type -> numpy dtype; 8 = string, 9 = array
_STRING, _ARRAY = 8, 9


class _Header:
    """GGUF v2/v3 header: metadata fields and tensor infos, parsed straight from the memory map.

    `gguf.GGUFReader` builds a numpy view per array element, which takes tens of seconds on a
    262144-piece vocabulary; numeric arrays are read here with one `frombuffer` each and strings with
    plain byte slicing."""

    def __init__(self, path):
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        self.buf = memoryview(self.mm)
        self.pos = 0
        if bytes(self.buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        self.pos = 4
        version = self._scalar("<u4")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_fields = self._scalar("<u8"), self._scalar("<u8")
        self.fields = {}
        for _ in range(n_fields):
            key = self._string()
            self.fields[key] = self._value(self._scalar("<u4"))
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            ne = [self._scalar("<u8") for _ in range(self._scalar("<u4"))]
            self.tensors[name] = (tuple(ne), self._scalar("<u4"), self._scalar("<u8"))
        align = int(self.fields.get("general.alignment", 32))
        self.data_start = -(-self.pos // align) * align

    def _scalar(self, dtype):
        dt = np.dtype(dtype)
        v = np.frombuffer(self.buf, dt, 1, self.pos)[0]
        self.pos += dt.itemsize
        return v.item()

    def _string(self):
        n = self._scalar("<u8")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def _value(self, vtype):
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type, count = self._scalar("<u4"), self._scalar("<u8")
            if item_type in _SCALARS:
                dt = np.dtype(_SCALARS[item_type])
                out = np.frombuffer(self.buf, dt, count, self.pos).copy()
                self.pos += dt.itemsize * count
                return out.astype(bool) if item_type == 7 else out
            return [self._value(item_type) for _ in range(count)]
        v = self._scalar(_SCALARS[vtype])
        return bool(v) if vtype == 7 else v


class GGUFFile:
    """`TensorFile` over a GGUF: shapes from the header, data dequantised to float32 on read."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self._h = _Header(self.path)
        except (OSError, ValueError, IndexError, UnicodeDecodeError) as e:
            raise DataError(self.path, f"not a readable GGUF file: {e}") from e

    def names(self):
        return self._h.tensors.keys()

    def shape(self, name):
        return tuple(int(d) for d in reversed(self._h.tensors[name][0]))

    def quant_type(self, name) -> str:
        return _gguf().GGMLQuantizationType(self._h.tensors[name][1]).name

    def read(self, name):
        gguf = _gguf()
        ne, qtype, offset = self._h.tensors[name]
        qtype = gguf.GGMLQuantizationType(qtype)
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        shape = self.shape(name)
        row_bytes = shape[-1] // block * block_bytes
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        raw = np.frombuffer(self._h.mm, np.uint8, rows * row_bytes, self._h.data_start + offset)
        out = gguf.dequantize(raw.reshape(rows, row_bytes), qtype)
        return np.asarray(out, np.float32).reshape(shape)

    def field(self, key, default=None):
        return self._h.fields.get(key, default)


def gguf_config(path_or_file, **overrides) -> ModelConfig:
    """The `ModelConfig` a Gemma 2 / Gemma 3 GGUF describes (its metadata plus Gemma's fixed recipe)."""
    f = path_or_file if isinstance(path_or_file, GGUFFile) else GGUFFile(path_or_file)
    arch = f.field("general.architecture")
    if arch not in ("gemma2", "gemma3"):
        raise DataError(f.path, f"architecture {arch!r} is not a Gemma 2 / Gemma 3 decoder")
    g = lambda key, default=None: f.field(f"{arch}.{key}", default)
    num_layers = int(g("block_count"))
    embed_dim = int(g("embedding_length"))
    num_heads = int(g("attention.head_count"))
    head_dim = int(g("attention.key_length", embed_dim // num_heads))
    vocab = f.shape("token_embd.weight")[0]
    common = dict(
        vocab_size=vocab, num_layers=num_layers, embed_dim=embed_dim, num_heads=num_heads,
        num_kv_heads=int(g("attention.head_count_kv", num_heads)), head_dim=head_dim,
        mlp_dim=int(g("feed_forward_length")), sliding_window_size=int(g("attention.sliding_window", 4096)),
        norm_eps=float(f"{g('attention.layer_norm_rms_epsilon', 1e-6):.7g}"),  # float32 on disk
        use_post_attn_norm=True,
        use_post_ffw_norm=True,
    )
    if arch == "gemma2":
        cfg = ModelConfig(
            **common, attention_types=attention_pattern(num_layers, ("local", "global")),
            attn_logits_soft_cap=float(g("attn_logit_softcapping", 50.0)),
            final_logit_soft_cap=float(g("final_logit_softcapping", 30.0)),
            rope_base_frequency=int(g("rope.freq_base", 10_000)),
            local_rope_base_frequency=int(g("rope.freq_base", 10_000)), query_pre_attn_scalar=head_dim)
    else:
        # Gemma 3 27B scales queries by (D / N)^-1/2; every other size by head_dim^-1/2.
        scalar = embed_dim // num_heads if (embed_dim, num_layers) == (5376, 62) else head_dim
        cfg = ModelConfig(
            **common, attention_types=attention_pattern(num_layers, ("local",) * 5 + ("global",)),
            use_qk_norm=True, rope_base_frequency=int(g("rope.freq_base", 1_000_000)),
            local_rope_base_frequency=10_000, query_pre_attn_scalar=scalar,
            rope_scale_factor=float(g("rope.scaling.factor", 1.0)))
    return cfg.replace(**overrides) if overrides else cfg


_CHECKED_FIELDS = ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                   "sliding_window_size", "use_qk_norm", "rope_base_frequency", "query_pre_attn_scalar",
                   "attention_types", "attn_logits_soft_cap", "final_logit_soft_cap")


def check_config(path, cfg: ModelConfig, file_cfg: ModelConfig) -> None:
    """The model config must describe the file's architecture: every differing field is named."""
    problems = []
    for key in _CHECKED_FIELDS:
        mine, theirs = getattr(cfg, key), getattr(file_cfg, key)
        if key == "query_pre_attn_scalar":
            mine, theirs = cfg.query_scale, file_cfg.query_scale
        if key == "sliding_window_size" and AttentionType.LOCAL_SLIDING not in cfg.attention_types:
            continue
        if mine != theirs:
            problems.append(f"model config {key}={_short(mine)} but the file has {_short(theirs)}")
    if problems:
        raise CheckpointLoadError(path, problems)



def _short(v):
    if isinstance(v, tuple) and len(v) > 6:
        return f"({', '.join(str(getattr(x, 'value', x)) for x in v[:6])}, ...)"
    return v


def load_gguf(path, cfg: ModelConfig | None = None, *, sharding=None) -> tuple[ModelConfig, dict]:
    """(config, params) from a GGUF. With `cfg` (e.g. `get_config('gemma3_270m')`) the file's metadata
    must agree with it; without, the config is read from the file. `sharding`: see `_common.assemble`."""
    f = GGUFFile(path)
    file_cfg = gguf_config(f)
    if cfg is None:
        cfg = file_cfg
    else:
        check_config(f.path, cfg, file_cfg)
    plan = hf_style_plan(cfg, gguf_name, norm_offset=1.0)
    # rope_freqs (long-context frequency factors) would change the model: refused as unexpected.
    return cfg, assemble(f.path, plan, f, cfg, sharding=sharding)
