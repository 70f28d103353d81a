"""Per claim, the numbers: comparisons with 95% CIs over seeds and prompts, levels per method, the verdict.

Reads the finished runs' `per_prompt.json` ({"base": {metric: [P]}, "tuned": {...}}; evaluate.py). The
base policy of a seed is read from any run of that seed (they share its cached evaluation). A comparison
`a - b` is taken per prompt within a seed (the same prompts and evaluation keys: common random numbers),
then combined over seeds and prompts by `stats.crossed_ci`; only seeds where both sides finished count.

Claims 7-8 (frontier): per seed, a sweep point's KL is its mean KL(pi || pi_ref) over prompts and BoN
sampling's curve is (KL of Best-of-k of pi_ref, BoN@k) for the evaluated k, the KL measured
(`metrics.bon_kl_at_k`, the plug-in over the base's samples; the bound log k - (k-1)/k when the evaluation
predates it). A point's `gap` on prompt p is its reward minus the curve's reward at the point's KL (linear
interpolation in KL of the per-prompt BoN@k; held at the last k beyond the largest evaluated), so a
higher gap is a better reward for the KL spent, and 0 is on the curve. A group's gap (vbon, kl_rl, ...) is
the mean over its points. The KL's own uncertainty is not propagated. The Pareto front is taken per seed
over all points' means (bon_jax.pipeline.sweep.pareto_front). Claim 9: the base's measured KL of BoN@k
against the bound, per k >= 2; it is a verdict at k <= M/4 only, where the plug-in's downward bias from M
samples is small.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from bon_jax.bon import kl_bon_upper_bound
from bon_jax.pipeline.sweep import pareto_front
from experiments.reproduce import stats
from experiments.reproduce.claims import CLAIMS, Claim, Comparison
from experiments.reproduce.runs import Run, claim_methods, method_run, tuning_runs


@dataclasses.dataclass
class Row:
    comparison: Comparison
    label: str  # e.g. "BoN@32: bon_rl_v - base"
    estimate: stats.Estimate | None
    verdict: str | None  # None: not a directed comparison


@dataclasses.dataclass
class ClaimResult:
    claim: Claim
    runs: list  # [(Run, finished: bool)]
    rows: list  # [Row]
    levels: dict  # method label -> {metric label: Estimate}
    extra: dict  # claim-specific (curves, Pareto counts)
    verdict: str
    tuning: list = dataclasses.field(default_factory=list)  # [(Run, {metric: Estimate})] validation tries


def load_runs(runs: list[Run], root: str) -> dict:
    """{(family, label, seed): {"base": {...}, "tuned": {...}}} of the finished runs."""
    out = {}
    for run in runs:
        if run.finished(root):
            with open(os.path.join(run.workdir(root), "per_prompt.json")) as f:
                out[(run.family, run.label, run.seed)] = json.load(f)
    return out


def _base(data, family, seed):
    for (fam, _, s), pp in data.items():
        if fam == family and s == seed and pp.get("base"):
            return pp["base"]
    return None


def _values(data, family, who, seed, metric):
    pp = _base(data, family, seed) if who == "base" else (data.get((family, who, seed)) or {}).get("tuned")
    if pp is None or metric not in pp:
        return None
    return np.asarray(pp[metric], np.float64)


def max_k(data, family, family_name: str = "bon_at_") -> int | None:
    ks = [
        int(m[len(family_name) :])
        for pp in _family_dicts(data, family)
        for m in pp
        if m.startswith(family_name) and m[len(family_name) :].isdigit()
    ]
    return max(ks) if ks else None


def _family_dicts(data, family):
    return [d for (fam, _, _), pp in data.items() if fam == family for d in pp.values() if d]


def metric_name(metric: str, data, family) -> str:
    if metric.endswith("_at_max"):
        prefix = metric[: -len("max")]
        k = max_k(data, family, prefix)
        return f"{prefix}{k}" if k else metric
    return metric


def pretty(metric: str) -> str:
    for prefix, label in (
        ("bon_kl_at_", "KL(BoN@{})"),
        ("bon_at_", "BoN@{}"),
        ("pass_at_", "pass@{}"),
        ("maj_at_", "maj@{}"),
    ):
        if metric.startswith(prefix):
            return label.format(metric[len(prefix) :])
    return {
        "neg_logp": "entropy (mean -log pi(y))",
        "distinct_answers": "distinct answers",
        "mean_reward": "mean reward",
        "kl": "KL(pi || pi_ref)",
    }.get(metric, metric)


def paired(data, family, seeds, metric, a, b) -> stats.Estimate | None:
    rows = []
    for s in seeds:
        va, vb = _values(data, family, a, s, metric), _values(data, family, b, s, metric)
        if va is not None and vb is not None:
            rows.append(va - vb)
    return stats.crossed_ci(np.stack(rows)) if rows else None


def level(data, family, seeds, metric, who) -> stats.Estimate | None:
    rows = [v for s in seeds if (v := _values(data, family, who, s, metric)) is not None]
    return stats.crossed_ci(np.stack(rows)) if rows else None


def _row(comp, est, label, margin):
    v = None if comp.direction is None else (stats.verdict(est, comp.direction, margin) if est else None)
    return Row(comp, label, est, v)


def analyse_paired(claim, profile, data, runs) -> ClaimResult:
    family, seeds = claim.family, profile.seeds
    rows = []
    for comp in claim.comparisons(profile):
        metric = metric_name(comp.metric, data, family)
        est = paired(data, family, seeds, metric, comp.a, comp.b)
        rows.append(_row(comp, est, f"{pretty(metric)}: {comp.a} - {comp.b}", profile.equivalence_margin))
    metrics = sorted({metric_name(c.metric, data, family) for c in claim.comparisons(profile)})
    levels = {}
    for who in ["base", *claim.methods(profile)]:
        levels[who] = {pretty(m): level(data, family, seeds, m, who) for m in metrics}
    curves = {}  # the figure's family of metric@k per method
    fam = "pass_at_" if any(c.metric.startswith("pass_at") for c in claim.comparisons(profile)) else "bon_at_"
    kmax = max_k(data, family, fam)
    if kmax:
        ks = sorted(
            {
                int(m[len(fam) :])
                for d in _family_dicts(data, family)
                for m in d
                if m.startswith(fam) and m[len(fam) :].isdigit()
            }
        )
        for who in ["base", *claim.methods(profile)]:
            curves[who] = [(k, level(data, family, seeds, f"{fam}{k}", who)) for k in ks]
    extra = {"curve_metric": fam, "curves": curves}
    if claim.id == "claim6":
        methods = profile.families["arith"].methods
        kname = metric_name("bon_at_max", data, family)
        extra["n_sweep"] = [
            (methods[label].get("rl.n", 1), label, level(data, family, seeds, kname, label))
            for label in claim.methods(profile)
        ]
    return _result(claim, runs, rows, levels, extra)


def _result(claim, runs, rows, levels, extra):
    directed = [r.verdict for r in rows if r.comparison.direction is not None]
    return ClaimResult(claim, runs, rows, levels, extra, stats.claim_verdict(directed))


# --------------------------------------------------------------------------------------- claims 7 and 8


def bon_curve(base: dict) -> tuple[np.ndarray, np.ndarray, bool]:
    """(KL per k, BoN@k per [k, prompt], measured?) of one seed's base evaluation, k ascending."""
    ks = sorted(int(m[len("bon_at_") :]) for m in base if m.startswith("bon_at_") and m[7:].isdigit())
    measured = all(f"bon_kl_at_{k}" in base for k in ks)
    kl = np.array([np.mean(base[f"bon_kl_at_{k}"]) if measured else kl_bon_upper_bound(k) for k in ks])
    return np.maximum.accumulate(kl), np.array([base[f"bon_at_{k}"] for k in ks], np.float64), measured


def point_gap(tuned: dict, curve) -> np.ndarray:
    """Per prompt: reward minus BoN sampling's reward at the point's mean KL (module docstring)."""
    kl_k, bon_KP, _ = curve
    x = float(np.mean(tuned["kl"]))
    # np.interp is linear in the y values, so interpolating each prompt's curve at x is one weight vector.
    w = np.array([np.interp(x, kl_k, np.eye(len(kl_k))[j]) for j in range(len(kl_k))])
    return np.asarray(tuned["mean_reward"], np.float64) - w @ bon_KP


def _group_gap(data, profile, seed, objective, curve):
    labels = [
        lbl for lbl, o in profile.families["sentiment"].methods.items() if o.get("rl.objective") == objective
    ]
    gaps = [
        point_gap(data[("sentiment", lbl, seed)]["tuned"], curve)
        for lbl in labels
        if ("sentiment", lbl, seed) in data and data[("sentiment", lbl, seed)].get("tuned")
    ]
    return np.mean(gaps, axis=0) if gaps else None


def analyse_frontier(claim, profile, data, runs) -> ClaimResult:
    seeds = profile.seeds
    methods = profile.families["sentiment"].methods
    curves = {s: bon_curve(b) for s in seeds if (b := _base(data, "sentiment", s))}
    rows = []
    for comp in claim.comparisons(profile):
        per_seed = []
        for s, curve in curves.items():
            ga, gb = _group_gap(data, profile, s, comp.a, curve), _group_gap(data, profile, s, comp.b, curve)
            if ga is not None and gb is not None:
                per_seed.append(ga - gb)
        est = stats.crossed_ci(np.stack(per_seed)) if per_seed else None
        rows.append(_row(comp, est, f"gap to BoN curve: {comp.a} - {comp.b}", profile.equivalence_margin))
    levels, points = {}, {}
    for label in claim.methods(profile):
        runs_s = [
            (s, data[("sentiment", label, s)]["tuned"])
            for s in curves
            if data.get(("sentiment", label, s), {}).get("tuned")
        ]
        if not runs_s:
            levels[label] = {}
            continue
        gap = stats.crossed_ci(np.stack([point_gap(t, curves[s]) for s, t in runs_s]))
        reward = stats.crossed_ci(np.stack([np.asarray(t["mean_reward"]) for _, t in runs_s]))
        kl = stats.crossed_ci(np.stack([np.asarray(t["kl"]) for _, t in runs_s]))
        levels[label] = {"reward": reward, "KL(pi || pi_ref)": kl, "gap to BoN curve": gap}
        points[label] = (methods[label].get("rl.objective"), reward, kl)
    # Pareto front per seed over every point of the profile's sweep that finished at that seed.
    on_front: dict[str, list[int]] = {}
    all_labels = list(methods)
    for s in curves:
        pts = [
            (lbl, float(np.mean(d["tuned"]["kl"])), float(np.mean(d["tuned"]["mean_reward"])))
            for lbl in all_labels
            if (d := data.get(("sentiment", lbl, s))) and d.get("tuned")
        ]
        front = set(pareto_front([(kl, r) for _, kl, r in pts]))
        for i, (lbl, _, _) in enumerate(pts):
            counts = on_front.setdefault(methods[lbl].get("rl.objective"), [0, 0])
            counts[0] += i in front
            counts[1] += 1
    bon = {}
    if curves:
        kls = np.mean([c[0] for c in curves.values()], axis=0)
        bon_rewards = [
            stats.crossed_ci(np.stack([c[1][j] for c in curves.values()])) for j in range(len(kls))
        ]
        bon = {"kl": kls.tolist(), "reward": bon_rewards, "measured": all(c[2] for c in curves.values())}
    extra = {"points": points, "on_front": on_front, "bon": bon}
    return _result(claim, runs, rows, levels, extra)


# ------------------------------------------------------------------------------------------------ claim 9


def analyse_bon_kl(claim, profile, data, runs) -> ClaimResult:
    seeds = profile.seeds
    bases = {s: b for s in seeds if (b := _base(data, "sentiment", s))}
    rows, curve = [], []
    if bases:
        first = next(iter(bases.values()))
        ks = sorted(int(m[len("bon_kl_at_") :]) for m in first if m.startswith("bon_kl_at_"))
        m = max_k(data, "sentiment", "bon_at_")  # the largest k evaluated: eval.m in the experiments
        for k in [k for k in ks if k >= 2]:
            measured = stats.crossed_ci(np.stack([np.asarray(b[f"bon_kl_at_{k}"]) for b in bases.values()]))
            bound = kl_bon_upper_bound(k)
            diff = stats.crossed_ci(
                np.stack([np.asarray(b[f"bon_kl_at_{k}"]) - bound for b in bases.values()])
            )
            direction = "<" if m and k <= m / 4 else None
            comp = Comparison(f"bon_kl_at_{k}", "measured", "bound", direction)
            rows.append(_row(comp, diff, f"KL(BoN@{k}) measured - bound", profile.equivalence_margin))
            curve.append((k, measured, bound))
    levels = {}
    return _result(claim, runs, rows, levels, {"kl_curve": curve})


TUNING_METRICS = ("bon_at_max", "pass_at_max", "pass_at_1", "mean_reward", "kl")


def tuning_table(profile, claim, root) -> list[tuple[Run, dict]]:
    """Per validation try of the claim's methods: tuned - base on the validation prompts (one seed)."""
    out = []
    for family, label in claim_methods(profile, claim.id):
        for run in tuning_runs(profile, family, label):
            if not run.finished(root):
                out.append((run, {}))
                continue
            with open(os.path.join(run.workdir(root), "per_prompt.json")) as f:
                pp = json.load(f)
            data = {(family, "try", run.seed): pp}
            diffs = {}
            for metric in TUNING_METRICS:
                name = metric_name(metric, data, family)
                est = paired(data, family, (run.seed,), name, "try", "base")
                if est is not None:
                    diffs[pretty(name)] = est
            out.append((run, diffs))
    return out


ANALYSES = {"paired": analyse_paired, "frontier": analyse_frontier, "bon_kl": analyse_bon_kl}


def analyse(profile, claim_ids, root) -> list[ClaimResult]:
    out = []
    for cid in claim_ids:
        claim = CLAIMS[cid]
        runs = [
            method_run(profile, fam, label, s)
            for s in profile.seeds
            for fam, label in claim_methods(profile, cid)
        ]
        data = load_runs(_family_runs(profile, claim.family), root)
        status = [(r, r.finished(root)) for r in runs]
        result = ANALYSES[claim.kind](claim, profile, data, status)
        result.tuning = tuning_table(profile, claim, root)
        out.append(result)
    return out


def _family_runs(profile, family) -> list[Run]:
    """Every run of the family under this profile (claims share the base evaluations and the sweep)."""
    return [
        method_run(profile, family, label, s)
        for s in profile.seeds
        for label in profile.families[family].methods
    ]


@dataclasses.dataclass
class VerifierCheck:
    """The learned verifier with each seed's base policy (issue 15's acceptance: BoN@K >= 0.45 pass@K and
    BoN@k non-decreasing in k): levels per k, and each step BoN@k - BoN@(previous k), over seeds x prompts."""

    seeds: list
    levels: dict  # k -> {"BoN@k": Estimate, "pass@k": Estimate}
    steps: list  # [(previous k, k, Estimate of BoN@k - BoN@previous k)]
    ratio: float | None  # mean BoN@K / mean pass@K at the largest k


def verifier_check(profile, root, family: str = "arith") -> VerifierCheck | None:
    """The base policy's BoN@k and pass@k per k, read from the family's finished runs (one per seed)."""
    if family not in profile.families:
        return None
    data = load_runs(_family_runs(profile, family), root)
    bases = {s: b for s in profile.seeds if (b := _base(data, family, s))}
    if not bases:
        return None
    first = next(iter(bases.values()))
    ks = sorted(int(m[len("bon_at_"):]) for m in first if m.startswith("bon_at_") and m[7:].isdigit())
    stack = lambda metric: np.stack([np.asarray(b[metric], np.float64) for b in bases.values()])  # noqa: E731
    levels = {k: {"BoN@k": stats.crossed_ci(stack(f"bon_at_{k}")), "pass@k": stats.crossed_ci(stack(f"pass_at_{k}"))}
              for k in ks}
    steps = [(a, b, stats.crossed_ci(stack(f"bon_at_{b}") - stack(f"bon_at_{a}"))) for a, b in zip(ks, ks[1:])]
    top = ks[-1]
    ratio = levels[top]["BoN@k"].mean / levels[top]["pass@k"].mean if levels[top]["pass@k"].mean > 0 else None
    return VerifierCheck(sorted(bases), levels, steps, ratio)
