"""The nine claims of issue 15: statement, methods needed, and the comparisons whose CIs decide the verdict.

A comparison is `a - b` of a per-prompt metric (b = "base": the base policy of the same seed), paired per
prompt and seed, with a direction: ">" (the claim says a is higher), "<" (lower), "=" (the same within the
profile's equivalence margin) or None (reported, not part of the verdict). `*_at_max` means the largest k
evaluated (32 in the full profile). Claims 7-9 (Amini et al., sentiment) compare derived quantities:
`gap` is a point's reward minus BoN sampling's reward at the point's KL (experiments/reproduce/analysis.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Comparison:
    metric: str  # per-prompt metric (evaluate.py's per_prompt keys; `_at_max` = largest k) or a derived one
    a: str  # method label, or a group of claims 7-8 ("vbon", "kl_rl", ...)
    b: str  # method label, group, "base", or "bound" (claim 9)
    direction: str | None  # ">", "<", "=", or None: reported only


@dataclasses.dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    family: str
    statement: str
    methods: Callable  # profile -> [method labels] this claim needs
    comparisons: Callable  # profile -> [Comparison]
    kind: str = "paired"  # paired (claims 1-6) | frontier (7, 8) | bon_kl (9)


def _labels(*labels):
    return lambda profile: list(labels)


def _by_objective(profile, family, objective):
    methods = profile.families[family].methods
    return [label for label, o in methods.items() if o.get("rl.objective") == objective]


def _n_sweep(profile):
    """Claim 6: every arith method that is bon_rl_v at some N', by N'."""
    methods = profile.families["arith"].methods
    labels = _by_objective(profile, "arith", "bon_rl_v")
    return sorted(labels, key=lambda label: methods[label].get("rl.n", 1))


def _n_sweep_comparisons(profile):
    labels = _n_sweep(profile)
    out = [Comparison("bon_at_max", labels[-1], labels[0], ">")]  # largest N' beats N' = 1
    out += [Comparison("bon_at_max", label, "base", None) for label in labels]
    return out


def _sentiment_all(profile):
    return list(profile.families["sentiment"].methods)


def _sentiment_groups(*objectives):
    return lambda profile: [label for obj in objectives for label in _by_objective(profile, "sentiment", obj)]


CLAIMS = {
    c.id: c
    for c in [
        Claim(
            "claim1",
            "Chow et al.",
            "arith",
            "BoN-RL-V with N' = 32 raises BoN@32 over the base, and more than standard RL (N' = 1) and GRPO do; "
            "standard RL may even lower it (reward hacking of the verifier).",
            _labels("bon_rl_v", "standard_rl", "grpo"),
            lambda p: [
                Comparison("bon_at_max", "bon_rl_v", "base", ">"),
                Comparison("bon_at_max", "bon_rl_v", "standard_rl", ">"),
                Comparison("bon_at_max", "bon_rl_v", "grpo", ">"),
                Comparison("bon_at_max", "standard_rl", "base", None),
                Comparison("bon_at_max", "grpo", "base", None),
            ],
        ),
        Claim(
            "claim2",
            "Chow et al.",
            "arith",
            "BoN-RL-S raises pass@32 over the base; standard RL does not raise it, or lowers it.",
            _labels("bon_rl_s", "standard_rl"),
            lambda p: [
                Comparison("pass_at_max", "bon_rl_s", "base", ">"),
                Comparison("pass_at_max", "standard_rl", "base", "<"),
                Comparison("pass_at_max", "bon_rl_s", "standard_rl", None),
            ],
        ),
        Claim(
            "claim3",
            "Chow et al.",
            "arith",
            "BoN-RLBP, the corrected BoN-RLB and PKPO raise pass@k at large k; the printed BoN-RLB is compared.",
            _labels("bon_rlbp", "bon_rlb", "pkpo", "bon_rlb_printed"),
            lambda p: [
                Comparison("pass_at_max", "bon_rlbp", "base", ">"),
                Comparison("pass_at_max", "bon_rlb", "base", ">"),
                Comparison("pass_at_max", "pkpo", "base", ">"),
                Comparison("pass_at_max", "bon_rlb_printed", "base", None),
                Comparison("pass_at_max", "bon_rlb", "bon_rlb_printed", None),
            ],
        ),
        Claim(
            "claim4",
            "Chow et al.",
            "arith",
            "BoN-SFT with N' = 32 beats plain SFT on BoN@32.",
            _labels("sft", "bon_sft"),
            lambda p: [
                Comparison("bon_at_max", "bon_sft", "sft", ">"),
                Comparison("bon_at_max", "bon_sft", "base", None),
                Comparison("bon_at_max", "sft", "base", None),
            ],
        ),
        Claim(
            "claim5",
            "Chow et al.",
            "arith",
            "BoN-aware policies keep more diversity than standard RL (entropy, distinct answers among 32) and "
            "trade some pass@1 for BoN@32: the exploration meta-strategy.",
            _labels("bon_rl_v", "bon_rl_s", "standard_rl"),
            lambda p: [
                Comparison("neg_logp", "bon_rl_v", "standard_rl", ">"),
                Comparison("distinct_answers", "bon_rl_v", "standard_rl", ">"),
                Comparison("neg_logp", "bon_rl_s", "standard_rl", ">"),
                Comparison("distinct_answers", "bon_rl_s", "standard_rl", ">"),
                Comparison("pass_at_1", "bon_rl_v", "standard_rl", None),
                Comparison("bon_at_max", "bon_rl_v", "standard_rl", None),
            ],
        ),
        Claim(
            "claim6",
            "Chow et al.",
            "arith",
            "The training N' matters: BoN@32 after training with N' in {1, 4, 16, 32}.",
            _n_sweep,
            _n_sweep_comparisons,
        ),
        Claim(
            "claim7",
            "Amini et al.",
            "sentiment",
            "vBoN lies closer to BoN sampling's reward-vs-KL curve than KL-RL and is more often on the Pareto "
            "front over the N / beta sweep; BoN distillation (from pi_ref) has high KL for its reward.",
            _sentiment_all,
            lambda p: [
                Comparison("gap", "vbon", "kl_rl", ">"),
                Comparison("gap", "bon_distill_sft", "vbon", "<"),
                Comparison("gap", "vbon_bound", "kl_rl", None),
            ],
            kind="frontier",
        ),
        Claim(
            "claim8",
            "Amini et al.",
            "sentiment",
            "vBoN (exact, tie-aware) against its lower bound `vbon_bound`: the same front or not.",
            _sentiment_groups("vbon", "vbon_bound"),
            lambda p: [Comparison("gap", "vbon", "vbon_bound", "=")],
            kind="frontier",
        ),
        Claim(
            "claim9",
            "Amini et al.",
            "sentiment",
            "BoN sampling's measured KL(pi_BoN || pi_ref) against the bound log N - (N-1)/N.",
            lambda p: _sentiment_all(p)[:1],  # only the base policy's evaluation is read
            lambda p: [Comparison("bon_kl_at_max", "measured", "bound", "<")],
            kind="bon_kl",
        ),
    ]
}
