"""Choose the default experiment's learned verifier on validation prompts of several seeds.

    python -m experiments.verifier_study [--seeds=0,1] [--only=default,carry_more] [--list] [--results=DIR]

Trains every candidate of CANDIDATES (verifier overrides of experiments/arith_bo32.py) on the base policy of
each seed and evaluates Best-of-k by it on the VALIDATION prompts (never test), in
results/verifier_study/<candidate>_s<seed> (summary.json and per_prompt.json, tracked by git). The base
policy's samples are the same for every candidate at a seed (the evaluation draws them from the prompt ids),
only their scores differ, so candidate - default per prompt is an exact pairing (checked: a CPU that rounds
differently trains another base policy, so runs of two hosts do not pair; `--results=DIR` runs every
candidate, `default` included, elsewhere). Prints per candidate its
held-out verifier metrics and the BoN@k differences against `default`, pooled over seeds x prompts (the
crossed interval of experiments/reproduce/stats.py), then the choice by RULE.

Seed S shares the stage cache of `make train ARGS="--config.seed=S --config.workdir=runs/arith_bo32_seedS"`
(seed 0: runs/arith_bo32/stages): the tokenizer and base policy of a seed are trained once, by whichever
comes first. Finished runs are skipped; an interrupted one resumes from its stage checkpoints.

Why these candidates (docs/lab_notes/verifier.md): `python -m experiments.gap_texts` shows that where the
default verifier's pick is wrong, it is the policy's own slip in one step (most often a one-step
subtraction): a tens digit off by one (a carry) at seed 0, a units digit at seed 1. The verifier starts from
the policy's likelihood and shares its blind spot; hard negatives with those slips, and more of them, are
the levers.
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments.probe_rl import cache_root  # noqa: F401  (the stage cache of a seed; tests read it here)
from experiments.reproduce.runs import run_finished
from experiments.reproduce.stats import crossed_ci
from experiments.study_runs import parse_args, print_pooled, run_unfinished, split_results_flag

_MORE = {"verifier.reference_only_prompts": 3000, "verifier.steps": 600}
# 8x the default's samples of the base policy (512 prompts x 8), about one pass over them
_ONPOLICY = {"verifier.num_prompts": 2048, "verifier.samples_per_prompt": 16, "verifier.steps": 800}
# The study stops before fine-tuning, so the rl section never enters its runs; it is pinned to the default's
# when the runs were made (8 prompts x 240 steps), so their stored configs still match the study's.
_RL_WHEN_RUN = {"rl.batch_size": 8, "rl.steps": 240}
CANDIDATES = {
    "default": {},
    # the hard negatives' kinds: a carry slip among the two first kinds, at the same data and steps
    "carry_mix": {"verifier.corruption_kinds": ("answer", "propagate", "carry")},
    # 3000 more training prompts with only their reference and two corruptions each, 600 steps instead of 200
    "more": dict(_MORE),
    "carry_more": {"verifier.corruption_kinds": ("carry",), **_MORE},
    "slips_more": {"verifier.corruption_kinds": ("propagate", "carry"), **_MORE},
    # 2026-12-07, later: the same data as `more`, trained four times as long (does a verifier trained
    # longer stop sharing the policy's slips?)
    "long": {**_MORE, "verifier.steps": 2400},
    # 2026-12-07 (third session): a verifier larger than the policy, the lever the others left untried. Its
    # own backbone, the `small` model at full width (256 wide, MLP 1024: four times the policy's matmul
    # FLOPs), pre-trained by the policy's own SFT (3000 steps on the references), then trained as the
    # default verifier is. Does a backbone that slips less stop liking the policy's slips?
    "larger": {"verifier.backbone_sft_steps": 3000},
    # Same session: the default verifier's starting point, untrained. At seed 0 on its held-out samples the
    # policy's own likelihood ranked them better than the trained verifier (pairwise 0.828 against 0.802).
    "likelihood": {"verifier.steps": 0},
    # 2026-12-07 (sixth session): the policy's own slips in quantity instead of synthetic ones. Every
    # wrong Best-of-N pick is a slip the base policy makes (gap_texts); the default trains on 512 prompts x 8
    # of its samples. Here 2048 prompts x 16 (8x the samples, the held-out fifth still from validation),
    # trained 800 steps (about one pass over them).
    "onpolicy": dict(_ONPOLICY),
    # Same session: the default's data and steps, its ranking term made listwise (bon_jax/verifiers/train.py):
    # -log of the softmax mass of a prompt's correct completions, so the incorrect completions scored
    # highest, the ones Best-of-N picks, are pushed down hardest.
    "listwise": {"verifier.ranking": "listwise"},
    # The listwise term was never worse than the default, and moved it little in 200 steps: 600.
    "listwise_long": {"verifier.ranking": "listwise", "verifier.steps": 600},
    # The two together: the listwise term over 16 of the policy's samples a prompt, not 8, has more of its
    # top-scored slips to push down.
    "onpolicy_listwise": {**_ONPOLICY, "verifier.ranking": "listwise"},
}
KS = ("2", "4", "8", "32")
RULE = (
    "the highest pooled validation BoN@32 difference to `default` whose interval lies above 0; none such: "
    "`default`"
)


# Where the runs live; `--results=DIR` moves them, e.g. to pair candidates on a host whose CPU rounds
# differently from the one that made the committed runs (its base policies, and so samples, differ).
RESULTS = os.path.join("results", "verifier_study")


def run_dir(name: str, seed: int) -> str:
    return os.path.join(RESULTS, f"{name}_s{seed}")


def study_config(name: str, seed: int):
    from bon_jax.pipeline.sweep import point_config
    from experiments.arith_bo32 import get_config

    overrides = {
        **_RL_WHEN_RUN,
        **CANDIDATES[name],
        "eval.split": "validation",
        "stages": ("tokenizer", "base_policy", "verifier", "eval", "report"),
    }
    c = point_config(get_config(), overrides, RESULTS)
    c.seed = seed
    c.workdir = run_dir(name, seed)
    return c


def base_per_prompt(name: str, seed: int, metric: str) -> np.ndarray:
    with open(os.path.join(run_dir(name, seed), "per_prompt.json")) as f:
        return np.asarray(json.load(f)["base"][metric], np.float64)


def made_on(name: str, seed: int) -> str:
    """The CPU a run was made on (its summary's `host`, bon_jax/provenance.py), if it recorded one."""
    with open(os.path.join(run_dir(name, seed), "summary.json")) as f:
        return json.load(f).get("host", {}).get("cpu", "host not recorded")


def held_out(name: str, seed: int) -> dict:
    with open(os.path.join(run_dir(name, seed), "summary.json")) as f:
        v = json.load(f)["verifier"]
    return {k: v[f"eval/{k}"] for k in ("auc", "pairwise_accuracy")}


def pooled(names: list[str], seeds: list[int]) -> dict:
    """{candidate: {metric: crossed_ci of candidate - default over seeds x validation prompts}}."""
    out = {}
    for name in names:
        if not all(run_finished(run_dir(n, s)) for n in (name, "default") for s in seeds):
            continue
        for s in seeds:
            if not np.array_equal(base_per_prompt(name, s, "mean_reward"), base_per_prompt("default", s, "mean_reward")):
                raise SystemExit(
                    f"{run_dir(name, s)} ({made_on(name, s)}) and {run_dir('default', s)} ({made_on('default', s)}) "
                    "scored different base samples (CPUs that round differently train different base policies): "
                    "no pairing. Run both on one host, with --results=DIR."
                )
        out[name] = {
            f"bon_at_{k}": crossed_ci(
                np.stack(
                    [
                        base_per_prompt(name, s, f"bon_at_{k}") - base_per_prompt("default", s, f"bon_at_{k}")
                        for s in seeds
                    ]
                )  # fmt: skip
            )
            for k in KS
        }
    return out


def fall_from_peak(name: str, seed: int) -> float:
    """max_k BoN@k - BoN@K of the run's base policy, over every k it evaluated, K the largest (0: BoN@k peaks
    at k = K; issue 15 asks that BoN@k not fall as k grows)."""
    with open(os.path.join(run_dir(name, seed), "per_prompt.json")) as f:
        base = json.load(f)["base"]
    ks = sorted(int(m.removeprefix("bon_at_")) for m in base if m.startswith("bon_at_"))
    curve = [float(np.mean(base[f"bon_at_{k}"])) for k in ks]
    return max(curve) - curve[-1]


def choose(table: dict) -> str:
    """RULE, applied to `pooled`'s table."""
    above = [n for n in table if n != "default" and table[n]["bon_at_32"].low > 0]
    return max(above, key=lambda n: table[n]["bon_at_32"].mean) if above else "default"


def main(argv: list[str] | None = None) -> None:
    global RESULTS
    RESULTS, argv = split_results_flag(argv, RESULTS)
    seeds, names, list_only = parse_args(__doc__.splitlines()[0], CANDIDATES, argv)
    if "default" not in names:
        names = ["default", *names]  # every difference is taken against it
    run_unfinished(names, seeds, CANDIDATES, study_config, run_dir, "verifier study", list_only)
    table = pooled(names, seeds)
    print(f"\nHeld-out verifier metrics (the verifier stage's validation samples), seeds {seeds}:\n")
    print("| candidate | " + " | ".join(f"AUC s{s} | pairwise s{s}" for s in seeds) + " |")
    print("|---" * (2 * len(seeds) + 1) + "|")
    for name in table:
        cells = [f"{held_out(name, s)[m]:.3f}" for s in seeds for m in ("auc", "pairwise_accuracy")]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nBoN@k's fall from its peak to k = 32 (max_k BoN@k - BoN@32 over the evaluated k; 0 = still rising):\n")
    print("| candidate | " + " | ".join(f"s{s}" for s in seeds) + " |")
    print("|---" * (len(seeds) + 1) + "|")
    for name in table:
        print(f"| {name} | " + " | ".join(f"{fall_from_peak(name, s):.3f}" for s in seeds) + " |")
    title = (
        f"Best-of-k by the candidate - by `default`, the same validation samples, pooled over seeds {seeds} x "
        "prompts (crossed 95% CI)"
    )
    print_pooled(title, [f"BoN@{k}" for k in KS], table, names, CANDIDATES)
    print(f"\nrule: {RULE}\nchoice: {choose(table)}")


if __name__ == "__main__":
    main()
