"""Choose the default experiment's fine-tuning settings on validation prompts of several seeds.

    python -m experiments.validation_study [--seeds=0,1] [--only=V2,V3] [--list] [--results=DIR] [--test]

runs every candidate of CANDIDATES (config overrides of experiments/arith_bo32.py) at every seed, each
evaluated on the VALIDATION prompts (never test), in results/study/<candidate>_s<seed> (its summary.json
and per_prompt.json tracked by git, so a study run in pieces resumes on any checkout), and prints per
candidate the tuned - base differences pooled over seeds x prompts (the crossed interval of
experiments/reproduce/stats.py), then the choice by RULE. Seed S shares the stage cache of
`make train ARGS="--config.seed=S --config.workdir=runs/arith_bo32_seedS"` (seed 0: `make train`'s
runs/arith_bo32/stages), so the tokenizer, base policy and verifier of a seed are trained once, by whichever
comes first. Finished runs (summary.json present) are skipped and an interrupted one resumes from its
stage checkpoints: rerun the command to go on. Every candidate gets the same prompts, seeds and evaluation;
the list below is every try, to be reported with the choice (docs/lab_notes/rl_diagnosis.md).

`--test` reads the TEST prompts, once, for RULE's choice: it refuses unless `--only` names exactly the
candidate RULE chooses from those seeds' finished validation runs, then runs it with `eval.split=test` in
<results>/test/<candidate>_s<seed> (the same stage cache: only the evaluations are new) and prints its
tuned - base differences pooled over the seeds' test prompts.

Why a study over seeds: a setting chosen on one seed's validation prompts (run V3, 240 steps) raised
BoN@32 on seed 0's test prompts and not on seeds 1 and 2 (rl_diagnosis.md, "V3 on test and on other seeds").
"""

from __future__ import annotations

import argparse
import functools
import os

from experiments.across_seeds import paired_differences
from experiments.probe_rl import cache_root  # noqa: F401  (the stage cache of a seed; tests read it here)
from experiments.reproduce.runs import run_finished
from experiments.reproduce.stats import crossed_ci
from experiments.study_runs import parse_args, print_pooled, run_unfinished, split_results_flag

# BoN-RL-V (N' = 32, 32 samples a prompt, lr 1e-4, value baseline, dynamic sampling 2) as in
# experiments/arith_bo32.py, varying what rl_diagnosis.md lists as untried, at the same sample budget.
# Each candidate pins what it varies against the default it was run beside: 8 prompts x 240 steps (_FIRST,
# pinned since the default became P16's 16 x 120), no KL term, and no anchor in the first round.
_FIRST = {"rl.steps": 240, "rl.batch_size": 8}
CANDIDATES = {
    "V3": {**_FIRST, "rl.anchor_ema": 0.0},  # the default before the first round
    "V2": {**_FIRST, "rl.steps": 120, "rl.anchor_ema": 0.0},
    "A3": {**_FIRST, "rl.anchor_ema": 0.01},  # Chow et al.'s EMA anchor (App. B): the first round's choice
    "K3": {**_FIRST, "rl.beta": 0.05, "rl.anchor_ema": 0.0},  # a KL term to the base: every row carries gradient
    # Second round (2026-12-07), beside A3 as the default, after its test reading (rl_diagnosis.md): on the
    # prompts where the verifier's pick is wrong, tuning lowers the share of samples outranking every right
    # one, but rarely to the ~1/32 where the pick turns right. Two ways to move further on the same budget:
    "L2": {**_FIRST, "rl.lr": 2e-4},  # twice the step size, the anchor holding the drift
    "P16": {"rl.batch_size": 16, "rl.steps": 120},  # twice the winners per update, half the updates: the choice
    # Third round (2026-12-07), beside P16 as the default: the verifier's misses are the prompts BoN@32 can
    # still gain on; half of each batch is given to them (rl.dynamic_sampling_target, _miss_share 0.5; 16-36%
    # of a step's first draw were misses at seeds 0-2), with up to 4 extra draws to find them.
    "M16": {"rl.dynamic_sampling": 4, "rl.dynamic_sampling_target": "verifier_misses"},
    # Fourth round (2026-12-07, third session), on an AVX-512/AMX host (its own base policies: --results):
    # P16 with the verifier of its own 4x backbone (experiments/verifier_study.py, `larger`; not that
    # study's choice, its effect on base BoN@32 was +0.016 / +0.133 / -0.109 at seeds 0-2). Does BoN-RL-V
    # gain more with a verifier that slips less often where the policy is weak?
    "VL16": {"verifier.backbone_sft_steps": 3000},
}
METRICS = ("bon_at_32", "bon_at_4", "pass_at_1", "pass_at_32", "kl")
RULE = (
    "the highest pooled validation BoN@32 gain; among candidates whose intervals overlap the best one's, "
    "the lowest mean KL"
)


# Where the runs live; `--results=DIR` moves them (runs of a host whose CPU rounds differently).
RESULTS = os.path.join("results", "study")


def run_dir(name: str, seed: int, split: str = "validation") -> str:
    root = os.path.join(RESULTS, "test") if split == "test" else RESULTS
    return os.path.join(root, f"{name}_s{seed}")


def study_config(name: str, seed: int, split: str = "validation"):
    from bon_jax.pipeline.sweep import point_config
    from experiments.arith_bo32 import get_config

    c = point_config(get_config(), {**CANDIDATES[name], "eval.split": split}, RESULTS)
    c.seed = seed
    c.workdir = run_dir(name, seed, split)
    return c


def finished(name: str, seed: int, split: str = "validation") -> bool:
    return run_finished(run_dir(name, seed, split))


def pooled(names: list[str], seeds: list[int], split: str = "validation") -> dict:
    """{candidate: {metric: crossed_ci over seeds x `split` prompts}} of the finished candidates."""
    out = {}
    for name in names:
        if not all(finished(name, s, split) for s in seeds):
            continue
        dirs = [run_dir(name, s, split) for s in seeds]
        out[name] = {m: crossed_ci(paired_differences(dirs, m)) for m in METRICS}
    return out


def choose(table: dict) -> str | None:
    """RULE, applied to `pooled`'s table."""
    if not table:
        return None
    best = max(table, key=lambda n: table[n]["bon_at_32"].mean)
    low = table[best]["bon_at_32"].low
    close = [n for n in table if table[n]["bon_at_32"].high >= low]
    return min(close, key=lambda n: (table[n]["kl"].mean, -table[n]["bon_at_32"].mean))


def read_test(names: list[str], seeds: list[int], list_only: bool) -> None:
    """Runs RULE's choice over `seeds` on the test prompts (module docstring, `--test`) and prints its
    pooled tuned - base differences there."""
    chosen = choose(pooled(list(CANDIDATES), seeds))
    if names != [chosen]:
        raise SystemExit(
            f"--test reads the test prompts for RULE's choice over seeds {seeds} only ({chosen}; every "
            f"candidate finished at those seeds competes); --only named {names}"
        )
    on_test = functools.partial(study_config, split="test"), functools.partial(run_dir, split="test")
    run_unfinished(names, seeds, CANDIDATES, *on_test, "study: test", list_only)
    table = pooled(names, seeds, "test")
    if table:
        title = f"Tuned - base on TEST prompts, pooled over seeds {seeds} x prompts (crossed 95% CI)"
        print_pooled(title, list(METRICS), table, names, CANDIDATES)


def main(argv: list[str] | None = None) -> None:
    global RESULTS
    RESULTS, argv = split_results_flag(argv, RESULTS)
    test_flag = argparse.ArgumentParser(add_help=False)
    test_flag.add_argument("--test", action="store_true")
    known, argv = test_flag.parse_known_args(argv)
    seeds, names, list_only = parse_args(__doc__.splitlines()[0], CANDIDATES, argv)
    if known.test:
        return read_test(names, seeds, list_only)
    run_unfinished(names, seeds, CANDIDATES, study_config, run_dir, "study", list_only)
    table = pooled(names, seeds)
    title = f"Tuned - base on validation prompts, pooled over seeds {seeds} x prompts (crossed 95% CI)"
    print_pooled(title, list(METRICS), table, names, CANDIDATES)
    print(f"\nrule: {RULE}\nchoice: {choose(table)}")


if __name__ == "__main__":
    main()
