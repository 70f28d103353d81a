"""What every stage of a run shares: the validated config, the mesh, the training and evaluation tasks and
the run directory."""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
from ml_collections import ConfigDict

from bon_jax import parallel
from bon_jax.config import task_arguments
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
        """The training task (config `task`): prompts for the base policy, the verifier and fine-tuning."""
        return get_task(self.config.task.name, **task_arguments(self.config.task))

    @functools.cached_property
    def eval_task(self):
        """The task evaluated on (config `eval.task`); the training task itself when its name is empty."""
        section = self.config.eval.task
        if not section.name:
            return self.task
        return get_task(section.name, **task_arguments(section))

    def load_tasks(self) -> None:
        """Builds (reads the data of) both tasks now, so that a bad path or file fails before any compute."""
        self.task  # noqa: B018
        if "eval" in self.config.stages:
            self.eval_task  # noqa: B018

    def rng(self, stage: str) -> jax.Array:
        """A key per stage, so stages do not share random streams."""
        return jax.random.fold_in(jax.random.key(self.config.seed), sum(map(ord, stage)))
