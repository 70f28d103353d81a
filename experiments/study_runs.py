"""What the studies over seeds share (experiments/validation_study.py, experiments/verifier_study.py): their
command line, running the unfinished (candidate, seed) runs on each seed's stage cache after refusing bad or
drifted settings before any compute, and printing a pooled table with the choice of the study's rule."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from experiments.probe_rl import cache_root
from experiments.reproduce.runs import refuse_drifted, run_finished


def split_results_flag(argv: list[str] | None, default: str) -> tuple[str, list[str] | None]:
    """(`--results=DIR` or `default`, the other arguments): where a study keeps its runs. Another host's CPU
    may round differently and train other base policies, so its runs go elsewhere (bon_jax/provenance.py)."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--results", default=default)
    known, rest = where.parse_known_args(argv)
    return known.results, rest


def parse_args(description: str, candidates: dict, argv: list[str] | None) -> tuple[list[int], list[str], bool]:
    """(seeds, candidate names, list only) from `--seeds=0,1 --only=a,b --list`; unknown names refused."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--only", default="", help="comma-separated candidates (default: all)")
    p.add_argument("--list", action="store_true", help="print the runs and exit")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(candidates)
    unknown = sorted(set(names) - set(candidates))
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; known: {sorted(candidates)}")
    return [int(s) for s in args.seeds.split(",")], names, args.list


def run_unfinished(
    names: list[str],
    seeds: list[int],
    candidates: dict,
    make_config: Callable,
    run_dir: Callable[[str, int], str],
    label: str,
    list_only: bool,
) -> None:
    """Builds and validates every run's config (a bad key or value is refused before compute), refuses
    finished runs whose stored settings differ from today's, prints each run's state, then (unless
    `list_only`) runs the unfinished ones on the stage cache of their seed (`probe_rl.cache_root`)."""
    from bon_jax.config import validate

    configs = {(n, s): make_config(n, s) for n in names for s in seeds}
    for c in configs.values():
        validate(c)
    refuse_drifted(
        [(run_dir(n, s), c) for (n, s), c in configs.items() if run_finished(run_dir(n, s))],
        "Pin the old value in the candidate's overrides (CANDIDATES) to keep those runs.",
    )
    for name, seed in configs:
        state = "done " if run_finished(run_dir(name, seed)) else "to do"
        print(f"{state}  {name} seed {seed}  {candidates[name]}")
    if list_only:
        return
    from bon_jax.cli import run_reporting_errors
    from bon_jax.pipeline.run import run_experiment

    for (name, seed), c in configs.items():
        if not run_finished(run_dir(name, seed)):
            print(f"[{label}] {name} seed {seed}", flush=True)
            run_reporting_errors(lambda c=c, seed=seed: run_experiment(c, cache_root=cache_root(seed)))


def print_pooled(title: str, columns: list[str], table: dict, names: list[str], candidates: dict) -> None:
    """The table of `pooled` estimates ({candidate: {column: Estimate}}) as markdown, then the candidates
    without a finished run at every seed."""
    print(f"\n{title}:\n")
    print("| candidate | overrides | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for name, row in table.items():
        cells = [f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]" for e in row.values()]
        print(f"| {name} | {json.dumps(candidates[name])} | " + " | ".join(cells) + " |")
    missing = [n for n in names if n not in table]
    if missing:
        print(f"\nnot finished at every seed: {missing}")
