"""Tuned - base of one experiment over several seeds: per seed and pooled over seeds x prompts.

    python -m experiments.across_seeds RUN_DIR [RUN_DIR ...] [--metrics=bon_at_32,pass_at_1,...]

reads each run's `per_prompt.json` (written by `make train`; every seed is evaluated on the same test
prompts) and prints, per metric, each seed's paired mean with its 95% CI over prompts and the pooled
estimate with the crossed seeds x prompts interval of `experiments/reproduce/stats.py` (with 3 seeds
that disagree the interval is wide, as it should be). E.g. the default at seeds 0, 1, 2:

    make train ARGS="--config.seed=1 --config.workdir=runs/arith_bo32_seed1"   # and seed 2
    python -m experiments.across_seeds runs/arith_bo32 runs/arith_bo32_seed1 runs/arith_bo32_seed2
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from experiments.reproduce.stats import crossed_ci

DEFAULT_METRICS = "bon_at_4,bon_at_32,pass_at_1,pass_at_32,maj_at_32,kl,distinct_answers"


def paired_differences(run_dirs: list[str], metric: str) -> np.ndarray:
    """d[s, p] = tuned - base of `metric` on prompt p in run s; the runs must share their prompts."""
    rows = []
    for d in run_dirs:
        with open(os.path.join(d, "per_prompt.json")) as f:
            pp = json.load(f)
        rows.append(np.asarray(pp["tuned"][metric], np.float64) - np.asarray(pp["base"][metric], np.float64))
    if len({len(r) for r in rows}) != 1:
        raise SystemExit(f"the runs have different numbers of prompts: {[len(r) for r in rows]}")
    return np.stack(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    args = parser.parse_args(argv)
    header = [os.path.basename(os.path.normpath(d)) for d in args.run_dirs]
    print("| tuned - base | " + " | ".join(header) + " | pooled (crossed 95% CI) |")
    print("|---" * (len(header) + 2) + "|")
    for metric in args.metrics.split(","):
        d = paired_differences(args.run_dirs, metric)
        cells = []
        for row in d:
            e = crossed_ci(row[None])
            cells.append(f"{e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}]")
        e = crossed_ci(d)
        print(f"| {metric} | " + " | ".join(cells) + f" | {e.mean:+.3f} [{e.low:+.3f}, {e.high:+.3f}] |")


if __name__ == "__main__":
    main()
