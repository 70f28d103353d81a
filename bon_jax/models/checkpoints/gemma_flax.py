"""The official Gemma Flax release (an orbax checkpoint directory), restored onto a sharding.

Two tree layouts are accepted (as google-deepmind/gemma's `gm.ckpts` names them):
- FLAT, as the releases are stored: `{'transformer/layer_0/attn/q_einsum': {'w': ...},
  'transformer/layer_0/mlp/gating_einsum': {'w': ...}, 'transformer/embedder': {'input_embedding': ...},
  'transformer/final_norm': {'scale': ...}}`;
- NESTED, Flax `model.init()`'s structure (`{'layer_0': {'attn': ...}}`, optionally under `params`),
  where the MLP kernels are bare leaves (`mlp/gating_einsum`, `mlp/linear`).

Our tree differs from the release only in spelling and three layout points, handled here:
- Gemma 3's query/key norms are `_query_norm` / `_key_norm`;
- Gemma 2 9B/27B and Gemma 3 store `gating_einsum` as [2, F, D] (gemma's `transpose_gating_einsum`),
  Gemma 1 and Gemma 2 2B as [2, D, F] (ours); the orientation is read off the shape;
- the embedding has 128 padding rows beyond the tokenizer's vocabulary in Gemma 1 / 2 releases (256128 vs
  256000): rows past `cfg.vocab_size` are dropped, never unused rows added;
- multi-head Gemma 1 checkpoints hold one `qkv_einsum` [3, N, D, H] instead of `q_einsum` + `kv_einsum`.

Restoring is orbax's own sharded restore against an abstract target (`jax.ShapeDtypeStruct`s carrying each
leaf's `NamedSharding`), so every host reads only its shards and no host ever holds the whole model; the
few leaves that need a layout change are then converted by a jitted function with the final sharding.
Multimodal leaves (`SigLiPFromPatches_0/...`, `embedder/mm_*`) are skipped, not read.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from bon_jax import parallel
from bon_jax.models.checkpoints._common import (
    CheckpointLoadError,
    Plan,
    check_plan,
    expected_leaves,
    flat_paths,
    source,
    unflatten,
)
from bon_jax.models.config import ModelConfig


def _is_multimodal(path: str) -> bool:
    return path.startswith("SigLiPFromPatches_0/") or "/mm_" in f"/{path}" or path.startswith("vision_encoder/")


def _canonical(path: str) -> str:
    """A checkpoint path spelled as ours: 'transformer/layer_0/attn/_key_norm/scale' -> 'layer_0/attn/key_norm/scale'."""
    for prefix in ("params/", "transformer/"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    path = path.replace("/_query_norm/", "/query_norm/").replace("/_key_norm/", "/key_norm/")
    if path.endswith("/mlp/gating_einsum") or path.endswith("/mlp/linear"):
        path += "/w"
    return path


class _MetadataFile:
    """Names and shapes of an orbax checkpoint's leaves (our spelling), for `check_plan`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self._shapes = shapes

    def names(self):
        return self._shapes.keys()

    def shape(self, name):
        return self._shapes[name]

    def read(self, name):  # pragma: no cover - restored by orbax, never read one by one
        raise NotImplementedError


def read_metadata(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{our-spelled path: (the checkpoint's own path, shape)} of every leaf in the checkpoint."""
    try:
        tree = ocp.StandardCheckpointer().metadata(os.fspath(path)).item_metadata.tree
    except (FileNotFoundError, ValueError, OSError) as e:
        raise CheckpointLoadError(path, [f"not an orbax checkpoint directory: {e}"]) from e
    out = {}
    for raw, meta in flat_paths(dict(tree)).items():
        if _is_multimodal(raw):
            continue
        out[_canonical(raw)] = (raw, tuple(int(d) for d in meta.shape))
    return out


def gemma_plan(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> Plan:
    """Our leaf -> the checkpoint leaves (our spelling) it comes from. Conversions take jax arrays."""
    want = expected_leaves(cfg)
    N, K, D, H, F, V = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    plan: Plan = {}
    for leaf, spec in want.items():
        shape = tuple(spec.shape)
        if leaf.endswith("/mlp/gating_einsum/w") and shapes.get(leaf) == (2, F, D) and F != D:
            plan[leaf] = source(leaf, (2, F, D), lambda w: w.transpose(0, 2, 1))
        elif leaf == "embedder/input_embedding" and leaf in shapes and shapes[leaf][0] > V \
                and shapes[leaf][1:] == (D,):
            plan[leaf] = source(leaf, shapes[leaf], lambda w: w[:V])
        elif leaf.endswith("/attn/q_einsum/w") and leaf not in shapes and N == K:
            qkv = leaf.replace("/q_einsum/", "/qkv_einsum/")
            plan[leaf] = source(qkv, (3, N, D, H), lambda w: w[0])
        elif leaf.endswith("/attn/kv_einsum/w") and leaf not in shapes and N == K:
            qkv = leaf.replace("/kv_einsum/", "/qkv_einsum/")
            plan[leaf] = source(qkv, (3, N, D, H), lambda w: w[1:])
        else:
            plan[leaf] = source(leaf, shape)
    return plan


def load_gemma_flax(path, cfg: ModelConfig, *, mesh=None,
                    min_size_to_shard: int = parallel.DEFAULT_MIN_SIZE_TO_SHARD) -> dict:
    """Params of `cfg` from a Gemma Flax release directory (FLAT or NESTED orbax tree), cast to
    `cfg.param_dtype`. With `mesh` every leaf is restored straight onto its FSDP sharding
    (`parallel.param_sharding`), else onto the first local device."""
    meta = read_metadata(path)
    shapes = {k: s for k, (_, s) in meta.items()}
    plan = gemma_plan(cfg, shapes)
    check_plan(path, plan, _MetadataFile(shapes), cfg)

    dtype = cfg.params_dtype
    if mesh is not None:
        sharding_of = lambda shape: jax.sharding.NamedSharding(
            mesh, parallel.leaf_spec(shape, mesh.shape[parallel.FSDP], min_size_to_shard))
    else:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        sharding_of = lambda shape: device
    # The restore target, in the checkpoint's own structure (multimodal leaves skipped).
    raw_tree = ocp.StandardCheckpointer().metadata(os.fspath(path)).item_metadata.tree
    raw_of = {raw: ours for ours, (raw, _) in meta.items()}

    def target(raw, m):
        if raw not in raw_of:
            return ocp.PLACEHOLDER
        return jax.ShapeDtypeStruct(tuple(m.shape), dtype, sharding=sharding_of(tuple(m.shape)))

    flat_target = {raw: target(raw, m) for raw, m in flat_paths(dict(raw_tree)).items()}
    restored = ocp.StandardCheckpointer().restore(os.fspath(path), _nest_like(raw_tree, flat_target))
    restored = {raw_of[raw]: x for raw, x in flat_paths(restored).items() if raw in raw_of}

    want = expected_leaves(cfg)
    out = {}
    for leaf, src in plan.items():
        arrays = [restored[n] for n in src.names]
        if src.names == (leaf,) and tuple(arrays[0].shape) == tuple(want[leaf].shape):
            out[leaf] = arrays[0]  # already our layout and sharding
            continue
        shape = tuple(want[leaf].shape)
        out[leaf] = jax.jit(src.convert, out_shardings=sharding_of(shape))(*arrays)
    del restored
    return unflatten(out)


def _nest_like(raw_tree, flat: dict) -> dict:
    """`flat` ('a/b' -> leaf) back into `raw_tree`'s nesting (whose keys may themselves contain '/')."""

    def build(node, prefix):
        return {k: build(v, f"{prefix}{k}/") if isinstance(v, dict) else flat[f"{prefix}{k}"]
                for k, v in node.items()}

    return build(_as_dict(raw_tree), "")


def _as_dict(node):
    if isinstance(node, dict):
        return {k: _as_dict(v) for k, v in node.items()}
    return node


__all__ = ["gemma_plan", "load_gemma_flax", "read_metadata"]
