"""What every stage of a run shares: the validated config, the mesh, the task and the run directory."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
from ml_collections import ConfigDict

from bon_jax import parallel
from bon_jax.errors import BonJaxError
from bon_jax.tasks.registry import get_task


class StageMissingError(BonJaxError, RuntimeError):
    """An evaluation-only run found a training stage that was never run."""


@dataclasses.dataclass
class RunContext:
    config: ConfigDict
    allow_training: bool = True  # False for `make eval`: every training stage must already be cached
    shared_cache_root: str | None = None  # a sweep's points share one stage cache

    def require_training(self, stage_name: str) -> None:
        if not self.allow_training:
            raise StageMissingError(
                f"stage '{stage_name}' of {self.config.name} has not been run (nothing cached under "
                f"{self.cache_root}); run `make train EXP={self.config.name}` first"
            )

    @property
    def workdir(self) -> str:
        return self.config.workdir or os.path.join("runs", self.config.name)

    @functools.cached_property
    def cache_root(self) -> str:
        """Stage outputs live under <workdir>/stages so that runs of one experiment share them."""
        return self.shared_cache_root or os.path.join(self.workdir, "stages")

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        return parallel.make_mesh(data=self.config.mesh.data, fsdp=self.config.mesh.fsdp)

    @functools.cached_property
    def task(self):
        kwargs = dict(self.config.task.kwargs.to_dict())
        if self.config.task.data_dir:
            kwargs.setdefault("data_dir", self.config.task.data_dir)
        return get_task(self.config.task.name, **kwargs)

    def rng(self, stage: str) -> jax.Array:
        """A key per stage, so stages do not share random streams."""
        return jax.random.fold_in(jax.random.key(self.config.seed), sum(map(ord, stage)))
