"""`make train EXP=name ARGS="--config.rl.n=16"`: run one experiment end to end.

    python -m bon_jax.cli.train --config=experiments/arith_bo32.py [--config.rl.n=16] [--only=eval]

Config errors are reported before any compute; a SIGTERM checkpoints and exits with status 0 so that a
restarted command resumes where it stopped.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from bon_jax.cli import parse_flags, run_reporting_errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "overrides config.workdir (default runs/<name>)")
_ONLY = flags.DEFINE_enum(
    "only", None, ["eval"], "eval: evaluate and report the cached policies, train nothing"
)


def main(argv):
    del argv
    from bon_jax.pipeline.run import run_experiment

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=experiments/<name>.py is required")
    if _WORKDIR.value:
        config.workdir = _WORKDIR.value
    run_reporting_errors(lambda: run_experiment(config, only=_ONLY.value))


def run():
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
