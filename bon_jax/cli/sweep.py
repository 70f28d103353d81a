"""`make sweep EXP=name [SHARD=i/k] [GRID=small]`: run an experiment's grid, resumably, in shards.

The grid is the experiment's `get_sweep()`; `--grid=small` asks for `get_sweep("small")`, a few points of
the same grid that show its shape on a laptop in minutes (experiments that define one).

Each grid point is the experiment's config with the point's overrides, in its own workdir
`runs/<exp>/sweep/<point name>` but sharing the experiment's stage cache (`runs/<exp>/stages`), so points
reuse the tokenizer, base policy and verifier they have in common. A finished point (its summary.json
exists) is skipped; `--shard=i/k` runs points i, i+k, i+2k, ... so k machines can share a grid. The results
table (CSV and markdown) and the reward-vs-KL plot are rebuilt from every finished point at the end.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bon_jax.cli import parse_flags, run_reporting_errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py", lock_config=True)
_SHARD = flags.DEFINE_string("shard", "0/1", "i/k: run every k-th grid point starting at i")
_GRID = flags.DEFINE_enum("grid", "full", ["full", "small"], "which grid of the experiment to run")
_WORKDIR = flags.DEFINE_string("workdir", None, "overrides config.workdir (default runs/<name>)")


def main(argv):
    del argv
    from bon_jax.config import load_experiment
    from bon_jax.pipeline.sweep import run_sweep

    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    module = load_experiment(flags.FLAGS["config"].config_filename)
    if not hasattr(module, "get_sweep"):
        print(f"[bon_jax] error: {module.__file__} defines no get_sweep()", file=sys.stderr)
        sys.exit(2)
    if _WORKDIR.value:
        config.workdir = _WORKDIR.value
    try:
        grid = module.get_sweep() if _GRID.value == "full" else module.get_sweep(_GRID.value)
    except TypeError:
        print(f"[bon_jax] error: {module.__file__}'s get_sweep() has no {_GRID.value!r} grid; use --grid=full",
              file=sys.stderr)
        sys.exit(2)
    try:
        shard, count = (int(x) for x in _SHARD.value.split("/"))
        if not 0 <= shard < count:
            raise ValueError
    except ValueError:
        print(f"[bon_jax] error: --shard must be i/k with 0 <= i < k, got {_SHARD.value!r}", file=sys.stderr)
        sys.exit(2)
    run_reporting_errors(lambda: run_sweep(config, grid, shard=shard, num_shards=count))


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
