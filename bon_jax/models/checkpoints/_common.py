"""What every checkpoint layout shares: a plan (our param path -> the file's tensors and how to convert
them), one check of the plan against the file that names every missing, unexpected or mis-shaped tensor,
and leaf-by-leaf assembly onto a sharding.

A layout module builds a `Plan` for a `ModelConfig`: for each leaf of our param tree (path
`'layer_0/attn/q_einsum/w'`), the names and expected shapes of the file tensors it is made of and a
function of those numpy arrays returning the leaf in our layout. `assemble` checks every name and shape
first (one error listing all problems, so a user fixing a checkpoint sees everything at once), then
builds the leaves one at a time: each is read, converted, cast to `param_dtype` and placed on its
sharding before the next is read, so the host never holds more than one converted tensor, not the whole
model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import jax
import numpy as np

from bon_jax.errors import BonJaxError
from bon_jax.models.config import ModelConfig
from bon_jax.models.params import abstract_params


class CheckpointLoadError(BonJaxError, ValueError):
    """A checkpoint that does not fit the model: the message names each offending tensor."""

    def __init__(self, path, problems: Sequence[str]):
        self.path = str(path)
        self.problems = list(problems)
        shown = self.problems[:40]
        more = f"\n  ... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        super().__init__(f"{self.path}: checkpoint does not fit the model:\n  " + "\n  ".join(shown) + more)


@dataclasses.dataclass(frozen=True)
class Source:
    """One leaf of our tree: the file tensors it is built from, their expected shapes, the conversion."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    convert: Callable[..., np.ndarray]  # convert(*arrays) -> our leaf (numpy)


def source(names: str | Sequence[str], shapes, convert=None) -> Source:
    names = (names,) if isinstance(names, str) else tuple(names)
    shapes = (tuple(shapes),) if len(names) == 1 else tuple(tuple(s) for s in shapes)
    return Source(names, shapes, convert or (lambda x: x))


class TensorFile(Protocol):
    """Read access to a checkpoint's named tensors: shapes without reading, data one tensor at a time."""

    def names(self) -> Iterable[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str) -> np.ndarray: ...


Plan = dict[str, Source]  # our leaf path ('layer_0/attn/q_einsum/w') -> Source


def flat_paths(tree, prefix: str = "") -> dict:
    """{'a/b/c': leaf} of a nested dict."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_paths(v, key + "/"))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        *parents, name = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = leaf
    return tree


def expected_leaves(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Our param tree's leaves (path -> ShapeDtypeStruct) for `cfg`, computed abstractly."""
    return flat_paths(abstract_params(cfg))


def check_plan(path, plan: Plan, file: TensorFile, cfg: ModelConfig, *, ignored: Callable[[str], bool] = lambda n: False):
    """Every problem at once: our leaves the plan lacks, file tensors missing or unexpected, wrong shapes."""
    problems = []
    want = expected_leaves(cfg)
    for leaf in sorted(want.keys() - plan.keys()):
        problems.append(f"no source for parameter {leaf} {tuple(want[leaf].shape)}")
    present = set(file.names())
    used = set()
    for leaf, src in plan.items():
        for name, shape in zip(src.names, src.shapes):
            used.add(name)
            if name not in present:
                problems.append(f"missing tensor {name!r} (for {leaf}, expected shape {shape})")
            elif tuple(file.shape(name)) != tuple(shape):
                problems.append(
                    f"tensor {name!r} has shape {tuple(file.shape(name))}, expected {shape} (for {leaf})")
    for name in sorted(present - used):
        if not ignored(name):
            problems.append(f"unexpected tensor {name!r} {tuple(file.shape(name))}")
    if problems:
        raise CheckpointLoadError(path, problems)


def assemble(path, plan: Plan, file: TensorFile, cfg: ModelConfig, *, sharding=None,
             ignored: Callable[[str], bool] = lambda n: False) -> dict:
    """Checks the plan against the file, then builds our param tree leaf by leaf.

    `sharding`: None (each leaf a numpy-backed jax array on the default device), or a pytree of
    `jax.sharding.Sharding` matching our params (e.g. `parallel.param_sharding(abstract, mesh)`): each leaf
    goes straight onto its sharding with `jax.make_array_from_callback`, every device taking its slice of
    the one converted host tensor.
    """
    check_plan(path, plan, file, cfg, ignored=ignored)
    want = expected_leaves(cfg)
    shardings = flat_paths(sharding) if sharding is not None else {}
    out = {}
    for leaf, src in plan.items():
        arrays = [file.read(n) for n in src.names]
        value = np.asarray(src.convert(*arrays))
        target = want[leaf]
        if value.shape != tuple(target.shape):  # a bug in a plan, not in the file
            raise CheckpointLoadError(path, [f"{leaf}: converted to {value.shape}, expected {target.shape}"])
        value = value.astype(target.dtype)
        if leaf in shardings:
            out[leaf] = jax.make_array_from_callback(value.shape, shardings[leaf], lambda idx, v=value: v[idx])
        else:
            out[leaf] = jax.numpy.asarray(value)
        del arrays, value
    return unflatten(out)


# Layout helpers shared by the Hugging Face and GGUF plans (both store [out, in] matrices).


def hf_style_plan(cfg: ModelConfig, names: Callable[[str, int | None], str], *, norm_offset: float = 0.0) -> Plan:
    """Plan for a checkpoint with HF Gemma's layout: `q_proj [N*H, D]`, `k_proj`/`v_proj [K*H, D]`,
    `o_proj [D, N*H]`, `gate_proj`/`up_proj [F, D]`, `down_proj [D, F]`, embedding `[V, D]`, norm
    weights `w` with the layer computing `x * (1 + w)` (stored as `1 + w` when `norm_offset` is 1:
    llama.cpp's GGUF convention, undone here). `names(kind, layer)` spells the file's tensor names."""
    N, K, D, H, F, V = cfg.num_heads, cfg.num_kv_heads, cfg.embed_dim, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    norm = lambda w: np.asarray(w, np.float32) - norm_offset
    plan: Plan = {
        "embedder/input_embedding": source(names("embed", None), (V, D)),
        "final_norm/scale": source(names("final_norm", None), (D,), norm),
    }
    for i in range(cfg.num_layers):
        p = f"layer_{i}/"
        plan[p + "pre_attention_norm/scale"] = source(names("pre_attention_norm", i), (D,), norm)
        plan[p + "attn/q_einsum/w"] = source(
            names("q", i), (N * H, D), lambda w: w.reshape(N, H, D).transpose(0, 2, 1))
        plan[p + "attn/kv_einsum/w"] = source(
            (names("k", i), names("v", i)), ((K * H, D), (K * H, D)),
            lambda k, v: np.stack([k, v]).reshape(2, K, H, D).transpose(0, 1, 3, 2))
        plan[p + "attn/attn_vec_einsum/w"] = source(
            names("o", i), (D, N * H), lambda w: w.reshape(D, N, H).transpose(1, 2, 0))
        if cfg.use_qk_norm:
            plan[p + "attn/query_norm/scale"] = source(names("q_norm", i), (H,), norm)
            plan[p + "attn/key_norm/scale"] = source(names("k_norm", i), (H,), norm)
        if cfg.use_post_attn_norm:
            plan[p + "post_attention_norm/scale"] = source(names("post_attention_norm", i), (D,), norm)
        plan[p + "pre_ffw_norm/scale"] = source(names("pre_ffw_norm", i), (D,), norm)
        if cfg.use_post_ffw_norm:
            plan[p + "post_ffw_norm/scale"] = source(names("post_ffw_norm", i), (D,), norm)
        plan[p + "mlp/gating_einsum/w"] = source(
            (names("gate", i), names("up", i)), ((F, D), (F, D)),
            lambda g, u: np.stack([g, u]).transpose(0, 2, 1))
        plan[p + "mlp/linear/w"] = source(names("down", i), (D, F), lambda w: np.asarray(w).T)
    return plan
