"""Device mesh and sharding helpers: `jax.jit` with a 2-D `Mesh` and `NamedSharding`, no pmap.

The mesh has two axes:

- `data`: pure data parallelism; parameters are replicated along it.
- `fsdp`: fully sharded data parallelism (ZeRO-3). Each parameter and optimizer-state leaf is split
  along one of its axes over `fsdp`; XLA all-gathers it for the matmul and reduce-scatters its
  gradient. The batch is split over `fsdp` too, so every device holds a distinct slice of the batch.

So batch-like arrays shard axis 0 over `('data', 'fsdp')` (B must divide by `data * fsdp`), and
parameters shard over `fsdp` only. Mesh axes are `AxisType.Auto`: the compiler propagates
shardings through the step, as GSPMD always did; jax 0.10's `make_mesh` default (`Explicit`)
would instead demand sharding annotations on every ambiguous op of the model.

Multi-host: call `maybe_initialize_distributed()` first thing, before anything touches jax
devices, then feed each host's slice of the batch (`process_shard`) through
`host_local_batch_to_global`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # the batch (or group) axis is split over every device
DEFAULT_MIN_SIZE_TO_SHARD = 2**14  # smaller leaves (norm scales, biases) stay replicated

PyTree = Any


# --------------------------------------------------------------------------------------------------
# Mesh.


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp)` mesh over `devices` (default: all devices of all processes).

    One of `data` / `fsdp` may be -1: it takes all the devices the other leaves. When
    `data * fsdp` is a proper divisor of the device count the mesh uses the first `data * fsdp`
    devices (handy for tests; refused on multi-process runs, where it would strand hosts).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {DATA: data, FSDP: fsdp}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise ValueError(f"mesh axis {name!r} must be a positive int or -1, got {size!r}")
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of data / fsdp may be -1")
    if -1 in (data, fsdp):
        known = fsdp if data == -1 else data
        if n % known:
            raise ValueError(f"{n} devices do not split into {known}-device groups")
        data, fsdp = (n // known, fsdp) if data == -1 else (data, n // known)
    total = data * fsdp
    if n % total:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} = {total} devices does not divide the {n} devices")
    if total < n and jax.process_count() > 1:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} uses {total} of {n} devices; on a multi-process run "
            "the mesh must span every device"
        )
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, fsdp), AXES, axis_types=auto, devices=devices[:total])


def use_mesh(mesh: Mesh):
    """Context manager making `mesh` the ambient mesh (bare PartitionSpecs then work in
    `with_sharding_constraint`). `jax.set_mesh` in jax >= 0.7; `jax.sharding.use_mesh` before."""
    set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh
    return set_mesh(mesh)


def batch_shards(mesh: Mesh) -> int:
    """How many slices the batch axis is cut into: `data * fsdp`. Batch sizes must divide by it."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


# --------------------------------------------------------------------------------------------------
# Shardings.


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Axis 0 of an `ndim`-D array split over `('data', 'fsdp')`; the other axes replicated."""
    if ndim < 1:
        raise ValueError(f"a batch array needs at least one axis, got ndim={ndim}")
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def group_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """For the sampler's `[B, M, ...]` arrays: prompts B split over `('data', 'fsdp')`, the M
    samples of a prompt kept together on one device so group reductions need no communication."""
    if ndim < 2:
        raise ValueError(f"a group array is [B, M, ...], got ndim={ndim}")
    return batch_sharding(mesh, ndim)


def leaf_spec(shape: Sequence[int], fsdp_size: int, min_size_to_shard: int) -> P:
    """The FSDP PartitionSpec of one leaf: its largest axis divisible by `fsdp_size` goes over
    'fsdp' (the first such axis on ties); leaves under `min_size_to_shard` elements, or with no
    divisible axis, are replicated."""
    shape = tuple(int(d) for d in shape)
    if fsdp_size == 1 or not shape or int(np.prod(shape)) < min_size_to_shard:
        return P()
    candidates = [(d, -i) for i, d in enumerate(shape) if d % fsdp_size == 0 and d >= fsdp_size]
    if not candidates:
        return P()
    _, neg_axis = max(candidates)
    spec = [None] * len(shape)
    spec[-neg_axis] = FSDP
    return P(*spec)


def param_sharding(tree: PyTree, mesh: Mesh, min_size_to_shard: int = DEFAULT_MIN_SIZE_TO_SHARD) -> PyTree:
    """A NamedSharding for every leaf of `tree` (parameters, optimizer state, their
    `jax.eval_shape` abstractions, or anything with `.shape`; shapeless leaves are replicated),
    following `leaf_spec`."""
    fsdp_size = mesh.shape[FSDP]

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        return NamedSharding(mesh, leaf_spec(shape, fsdp_size, min_size_to_shard))

    return jax.tree.map(one, tree)


def shard_params(params: PyTree, mesh: Mesh, min_size_to_shard: int = DEFAULT_MIN_SIZE_TO_SHARD) -> PyTree:
    """`params` placed on `mesh` with `param_sharding`."""
    return jax.device_put(params, param_sharding(params, mesh, min_size_to_shard))


def sharded_init(
    init_fn: Callable[..., PyTree],
    rng: jax.Array,
    mesh: Mesh,
    *args,
    min_size_to_shard: int = DEFAULT_MIN_SIZE_TO_SHARD,
) -> PyTree:
    """`init_fn(rng, *args)` computed directly into its FSDP shardings.

    The output shapes come from `jax.eval_shape`, so the shardings are known before any compute
    and each device only ever materialises its own shards: a model too big for one device still
    initialises. `args` are traced (dummy inputs for a Flax `init` are fine).
    """
    abstract = jax.eval_shape(init_fn, rng, *args)
    shardings = param_sharding(abstract, mesh, min_size_to_shard)
    return jax.jit(init_fn, out_shardings=shardings)(rng, *args)


# --------------------------------------------------------------------------------------------------
# Multi-host.


def host_local_batch_to_global(local_batch: PyTree, mesh: Mesh, sharding: Any = None) -> PyTree:
    """Assembles each process's slice of the batch into global `jax.Array`s.

    `local_batch` is a pytree of host arrays holding this process's rows (axis 0); the global
    batch has `process_count` times as many rows. `sharding` is one `Sharding` for every leaf, a
    pytree of them matching `local_batch` (a None in it picks the default), or None: then each
    leaf gets `batch_sharding` of its rank. On one process this is a sharded `device_put`.
    """

    def one(s, x):
        x = np.asarray(x)
        s = batch_sharding(mesh, x.ndim) if s is None else s
        return jax.make_array_from_process_local_data(s, x)

    if sharding is None or isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(sharding, x), local_batch)
    return jax.tree.map(one, sharding, local_batch, is_leaf=lambda s: s is None)


def process_shard(
    num_items: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """This process's contiguous share of `num_items` items (e.g. dataset records).

    Shares differ by at most one item, the first `num_items % process_count` processes taking
    the extra. Defaults to `jax.process_index()` of `jax.process_count()`.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index {index} is outside [0, {count})")
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def detect_multiprocess(environ: Mapping[str, str] | None = None) -> str | None:
    """Names the launcher when the environment says this is one of several processes, else None.

    Recognised: an explicit `JAX_COORDINATOR_ADDRESS`; SLURM with `SLURM_NTASKS > 1`; Open MPI
    with `OMPI_COMM_WORLD_SIZE > 1`; a Cloud TPU pod slice (more than one entry in
    `TPU_PROCESS_ADDRESSES` / `TPU_WORKER_HOSTNAMES`) or several slices (`MEGASCALE_NUM_SLICES`).
    """
    env = os.environ if environ is None else environ

    def count(key: str) -> int:
        try:
            return int(env.get(key, "1"))
        except ValueError:
            return 1

    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax-coordinator"
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env and count("SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or count("MEGASCALE_NUM_SLICES") > 1:
        return "cloud-tpu"
    return None


def maybe_initialize_distributed(
    enable: bool | None = None, *, environ: Mapping[str, str] | None = None, **initialize_kwargs
) -> bool:
    """Calls `jax.distributed.initialize` on a multi-process launch; a no-op on one host.

    `enable=None` detects the launch with `detect_multiprocess`; True / False force the choice.
    Must run before anything queries jax devices. `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` are
    passed on when set (with `JAX_COORDINATOR_ADDRESS`, which jax reads itself); otherwise jax's
    own cluster detection fills them. Returns whether the distributed runtime is initialised.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ if environ is None else environ
    launcher = detect_multiprocess(env) if enable is None else ("forced" if enable else None)
    if launcher is None:
        return False
    kwargs = dict(initialize_kwargs)
    for key, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env.get(key) and arg not in kwargs:
            kwargs[arg] = int(env[key])
    logging.info("initialising jax.distributed (launcher: %s)", launcher)
    jax.distributed.initialize(**kwargs)
    return True
