"""The README's headline: base vs the field's RL baselines vs BoN-aware fine-tuning of the default experiment,
on test.

    python -m experiments.headline [--seed=0] [--out=docs/figures/headline_bon_at_k.png]

runs (or, with finished stages, only reads) the default experiment with one shared stage cache
(runs/arith_bo32/stages, so the base policy and verifier are the same): as configured (BoN-RL-V, N' = 32,
workdir runs/arith_bo32), and with each baseline of BASELINES in its place on the same sample budget
(prompts x samples x steps): standard RL (RLOO, `rl.objective=kl_rl`, `rl.n=1`; workdir
runs/arith_bo32_standard_rl) and GRPO (`rl.objective=grpo`; runs/arith_bo32_grpo), each at the batch shape
chosen for it on validation prompts (docs/lab_notes/rl_diagnosis.md). It plots BoN@k and pass@k against k
for the base and the tuned policies with 95% bootstrap CIs over the test prompts, and prints the paired
differences of each tuned policy against the base.

`--seed=S` (S != 0) does the same at `config.seed = S` with the workdirs and stage cache of
`make train ARGS="--config.seed=S --config.workdir=runs/arith_bo32_seedS"` (runs/arith_bo32_seedS,
runs/arith_bo32_seedS_standard_rl, runs/arith_bo32_seedS_grpo), and draws its figure into the standard-RL
run's directory unless `--out` says otherwise, so the README's figure stays seed 0's. Seeds pooled:
`python -m experiments.across_seeds runs/arith_bo32_standard_rl runs/arith_bo32_seed1_standard_rl ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from experiments.arith_bo32 import get_config
from experiments.probe_rl import cache_root, train_workdir

FIGURE = os.path.join("docs", "figures", "headline_bon_at_k.png")


@dataclasses.dataclass(frozen=True)
class Baseline:
    label: str  # in the figure and the printed tables
    suffix: str  # its workdir: `make train`'s at the seed + suffix
    overrides: dict  # dotted config keys on top of the default experiment's; rl.steps follows the budget


# What both baselines share: N' = 1, a baseline from the group's other rewards (no value model), and the
# settings chosen for them on validation prompts. 32 prompts x 8 samples was the better of the two shapes
# tried for each (RLOO: runs E and H, GRPO: grpo_E and grpo_H of docs/lab_notes/rl_diagnosis.md; 8 x 32
# gained less pass@1). No anchor: the EMA anchor was chosen for BoN-RL-V by experiments/validation_study.py,
# which did not try the baselines with it.
_BASELINE_SETTINGS = {"rl.n": 1, "rl.value_baseline": False, "rl.batch_size": 32, "rl.m": 8, "rl.anchor_ema": 0.0}
BASELINES = (
    Baseline("standard RL (RLOO)", "_standard_rl", {"rl.objective": "kl_rl", **_BASELINE_SETTINGS}),
    Baseline("GRPO", "_grpo", {"rl.objective": "grpo", **_BASELINE_SETTINGS}),  # group-normalised advantages
)
STANDARD_RL, GRPO = BASELINES


def baseline_workdir(baseline: Baseline, seed: int) -> str:
    return train_workdir(seed) + baseline.suffix


def standard_rl_workdir(seed: int) -> str:
    return baseline_workdir(STANDARD_RL, seed)


def baseline_config(baseline: Baseline, seed: int):
    """The default experiment at `seed` with `baseline` in BoN-RL-V's place, on BoN-RL-V's sample budget."""
    from bon_jax.pipeline.sweep import point_config

    default = get_config()
    budget = default.rl.batch_size * default.rl.m * default.rl.steps
    c = point_config(default, baseline.overrides, "runs")  # its workdir is set below
    c.rl.steps = budget // (c.rl.batch_size * c.rl.m)
    assert c.rl.steps * c.rl.batch_size * c.rl.m == budget, "budgets must match"
    c.seed, c.workdir = seed, baseline_workdir(baseline, seed)
    return c


def run_all(seed: int = 0):
    """(BoN-RL-V's summary, {baseline label: its summary}), every run sharing the seed's stage cache."""
    from bon_jax.pipeline.run import run_experiment

    bon = get_config()
    bon.seed, bon.workdir = seed, train_workdir(seed)
    cache = cache_root(seed)
    bon_summary = run_experiment(bon, cache_root=cache)
    return bon_summary, {b.label: run_experiment(baseline_config(b, seed), cache_root=cache) for b in BASELINES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=f"the figure (default: {FIGURE} at seed 0)")
    args = parser.parse_args()
    if args.out is None:
        args.out = FIGURE if args.seed == 0 else os.path.join(standard_rl_workdir(args.seed), "headline.png")
    from bon_jax.cli import enable_compilation_cache
    from bon_jax.pipeline import report

    enable_compilation_cache()
    bon, baselines = run_all(args.seed)
    evals = {
        "base": bon["eval"]["base"],
        **{label: summary["eval"]["tuned"] for label, summary in baselines.items()},
        "BoN-RL-V (N'=32)": bon["eval"]["tuned"],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    report.plot_accuracy_vs_n(
        {k: {f: v[f] for f in ("bon_at_k", "pass_at_k")} for k, v in evals.items()},
        args.out,
        "arith_bo32, 128 test prompts x 32 samples" + (f", seed {args.seed}" if args.seed else ""),
    )
    for name, summary in (("BoN-RL-V", bon), *baselines.items()):
        print(f"{name} - base (paired, 95% CI):")
        print(report.difference_table(summary["compare"]))
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
