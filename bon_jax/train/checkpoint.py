"""Orbax checkpoints of a training run: params, optimizer state, step, RNG and data-iterator state.

One `Checkpointer` per run directory. A checkpoint holds two items:
  - `state`: the pytree of arrays (params, optimizer state, anchor params, RNG key data, step), saved with
    `StandardSave` and restored against an *abstract* target (`jax.ShapeDtypeStruct`s carrying shardings),
    so each host reads only its own shards and nothing is materialised on one device first;
  - `meta`: JSON (data-iterator state, config hash, anything small and host-side).

Restoring checks the saved tree against the target first and refuses a mismatch with an error that names
the differing paths and shapes, instead of orbax's generic failure.

A model's params alone (a stage's output, or `model.checkpoint` with format `orbax`) are one such directory
holding step 0 with state `{"params": params}`: `save_params` / `load_params`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bon_jax.errors import BonJaxError
from bon_jax.models.params import abstract_params


class CheckpointMismatchError(BonJaxError, ValueError):
    """The saved checkpoint's tree does not match the tree the run expects."""


def _leaf_signature(x) -> tuple[tuple[int, ...], str] | None:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None:
        return None
    return tuple(int(d) for d in shape), str(np.dtype(dtype)) if dtype is not None else "?"


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _path_str(path) -> str:
    """'train/opt_state/1/0/mu/w': the same string whether a node is a dict, a dataclass or a tuple, as
    orbax's saved metadata stores every node as a dict or list."""
    return "/".join(_key_name(e) for e in path)


def _flat_signatures(tree) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_str(path): _leaf_signature(leaf) for path, leaf in flat}


def tree_mismatches(saved, expected, *, check_dtype: bool = False) -> list[str]:
    """Human-readable differences between two pytrees of arrays / metadata (paths, shapes, dtypes)."""
    got, want = _flat_signatures(saved), _flat_signatures(expected)
    problems = [f"missing in checkpoint: {k} {want[k]}" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected in checkpoint: {k} {got[k]}" for k in sorted(got.keys() - want.keys())]
    for k in sorted(want.keys() & got.keys()):
        g, w = got[k], want[k]
        if g is None or w is None:
            continue
        if g[0] != w[0] or (check_dtype and g[1] != w[1]):
            problems.append(f"{k}: checkpoint has {g[0]} {g[1]}, run expects {w[0]} {w[1]}")
    return problems


class Checkpointer:
    """Saves and restores training state under `directory`, keeping the last `max_to_keep` steps."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, async_save: bool = False):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        # Handlers named up front: a manager that opens an existing directory (a resumed run) can then
        # read item metadata before it has saved anything itself.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state, meta: Mapping[str, Any] | None = None, *, force: bool = True):
        """Saves `state` (pytree of arrays) and `meta` (JSON-serialisable) as checkpoint `step`.

        A checkpoint of the same step already on disk is replaced: a rerun may save again what its killed
        predecessor had committed (a stage's final params, written before its `done.json` was).
        """
        step = int(step)
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(dict(meta or {})),
            ),
            force=force,
        )

    def wait(self):
        """Blocks until any asynchronous save has finished."""
        self._manager.wait_until_finished()

    def restore(self, abstract_state, step: int | None = None):
        """Restores `(state, meta)` of `step` (default: latest) onto the shardings of `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or of arrays. Raises
        `FileNotFoundError` if there is no checkpoint and `CheckpointMismatchError` naming every differing
        path if the saved tree does not have the expected structure and shapes.
        """
        step = self.latest_step if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = self._manager.item_metadata(step)["state"]
        abstract_state = jax.tree.map(_as_abstract, abstract_state)
        problems = tree_mismatches(saved, abstract_state)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatchError(
                f"checkpoint {self.directory} step {step} does not match this run's state tree "
                f"(was it written by a different model config?):\n  {shown}{more}"
            )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], dict(restored["meta"] or {})

    def close(self):
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_abstract(x):
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(x, jax.ShapeDtypeStruct):
        return x if x.sharding is not None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def save_params(path: str | os.PathLike, params) -> None:
    """Writes `params` to the directory `path` as a one-step checkpoint (read back by `load_params`)."""
    with Checkpointer(path, max_to_keep=1) as ckpt:
        ckpt.save(0, {"params": params})


def load_params(path: str | os.PathLike, cfg, *, scalar_head: bool = False, sharding=None):
    """The params of model config `cfg` (with the scalar head if `scalar_head`) saved by `save_params`.

    Restored against `abstract_params(cfg)` (placed on `sharding`, a matching pytree of shardings, if
    given), so a checkpoint of another config raises `CheckpointMismatchError` naming the differing leaves.
    """
    abstract = abstract_params(cfg, scalar_head=scalar_head)
    if sharding is not None:
        place = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
        abstract = jax.tree.map(place, abstract, sharding)
    abstract = {"params": abstract}
    with Checkpointer(path, max_to_keep=1) as ckpt:
        state, _ = ckpt.restore(abstract)
    return state["params"]
