"""One PNG per claim (matplotlib): metric@k against k per method with 95% CI bands (claims 1-5), BoN@k
against the training N' (claim 6), reward against KL with BoN sampling's curve and the Pareto front (7, 8),
BoN sampling's measured KL against the bound (9). Every band is the crossed seed x prompt CI of stats.py."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bon_jax.bon import kl_bon_upper_bound  # noqa: E402


def _band(ax, xs, ests, label, **kw):
    xs = [x for x, e in zip(xs, ests) if e is not None]
    ests = [e for e in ests if e is not None]
    if not ests:
        return
    line = ax.plot(xs, [e.mean for e in ests], marker="o", ms=3, label=label, **kw)[0]
    ax.fill_between(xs, [e.low for e in ests], [e.high for e in ests], alpha=0.15, color=line.get_color())


def _k_curves(ax, result):
    for who, curve in result.extra["curves"].items():
        _band(ax, [k for k, _ in curve], [e for _, e in curve], who, ls="--" if who == "base" else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k" if result.extra["curve_metric"] == "pass_at_" else "BoN@k (learned verifier)")


def _diversity(ax, result):
    metrics = [m for m in next(iter(result.levels.values()))]
    whos = list(result.levels)
    width = 0.8 / max(len(whos), 1)
    for i, who in enumerate(whos):
        for j, m in enumerate(metrics):
            e = result.levels[who].get(m)
            if e is None:
                continue
            scale = max(abs(result.levels["base"][m].mean), 1e-9) if result.levels["base"].get(m) else 1.0
            ax.bar(
                j + i * width,
                e.mean / scale,
                width,
                yerr=[[(e.mean - e.low) / scale], [(e.high - e.mean) / scale]],
                label=who if j == 0 else None,
                color=f"C{i}",
            )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics, fontsize=7)
    ax.set_ylabel("relative to the base policy")


def _n_sweep(ax, result):
    pts = [(n, e) for n, _, e in result.extra["n_sweep"]]
    _band(ax, [n for n, _ in pts], [e for _, e in pts], "BoN-RL-V")
    base = result.levels["base"]
    if base:
        e = next(iter(base.values()))
        if e is not None:
            ax.axhline(e.mean, ls="--", color="grey", label="base")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training N'")
    ax.set_ylabel("BoN@k, k largest evaluated")


def _frontier(ax, result):
    bon = result.extra["bon"]
    if bon:
        _band(
            ax,
            bon["kl"],
            bon["reward"],
            "BoN sampling" + (" (measured KL)" if bon["measured"] else " (KL bound)"),
            color="black",
        )
    objectives = sorted({o for o, _, _ in result.extra["points"].values()})
    for i, obj in enumerate(objectives):
        sel = [(r, k) for o, r, k in result.extra["points"].values() if o == obj]
        ax.errorbar(
            [k.mean for _, k in sel],
            [r.mean for r, _ in sel],
            xerr=[[k.mean - k.low for _, k in sel], [k.high - k.mean for _, k in sel]],
            yerr=[[r.mean - r.low for r, _ in sel], [r.high - r.mean for r, _ in sel]],
            fmt="o",
            ms=4,
            color=f"C{i}",
            label=obj,
            capsize=2,
        )
    ax.set_xlabel("KL(pi || pi_ref)")
    ax.set_ylabel("mean reward")


def _bon_kl(ax, result):
    curve = result.extra["kl_curve"]
    if curve:
        _band(ax, [k for k, _, _ in curve], [e for _, e, _ in curve], "measured (plug-in, base samples)")
        ks = np.linspace(1, max(k for k, _, _ in curve), 100)
        ax.plot(ks, [kl_bon_upper_bound(float(k)) for k in ks], "k--", label="log N - (N-1)/N")
    ax.set_xlabel("N")
    ax.set_ylabel("KL(pi_BoN || pi_ref)")


def plot_claim(result, path: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 4.2))
    cid = result.claim.id
    if result.claim.kind == "frontier":
        _frontier(ax, result)
    elif result.claim.kind == "bon_kl":
        _bon_kl(ax, result)
    elif cid == "claim5":
        _diversity(ax, result)
    elif cid == "claim6":
        _n_sweep(ax, result)
    else:
        _k_curves(ax, result)
    ax.set_title(f"{cid}: {result.verdict}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
