"""Probes of the fine-tuning signal (docs/lab_notes/rl_diagnosis.md): can the loop learn, and what.

    python -m experiments.probe_rl NAME [reward=correct|even] [subset=P] [key=value ...]

runs the default experiment (experiments/arith_bo32.py) with the `key=value` config overrides (dotted keys,
values as Python literals), evaluated on VALIDATION prompts, in runs/probe/NAME, sharing the default run's
stage cache (runs/arith_bo32/stages: the tokenizer, base policy and verifier are trained once; run
`make train` first, or the subset probe's base policy is trained on its P prompts too). With `seed=S`
(S != 0) it shares the stage cache of `make train ARGS="--config.seed=S --config.workdir=runs/arith_bo32_seedS"`
(runs/arith_bo32_seedS/stages), that seed's base policy and verifier. Two probes
change what fine-tuning sees, and so run in a private stage cache that links the shared finished stages:

  reward=even   the reward is 1 when the boxed answer is an even integer: trivially learnable (the policy
                controls the last digit it writes), so a loop that cannot raise it is broken;
  subset=P      fine-tuning draws from the first P training prompts only: the training reward must rise
                (the policy can memorise P answers), so rewards must be aligned with their samples.

It prints the evaluation's paired differences (tuned - base); the training curve is the fine-tuning
stage's metrics log, `<stage>/logs/finetune.jsonl` (`sample/reward_mean`).
"""

from __future__ import annotations

import ast
import os
import sys

from experiments.arith_bo32 import get_config


def train_workdir(seed: int) -> str:
    """`make train`'s workdir at `seed` (seed S != 0: with --config.workdir=runs/arith_bo32_seedS)."""
    return os.path.join("runs", "arith_bo32" if seed == 0 else f"arith_bo32_seed{seed}")


def cache_root(seed: int) -> str:
    """The stage cache `make train` writes at `seed`."""
    return os.path.join(train_workdir(seed), "stages")


SHARED_CACHE = cache_root(0)


def _even_answer_grade(self, example, completion):
    from bon_jax.tasks.base import Grade
    from bon_jax.tasks.text import last_boxed, normalize_integer

    got = normalize_integer(last_boxed(completion) or "")
    return Grade(float(got is not None and int(got) % 2 == 0), got, None)


def _private_cache(name: str) -> str:
    """A stage cache of its own, holding links to the shared cache's finished non-fine-tuning stages (the
    probes change what fine-tuning sees without changing its config, so its stages must not be shared)."""
    cache = os.path.join("runs", "probe", name, "stages")
    os.makedirs(cache, exist_ok=True)
    if os.path.isdir(SHARED_CACHE):
        for d in os.listdir(SHARED_CACHE):
            src, dst = os.path.abspath(os.path.join(SHARED_CACHE, d)), os.path.join(cache, d)
            if not d.startswith(("finetune", "eval", "reference_samples")) and not os.path.exists(dst):
                os.symlink(src, dst)
    return cache


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    name, *args = argv
    c = get_config()
    c.eval.split = "validation"
    c.workdir = os.path.join("runs", "probe", name)
    reward, subset = "correct", 0
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "reward":
            reward = value
        elif key == "subset":
            subset = int(value)
        else:
            node, *path = [c, *key.split(".")]
            for part in path[:-1]:
                node = node[part]
            old = node[path[-1]]
            node[path[-1]] = value if isinstance(old, str) else ast.literal_eval(value)
    if reward not in ("correct", "even"):
        raise SystemExit(f"reward must be 'correct' or 'even', got {reward!r}")
    from bon_jax.cli import enable_compilation_cache
    from bon_jax.pipeline import report
    from bon_jax.pipeline.run import run_experiment
    from bon_jax.tasks import arith

    cache = cache_root(c.seed)
    if reward == "even":
        arith.ArithTask.grade = _even_answer_grade
    if subset:
        examples = arith.ArithTask.examples
        arith.ArithTask.examples = lambda self, split: (
            examples(self, split)[:subset] if split == "train" else examples(self, split)
        )
    if reward != "correct" or subset:
        cache = _private_cache(name)
    enable_compilation_cache()
    summary = run_experiment(c, cache_root=cache)
    print(report.difference_table(summary["compare"]))


if __name__ == "__main__":
    main(sys.argv[1:])
