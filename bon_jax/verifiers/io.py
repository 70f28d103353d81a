"""Saving and loading a verifier: one directory of plain files, readable without the training run.

    directory/
      params.msgpack    flax.serialization msgpack of the param tree (numpy arrays, dtypes kept)
      config.json       the ModelConfig's fields
      tokenizer.model   the sentencepiece model (optional)
      meta.json         anything small: training metrics, task name (optional)

A verifier is small next to a training state (no optimizer moments, one host), so a msgpack file is simpler
than an orbax checkpoint and needs no run directory. Each file is written to a temporary name and renamed,
so a crash never leaves a half-written file under the final name. Loading checks the tree against the
config's expected params (paths, shapes, dtypes) and names every difference.
"""

from __future__ import annotations

import dataclasses
import json
import os

import flax.serialization
import jax
import numpy as np

from bon_jax.models import ModelConfig, abstract_params
from bon_jax.tokenizer import Tokenizer
from bon_jax.train.checkpoint import CheckpointMismatchError, tree_mismatches

PARAMS_FILE, CONFIG_FILE, TOKENIZER_FILE, META_FILE = "params.msgpack", "config.json", "tokenizer.model", "meta.json"


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def config_to_dict(cfg: ModelConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["attention_types"] = [str(getattr(t, "value", t)) for t in cfg.attention_types]
    return d


def config_from_dict(d: dict) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"verifier config has unknown fields {unknown}")
    return ModelConfig(**d)


def save_verifier(directory, params, cfg: ModelConfig, *, tokenizer=None, meta: dict | None = None) -> None:
    """Writes the verifier's files into `directory` (created if needed; existing files replaced)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    host_params = jax.tree.map(np.asarray, jax.device_get(params))
    _atomic_write(os.path.join(directory, PARAMS_FILE), flax.serialization.msgpack_serialize(host_params))
    _atomic_write(os.path.join(directory, CONFIG_FILE),
                  json.dumps(config_to_dict(cfg), indent=1, sort_keys=True).encode())
    if tokenizer is not None:
        _atomic_write(os.path.join(directory, TOKENIZER_FILE), tokenizer.to_bytes())
    if meta is not None:
        _atomic_write(os.path.join(directory, META_FILE), json.dumps(meta, indent=1, sort_keys=True,
                                                                     default=float).encode())


def load_verifier(directory):
    """(params as numpy arrays, cfg, tokenizer or None, meta dict) from `save_verifier`'s directory.

    Raises `CheckpointMismatchError` when the params do not fit the config's scalar-head model.
    """
    directory = os.fspath(directory)
    with open(os.path.join(directory, CONFIG_FILE), "rb") as f:
        cfg = config_from_dict(json.loads(f.read()))
    with open(os.path.join(directory, PARAMS_FILE), "rb") as f:
        params = flax.serialization.msgpack_restore(f.read())
    problems = tree_mismatches(params, abstract_params(cfg, scalar_head=True), check_dtype=True)
    if problems:
        raise CheckpointMismatchError(f"{directory}: params do not match the config:\n  " + "\n  ".join(problems))
    tok_path = os.path.join(directory, TOKENIZER_FILE)
    tokenizer = Tokenizer.load(tok_path) if os.path.exists(tok_path) else None
    meta_path = os.path.join(directory, META_FILE)
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path, "rb") as f:
            meta = json.loads(f.read())
    return params, cfg, tokenizer, meta
