"""The per-method settings of `make reproduce`: THE table to tune, one per profile.

A profile names, per family (one task and its experiment file), the overrides every run of the family gets
(`family_overrides`: the shared sample budget), then per method the overrides that make it that method
(`methods`), and the seeds. A run is the family's experiment config + family overrides + method overrides
+ `seed`; `seed` seeds the whole pipeline (base policy, verifier, fine-tuning, evaluation keys) while the
task's own seed, hence the held-out prompts, is the same for every run, so the seeds and the prompts are
crossed (experiments/reproduce/stats.py).

Changing a value here makes new runs (a run's directory is named by a hash of its overrides); the runs of
the old values stay on disk and are listed in docs/reproduction.md as runs tried.

Fair tuning (issue 15): every method of a family gets the same sample budget (prompts per step x samples
per prompt x steps, set once in `family_overrides`) and the same number of tuning runs, chosen on
validation prompts (`--config.eval.split=validation` with `make train`); what is chosen is entered here,
and the test split is read by `make reproduce` only.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Family:
    experiment: str  # experiments/<experiment>.py
    overrides: dict  # dotted config key -> value, for every run of the family
    methods: dict  # method label -> overrides (dotted keys) on top of the family's
    # method label -> [overrides to try on top of the method's], run on validation prompts at the first
    # seed before the final runs and listed in docs/reproduction.md with their validation numbers; the
    # chosen values are then entered in `methods`. Give every method of a claim the same number of tries.
    tuning: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    seeds: tuple[int, ...]
    families: dict  # family name ("arith", "sentiment") -> Family
    # Claim 8's equivalence margin: vbon and vbon_bound reach "the same front" when the 95% CI of their
    # difference in reward-above-the-BoN-curve lies inside [-margin, margin] (reward units).
    equivalence_margin: float = 0.02


def _sentiment_sweep(grid: str) -> dict:
    """Amini et al.'s grid, as experiments/sentiment_vbon.py's `get_sweep` defines it (N / beta per method)."""
    from bon_jax.pipeline.sweep import point_name

    path = os.path.join(EXPERIMENTS, "sentiment_vbon.py")
    spec = importlib.util.spec_from_file_location("bon_jax_experiment_sentiment_vbon", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {point_name(o): dict(o) for o in module.get_sweep(grid)}


# ============================================================================================================
# FULL PROFILE: the settings to tune (the lead fills these in from validation runs).
# ============================================================================================================
# Time: the whole reproduction must run in under 3 hours on a 2-core machine (issue 15), 36 arith runs and 27
# sentiment runs over 3 seeds. Measured (results/reproduce/full/runs.json, the stages' done.json): the 27
# sentiment runs 1,969 s in all (the reference LM included); per arith seed the base policy 265 s, the
# verifier 57 s, the base evaluation 16 s; per arith method about 35 s of evaluation and a fine-tuning step
# of 1.2 s (bon_rl_v, bon_rl_s: only the winners' rows are differentiated) to about 1.8 s (objectives that
# weigh every sample). At 100 steps that is about 36 x 200 s = 2.0 h of arith runs, 2.9 h in all; the
# default's 240 steps would take 4.5 h. So every arith method gets 100 steps (the default's 8 prompts x 32
# samples, lr, schedule and dynamic sampling; 800 prompts, 25,600 samples) and the sentiment sweep 9 of its
# 14 points (below).
ARITH_BUDGET = {  # the same for every arith method: 8 prompts x 32 samples x 100 steps
    "rl.steps": 100,
    "rl.batch_size": 8,
    "rl.m": 32,
    "rl.lr": 1e-4,
    "rl.dynamic_sampling": 2,
    "rl.value_baseline": False,  # on for the printed BoN-RL estimators only (_VALUE below)
    # No EMA anchor, as every run here was made: the default experiment has had Chow's anchor (0.01) since
    # experiments/validation_study.py chose it for BoN-RL-V; rerunning every method with it is 2 hours.
    "rl.anchor_ema": 0.0,
    "eval.split": "test",
}
# Chow et al.'s learned value baseline (App. B), as the default experiment uses it with BoN-RL-V (chosen on
# validation prompts, docs/lab_notes/rl_diagnosis.md); BoN-RL-S is the same printed estimator.
_VALUE = {"rl.value_baseline": True, "rl.value_lr": 1e-3}
ARITH_METHODS = {
    # claim 1, 5, 6: BoN-RL-V (Chow Lemma 2) at N' = 32
    "bon_rl_v": {"rl.objective": "bon_rl_v", "rl.n": 32, **_VALUE},
    # standard RL: RLOO on the reward (N' = 1), the setting that raised held-out pass@1 on validation
    # (docs/lab_notes/rl_diagnosis.md, run E)
    "standard_rl": {"rl.objective": "kl_rl", "rl.n": 1},
    "grpo": {"rl.objective": "grpo", "rl.n": 1},
    # claim 2: BoN-RL-S (selects by the ground-truth reward)
    "bon_rl_s": {"rl.objective": "bon_rl_s", "rl.n": 32, **_VALUE},
    # claim 3: pass@k objectives at N' = 32
    "bon_rlbp": {"rl.objective": "bon_rlbp", "rl.n": 32},
    # The corrected and printed BoN-RLB differ only on BoN winners with R = 0. At N' = M = 32 with R as the
    # selector a winner fails only when all 32 samples do, and dynamic sampling drops those groups, so the
    # two gave bit-identical policies (docs/lab_notes/rl_diagnosis.md). At N' = 8 < M = 32 a random 8-subset
    # of a hard prompt's samples is often all wrong, so the sign the two disagree on is exercised.
    "bon_rlb": {"rl.objective": "bon_rlb", "rl.n": 8},
    "bon_rlb_printed": {"rl.objective": "bon_rlb_printed", "rl.n": 8},
    "pkpo": {"rl.objective": "pkpo", "rl.n": 32},
    # claim 4: supervised fine-tuning on the task's demonstrations, plain and BoN-aware
    "sft": {"rl.objective": "sft", "rl.n": 1},
    "bon_sft": {"rl.objective": "bon_sft", "rl.n": 32},
    # claim 6: the training N' (N' = 1 is `standard_rl`, N' = 32 is `bon_rl_v`)
    "bon_rl_v_n4": {"rl.objective": "bon_rl_v", "rl.n": 4, **_VALUE},
    "bon_rl_v_n16": {"rl.objective": "bon_rl_v", "rl.n": 16, **_VALUE},
}
# Tuning tries on validation prompts, e.g. {"bon_rl_v": [{"rl.lr": 3e-5}, {"rl.lr": 3e-4}], ...}.
ARITH_TUNING: dict = {}
SENTIMENT_BUDGET = {"eval.split": "test"}
# 9 of the full grid's 14 points (for time, above): vbon and vbon_bound at N in {2, 4, 8} (claims 7, 8 compare
# them N by N), kl_rl at beta in {0.1, 1.0}, BoN distillation at N = 4. Dropped: N = 16 (M = 16 costs twice
# a point), kl_rl at beta 0.05 and 0.3, distillation at N = 16.
SENTIMENT_POINTS = {
    name: o
    for name, o in _sentiment_sweep("full").items()
    if (o["rl.objective"] in ("vbon", "vbon_bound") and o["rl.n"] in (2, 4, 8))
    or (o["rl.objective"] == "kl_rl" and o["rl.beta"] in (0.1, 1.0))
    or (o["rl.objective"] == "bon_distill_sft" and o["rl.n"] == 4)
}
SENTIMENT_TUNING: dict = {}
FULL = Profile(
    name="full",
    seeds=(0, 1, 2),
    families={
        "arith": Family("arith_bo32", ARITH_BUDGET, ARITH_METHODS, ARITH_TUNING),
        # vbon / vbon_bound over N, kl_rl over beta, bon_distill_sft over N: the sweep's points, by name
        "sentiment": Family("sentiment_vbon", SENTIMENT_BUDGET, SENTIMENT_POINTS, SENTIMENT_TUNING),
    },
)
# ============================================================================================================


# TINY PROFILE: the pipeline end to end in minutes, not the science. Tiny models, a few steps, N' scaled
# down to the 4 samples drawn per prompt; the same method labels so every claim is analysed and written.
_TINY_ARITH_FAMILY = {
    "rl.steps": 1,
    "rl.batch_size": 2,
    "rl.m": 4,
    "rl.warmup": 0,
    "rl.max_new_tokens": 16,
    "sft.steps": 30,
    "verifier.steps": 4,
    "verifier.num_prompts": 8,
    "eval.num_prompts": 8,
    "eval.m": 4,
    "eval.ks": (1, 2, 4),
    "eval.max_new_tokens": 16,
    "eval.bootstrap": 50,
    "eval.split": "test",
    "mesh.data": 1,
    "log_every": 1,
    "rl.value_baseline": False,
}
_TINY_ARITH = {
    label: {**o, "rl.n": min(o.get("rl.n", 1), 4)}
    for label, o in ARITH_METHODS.items()
    if label not in ("bon_rl_v_n4", "bon_rl_v_n16")
}
_TINY_ARITH["bon_rl_v_n2"] = {"rl.objective": "bon_rl_v", "rl.n": 2, **_VALUE}
_TINY_SENTIMENT_FAMILY = {
    "task.kwargs.num_train": 200,
    "task.kwargs.num_test": 8,
    "model.name": "tiny",
    "model.max_len": 32,
    "sft.steps": 20,
    "sft.batch_size": 16,
    "rl.steps": 1,
    "rl.batch_size": 2,
    "rl.n": 1,  # kl_rl's points (N unused) within the 4 samples drawn
    "rl.m": 4,
    "rl.warmup": 0,
    "rl.ref_samples": 64,
    "rl.max_new_tokens": 8,
    "eval.num_prompts": 8,
    "eval.m": 4,
    "eval.ks": (1, 2, 4),
    "eval.max_new_tokens": 8,
    "eval.bootstrap": 50,
    "eval.split": "test",
    "mesh.data": 1,
    "log_every": 1,
}
_TINY_SENTIMENT = {
    "n=2_objective=vbon": {"rl.objective": "vbon", "rl.n": 2},
    "n=4_objective=vbon": {"rl.objective": "vbon", "rl.n": 4},
    "n=2_objective=vbon_bound": {"rl.objective": "vbon_bound", "rl.n": 2},
    "beta=0.1_objective=kl_rl": {"rl.objective": "kl_rl", "rl.beta": 0.1},
    "beta=1.0_objective=kl_rl": {"rl.objective": "kl_rl", "rl.beta": 1.0},
    "beta=0.0_n=2_objective=bon_distill_sft": {"rl.objective": "bon_distill_sft", "rl.n": 2, "rl.beta": 0.0},
}
TINY = Profile(
    name="tiny",
    seeds=(0, 1),
    families={
        # one validation try, so the tuning path runs too
        "arith": Family("smoke", _TINY_ARITH_FAMILY, _TINY_ARITH, {"sft": [{"rl.lr": 3e-3}]}),
        "sentiment": Family("sentiment_vbon", _TINY_SENTIMENT_FAMILY, _TINY_SENTIMENT),
    },
)

PROFILES = {"full": FULL, "tiny": TINY}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]
