"""Tuned - base of one experiment over several seeds: per seed and pooled over seeds x prompts.

    python -m experiments.across_seeds RUN_DIR [RUN_DIR ...] [--metrics=bon_at_32,pass_at_1,...]

reads each run's `per_prompt.json` (written by `make train`; every seed is evaluated on the same test
prompts) and prints, per metric, each seed's paired mean with its 95% CI over prompts and the pooled
estimate with the crossed seeds x prompts interval of `experiments/reproduce/stats.py` (with 3 seeds
that disagree the interval is wide, as it should be). E.g. the default at seeds 0, 1, 2:

    make train ARGS="--config.seed=1 --config.workdir=runs/arith_bo32_seed1"   # and seed 2
    python -m experiments.across_seeds runs/arith_bo32 runs/arith_bo32_seed1 runs/arith_bo32_seed2

`--versus RUN_DIR [RUN_DIR ...]` (one per run, in the same seed order) compares two tuned policies instead:
tuned of the first runs - tuned of the second, per prompt. Each pair must have evaluated the same base
samples (the same base policy, verifier and prompts: `experiments.headline`'s runs at one seed do), which is
checked, so the difference is paired.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from experiments.reproduce.stats import crossed_ci

DEFAULT_METRICS = "bon_at_4,bon_at_32,pass_at_1,pass_at_32,maj_at_32,kl,distinct_answers"


def _per_prompt(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "per_prompt.json")) as f:
        return json.load(f)


def _stacked(rows: list[np.ndarray]) -> np.ndarray:
    """[runs, prompts]: the runs' per-prompt differences, which must cover the same prompts."""
    if len({len(r) for r in rows}) != 1:
        raise SystemExit(f"the runs have different numbers of prompts: {[len(r) for r in rows]}")
    return np.stack(rows)


def paired_differences(run_dirs: list[str], metric: str) -> np.ndarray:
    """d[s, p] = tuned - base of `metric` on prompt p in run s; the runs must share their prompts."""
    rows = []
    for d in run_dirs:
        pp = _per_prompt(d)
        rows.append(np.asarray(pp["tuned"][metric], np.float64) - np.asarray(pp["base"][metric], np.float64))
    return _stacked(rows)


def tuned_differences(run_dirs: list[str], versus: list[str], metric: str) -> np.ndarray:
    """d[s, p] = tuned of run_dirs[s] - tuned of versus[s] on prompt p; each pair must share its base
    samples (their base evaluations are equal in every metric)."""
    if len(run_dirs) != len(versus):
        raise SystemExit(f"{len(run_dirs)} runs against {len(versus)}: give one --versus run per run")
    rows = []
    for a, b in zip(run_dirs, versus):
        pa, pb = _per_prompt(a), _per_prompt(b)
        if pa["base"] != pb["base"]:
            raise SystemExit(f"{a} and {b} evaluated different base samples: their tuned policies do not pair")
        rows.append(np.asarray(pa["tuned"][metric], np.float64) - np.asarray(pb["tuned"][metric], np.float64))
    return _stacked(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    parser.add_argument("--versus", nargs="+", default=None, help="runs whose tuned policy to subtract")
    args = parser.parse_args(argv)
    header = [os.path.basename(os.path.normpath(d)) for d in args.run_dirs]
    what = "tuned - base" if args.versus is None else "tuned - tuned of --versus"
    print(f"| {what} | " + " | ".join(header) + " | pooled (crossed 95% CI) |")
    print("|---" * (len(header) + 2) + "|")
    for metric in args.metrics.split(","):
        if args.versus is None:
            d = paired_differences(args.run_dirs, metric)
        else:
            d = tuned_differences(args.run_dirs, args.versus, metric)
        cells = []
        for row in d:
            e = crossed_ci(row[None])
            cells.append(f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]")
        e = crossed_ci(d)
        print(f"| {metric} | " + " | ".join(cells) + f" | {e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}] |")


if __name__ == "__main__":
    main()
