"""The run's report: `summary.json`, a table on the terminal, and plots (PNG)."""

from __future__ import annotations

import json
import os

import matplotlib
import numpy as np

from bon_jax import metrics

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FAMILIES = (("bon_at_k", "BoN@k"), ("pass_at_k", "pass@k"), ("maj_at_k", "maj@k"))


def _fmt(entry) -> str:
    return f"{entry['mean']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def table(evals: dict) -> str:
    """Rows: metric@k; columns: policies; cells: mean [95% bootstrap CI over prompts]."""
    policies = list(evals)
    lines = ["| metric | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    first = evals[policies[0]]
    for fam, label in FAMILIES:
        for k in first.get(fam, {}):
            cells = [_fmt(evals[p][fam][k]) if k in evals[p].get(fam, {}) else "-" for p in policies]
            lines.append(f"| {label.replace('k', k)} | " + " | ".join(cells) + " |")
    for key in ("mean_reward", "kl", "distinct_answers", "length"):
        if key in first:
            lines.append(f"| {key} | " + " | ".join(_fmt(evals[p][key]) for p in policies) + " |")
    return "\n".join(lines)


def paired_differences(evals: dict, baseline: str = "base", bootstrap: int = 1000) -> dict:
    """For each policy other than `baseline`: (policy - baseline) per metric@k, with a paired bootstrap CI.

    Both policies were evaluated on the same prompts with the same keys, so the difference is taken per
    prompt and the prompts are resampled jointly: prompt difficulty, shared by both policies, cancels, and
    the CI of the difference is much narrower than the two marginal CIs side by side would suggest.
    Returns {policy: {"bon_at_k": {"32": {"mean", "low", "high"}}, ...}}; needs `per_prompt` in evals.
    """
    out = {}
    base = evals.get(baseline, {}).get("per_prompt")
    if base is None:
        return out
    for policy, ev in evals.items():
        other = ev.get("per_prompt")
        if policy == baseline or other is None:
            continue
        diffs = {}
        for fam, _ in FAMILIES + (("mean_reward", ""),):
            for key in sorted(other):
                f, _, k = key.rpartition("_at_")
                if not (key == fam or (f and f"{f}_at_k" == fam)) or key not in base:
                    continue
                d = np.asarray(other[key], np.float64) - np.asarray(base[key], np.float64)
                ci = metrics.bootstrap_ci(d, rng=0, num_resamples=bootstrap)
                entry = {"mean": float(ci.mean), "low": float(ci.low), "high": float(ci.high)}
                if key == fam:
                    diffs[fam] = entry
                else:
                    diffs.setdefault(fam, {})[k] = entry
        out[policy] = diffs
    return out


def difference_table(diffs: dict, baseline: str = "base") -> str:
    """Rows: metric@k; columns: `policy - baseline`, mean [95% paired bootstrap CI]; * marks a CI above 0."""
    if not diffs:
        return ""
    policies = list(diffs)
    lines = ["| difference | " + " | ".join(f"{p} - {baseline}" for p in policies) + " |",
             "|---|" + "---|" * len(policies)]
    first = diffs[policies[0]]
    for fam, label in FAMILIES:
        for k in sorted(first.get(fam, {}), key=int):
            cells = []
            for p in policies:
                e = diffs[p].get(fam, {}).get(k)
                cells.append("-" if e is None else _fmt(e) + (" *" if e["low"] > 0 else ""))
            lines.append(f"| {label.replace('k', k)} | " + " | ".join(cells) + " |")
    if all("mean_reward" in diffs[p] for p in policies):
        lines.append("| mean_reward | " + " | ".join(_fmt(diffs[p]["mean_reward"]) for p in policies) + " |")
    return "\n".join(lines)


def plot_accuracy_vs_n(evals: dict, path: str, title: str) -> None:
    fams = [(f, l) for f, l in FAMILIES if any(evals[p].get(f) for p in evals)]
    fig, axes = plt.subplots(1, len(fams), figsize=(4.2 * len(fams), 3.6), squeeze=False)
    for ax, (fam, label) in zip(axes[0], fams):
        for policy, ev in evals.items():
            ks = sorted(int(k) for k in ev.get(fam, {}))
            if not ks:
                continue
            mean = [ev[fam][str(k)]["mean"] for k in ks]
            lo = [ev[fam][str(k)]["low"] for k in ks]
            hi = [ev[fam][str(k)]["high"] for k in ks]
            ax.plot(ks, mean, marker="o", label=policy)
            ax.fill_between(ks, lo, hi, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (samples)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("reward")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(workdir: str, summary: dict) -> str:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "summary.json")
    slim = json.loads(json.dumps(summary, default=str))
    for ev in slim.get("eval", {}).values():
        ev.pop("per_prompt", None)
    with open(path, "w") as f:
        json.dump(slim, f, indent=1)
    with open(os.path.join(workdir, "per_prompt.json"), "w") as f:
        json.dump({p: ev.get("per_prompt") for p, ev in summary.get("eval", {}).items()}, f)
    return path
