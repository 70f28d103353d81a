"""The run's report: `summary.json`, a table on the terminal, and plots (PNG)."""

from __future__ import annotations

import json
import os

import matplotlib

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
