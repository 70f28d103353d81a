"""Runs every missing run through `bon_jax.pipeline.run.run_experiment`, resumably, timing each.

Every run's config is built and validated before the first computes (a typo in settings.py fails at once).
A run whose summary.json and per_prompt.json exist is skipped; an interrupted one resumes (the family's
stage cache and the stages' checkpoints hold what it had done). The runs of a family share one stage
cache, so the tokenizer, and per seed the base policy, the verifier and the base policy's evaluation, are
made once. `runs.json` records, per run, its settings and the wall seconds spent on it over every
invocation, so the total time of a reproduction run in pieces is known.
"""

from __future__ import annotations

import json
import os
import time

from bon_jax.config import load_experiment, validate
from bon_jax.pipeline.sweep import point_config
from experiments.reproduce.runs import Run, refuse_drifted


def run_config(run: Run, root: str):
    base = load_experiment(run.experiment).get_config()
    c = point_config(base, dict(run.overrides), root)  # refuses a key the schema lacks
    c.seed = run.seed
    c.workdir = run.workdir(root)
    return c


def log_path(root: str, profile: str) -> str:
    return os.path.join(root, profile, "runs.json")


def read_log(root: str, profile: str) -> dict:
    path = log_path(root, profile)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write_log(root: str, profile: str, log: dict) -> None:
    path = log_path(root, profile)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(log, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def run_all(runs: list[Run], root: str, *, run_fn=None) -> dict:
    """Runs the unfinished `runs` in order; returns the updated log. `run_fn(config, cache_root)` (tests)."""
    if run_fn is None:
        from bon_jax.pipeline.run import run_experiment

        def run_fn(config, cache_root):
            return run_experiment(config, cache_root=cache_root)

    configs = [(run, run_config(run, root)) for run in runs]
    for _, c in configs:
        validate(c)
    refuse_drifted(
        [(r.workdir(root), c) for r, c in configs if r.finished(root)],
        "Pin the old value in experiments/reproduce/settings.py to keep those runs, or move them aside to "
        "rerun them.",
    )
    if not runs:
        return {}
    profile = runs[0].profile
    log = read_log(root, profile)
    todo = [(r, c) for r, c in configs if not r.finished(root)]
    print(f"[reproduce] {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    for i, (run, c) in enumerate(todo):
        entry = log.setdefault(
            run.run_id,
            {
                "label": run.label,
                "family": run.family,
                "seed": run.seed,
                "overrides": dict(run.overrides),
                "wall_s": 0.0,
                "status": "started",
            },
        )
        print(f"[reproduce] ({i + 1}/{len(todo)}) {run.run_id}")
        t0 = time.time()
        try:
            run_fn(c, run.cache_root(root))
            entry["status"] = "done" if run.finished(root) else "incomplete"
        except BaseException:
            entry["status"] = "interrupted"
            raise
        finally:
            entry["wall_s"] += time.time() - t0
            _write_log(root, profile, log)
    return log
