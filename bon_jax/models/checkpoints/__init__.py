"""Pretrained checkpoints into bon_jax's param tree, with every tensor's name and shape checked.

    params = load_checkpoint(path, cfg)                  # format detected from the path
    params = load_checkpoint(path, cfg, mesh=mesh)       # straight onto the FSDP sharding

Formats (`format=`):
- `gemma_flax`: the official Gemma Flax release, an orbax directory (`gemma_flax.py`);
- `safetensors`: Hugging Face `model.safetensors` or a directory of shards (`hf_safetensors.py`);
- `gguf`: llama.cpp's GGUF, quantised or not, dequantised to float32 (`gguf_file.py`; needs `gguf`);
- `orbax`: params saved by bon_jax itself (`bon_jax.train.checkpoint.save_params`).
A wrong shape, a missing tensor or an unexpected one raises `CheckpointLoadError` naming each of them.
The tokenizer that comes with a checkpoint: `bon_jax.tokenizer.Tokenizer.load` for a release's
`tokenizer.model`, `Tokenizer.from_gguf` for the vocabulary inside a GGUF.
"""

from __future__ import annotations

import os

from bon_jax import parallel
from bon_jax.models.checkpoints._common import CheckpointLoadError
from bon_jax.models.checkpoints.gemma_flax import load_gemma_flax
from bon_jax.models.checkpoints.gguf_file import gguf_config, load_gguf
from bon_jax.models.checkpoints.hf_safetensors import load_safetensors
from bon_jax.models.config import ModelConfig
from bon_jax.models.params import abstract_params
from bon_jax.train.checkpoint import load_params

FORMATS = ("auto", "orbax", "gemma_flax", "safetensors", "gguf")


def detect_format(path) -> str:
    """'gguf' | 'safetensors' | 'orbax' | 'gemma_flax' from the path and what the directory holds."""
    path = os.fspath(os.path.expanduser(path))
    if path.endswith(".gguf"):
        return "gguf"
    if path.endswith(".safetensors"):
        return "safetensors"
    if not os.path.isdir(path):
        raise CheckpointLoadError(path, ["not a .gguf / .safetensors file nor a checkpoint directory"])
    entries = os.listdir(path)
    if any(e.endswith(".safetensors") for e in entries):
        return "safetensors"
    if any(e.endswith(".gguf") for e in entries):
        return "gguf"
    if "_METADATA" in entries or "manifest.ocdbt" in entries or "checkpoint" in entries:
        return "gemma_flax"
    if any(e.isdigit() and os.path.isdir(os.path.join(path, e)) for e in entries):
        return "orbax"  # a bon_jax Checkpointer directory: one sub-directory per step
    raise CheckpointLoadError(path, [f"cannot tell the checkpoint format from its entries {sorted(entries)[:8]}"])


def _single_file(path, suffix):
    if os.path.isdir(path):
        found = sorted(e for e in os.listdir(path) if e.endswith(suffix))
        if len(found) != 1:
            raise CheckpointLoadError(path, [f"expected one {suffix} file in the directory, found {found}"])
        return os.path.join(path, found[0])
    return path


def load_checkpoint(path, cfg: ModelConfig, *, format: str = "auto", mesh=None,
                    min_size_to_shard: int = parallel.DEFAULT_MIN_SIZE_TO_SHARD) -> dict:
    """The params of `cfg` read from `path`; with `mesh`, placed on `parallel.param_sharding` leaf by leaf
    (orbax: each host restores only its shards; leaves under `min_size_to_shard` elements replicated)."""
    path = os.fspath(os.path.expanduser(path))
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; known: {FORMATS}")
    fmt = detect_format(path) if format == "auto" else format
    sharding = None
    if mesh is not None and fmt in ("safetensors", "gguf", "orbax"):
        sharding = parallel.param_sharding(abstract_params(cfg), mesh, min_size_to_shard)
    if fmt == "gguf":
        return load_gguf(_single_file(path, ".gguf"), cfg, sharding=sharding)[1]
    if fmt == "safetensors":
        return load_safetensors(path, cfg, sharding=sharding)
    if fmt == "gemma_flax":
        return load_gemma_flax(path, cfg, mesh=mesh, min_size_to_shard=min_size_to_shard)
    return load_params(path, cfg, sharding=sharding)


__all__ = [
    "FORMATS", "CheckpointLoadError", "detect_format", "gguf_config", "load_checkpoint", "load_gemma_flax",
    "load_gguf", "load_safetensors",
]

