"""Hugging Face safetensors checkpoints of Gemma 2 / Gemma 3 (`model.safetensors`, or a directory of
shards with `model.safetensors.index.json`).

The safetensors format is an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets}}` and the raw little-endian tensors. It is read here directly
through a memory map (bfloat16 through `ml_dtypes`), one tensor at a time, so nothing but the tensor
being converted is ever resident.

HF Gemma layout (`nn.Linear` weights are [out, in]):

    model.embed_tokens.weight                          [V, D]
    model.layers.i.self_attn.{q,k,v}_proj.weight       [N*H, D], [K*H, D], [K*H, D]
    model.layers.i.self_attn.o_proj.weight             [D, N*H]
    model.layers.i.self_attn.{q,k}_norm.weight         [H]      (Gemma 3)
    model.layers.i.{input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
                    post_feedforward_layernorm}.weight [D]
    model.layers.i.mlp.{gate,up}_proj.weight           [F, D];  mlp.down_proj.weight [D, F]
    model.norm.weight                                  [D]

HF's Gemma RMSNorm computes `x * (1 + w)` exactly as ours, so norm weights are taken as they are. Gemma 3
multimodal checkpoints put the decoder under `language_model.model.` (or `model.language_model.`); the
prefix is found from the embedding's name, and the vision tower / projector tensors are ignored. An
untied `lm_head.weight` is refused unless it equals the embedding.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from bon_jax.errors import DataError
from bon_jax.models.checkpoints._common import CheckpointLoadError, assemble, hf_style_plan
from bon_jax.models.config import ModelConfig

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MULTIMODAL = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")

_NAMES = {
    "embed": "embed_tokens.weight",
    "final_norm": "norm.weight",
    "pre_attention_norm": "layers.{i}.input_layernorm.weight",
    "q": "layers.{i}.self_attn.q_proj.weight",
    "k": "layers.{i}.self_attn.k_proj.weight",
    "v": "layers.{i}.self_attn.v_proj.weight",
    "o": "layers.{i}.self_attn.o_proj.weight",
    "q_norm": "layers.{i}.self_attn.q_norm.weight",
    "k_norm": "layers.{i}.self_attn.k_norm.weight",
    "post_attention_norm": "layers.{i}.post_attention_layernorm.weight",
    "pre_ffw_norm": "layers.{i}.pre_feedforward_layernorm.weight",
    "post_ffw_norm": "layers.{i}.post_feedforward_layernorm.weight",
    "gate": "layers.{i}.mlp.gate_proj.weight",
    "up": "layers.{i}.mlp.up_proj.weight",
    "down": "layers.{i}.mlp.down_proj.weight",
}


class SafetensorsFiles:
    """`TensorFile` over one `.safetensors` file or a directory of shards."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            files = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
            if not files:
                raise DataError(self.path, "directory holds no .safetensors file")
            files = [os.path.join(self.path, f) for f in files]
        else:
            files = [self.path]
        self._index = {}  # name -> (file, dtype, shape, start, end)
        for file in files:
            with open(file, "rb") as fh:
                try:
                    (n,) = struct.unpack("<Q", fh.read(8))
                    header = json.loads(fh.read(n))
                except (struct.error, ValueError) as e:
                    raise DataError(file, f"not a safetensors file: {e}") from e
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in _DTYPES:
                    raise DataError(file, f"tensor {name!r} has unsupported dtype {info['dtype']}")
                if name in self._index:
                    raise DataError(file, f"tensor {name!r} appears in two shards")
                start, end = info["data_offsets"]
                self._index[name] = (file, info["dtype"], tuple(info["shape"]), base + start, base + end)
        self._maps = {}

    def names(self):
        return self._index.keys()

    def shape(self, name):
        return self._index[name][2]

    def read(self, name):
        file, dtype, shape, start, end = self._index[name]
        if file not in self._maps:
            self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
        dt = np.dtype(_DTYPES[dtype])
        count = (end - start) // dt.itemsize
        return np.frombuffer(self._maps[file], dt, count, start).reshape(shape)


def _prefix(path, files: SafetensorsFiles) -> str:
    embeds = [n for n in files.names() if n.endswith("embed_tokens.weight")]
    if len(embeds) != 1:
        raise CheckpointLoadError(path, [f"expected one '*embed_tokens.weight' tensor, found {embeds or 'none'}"])
    return embeds[0][: -len("embed_tokens.weight")]


def load_safetensors(path, cfg: ModelConfig, *, sharding=None) -> dict:
    """Params of `cfg` from a HF Gemma 2 / Gemma 3 safetensors file or directory (any float dtype; cast to
    `cfg.param_dtype`). `sharding`: see `_common.assemble`."""
    files = SafetensorsFiles(path)
    prefix = _prefix(path, files)
    plan = hf_style_plan(cfg, lambda kind, i: prefix + _NAMES[kind].format(i=i))
    head = "lm_head.weight"
    if head in files.names():
        embed_name = prefix + _NAMES["embed"]
        if files.shape(head) != files.shape(embed_name) or not np.array_equal(files.read(head), files.read(embed_name)):
            raise CheckpointLoadError(path, [f"tensor {head!r} differs from {embed_name!r}: the model ties them"])
    ignored = lambda n: n == head or n.startswith(_MULTIMODAL)
    return assemble(path, plan, files, cfg, sharding=sharding, ignored=ignored)
