"""Sweeps: a grid of config overrides run as separate experiments that share cached stages.

Results: one row per finished point with the objective, N, beta and the tuned policy's evaluation
(mean reward, KL to the reference, BoN@k / pass@k), written as `results.csv` and `results.md`, and the
reward-vs-KL plot with the Pareto front (higher reward at lower KL) marked; BoN sampling itself (reward of
the best of k reference samples against its KL bound log k - (k-1)/k) is drawn as the reference curve.
"""

from __future__ import annotations

import copy
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from bon_jax.bon import kl_bon_upper_bound  # noqa: E402
from bon_jax.config import validate  # noqa: E402
from bon_jax.errors import ConfigError  # noqa: E402
from bon_jax.pipeline.run import run_experiment  # noqa: E402


def point_name(overrides: dict) -> str:
    return "_".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(overrides.items()))


def point_config(base: ConfigDict, overrides: dict, root: str) -> ConfigDict:
    c = copy.deepcopy(base)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise ConfigError(key, "unknown key in get_sweep()")
            node = node[p]
        if leaf not in node:
            raise ConfigError(key, "unknown key in get_sweep()")
        node[leaf] = value
    c.workdir = os.path.join(root, "sweep", point_name(overrides))
    return c


def run_sweep(base: ConfigDict, grid: list[dict], *, shard: int = 0, num_shards: int = 1) -> list[dict]:
    root = base.workdir or os.path.join("runs", base.name)
    configs = [point_config(base, o, root) for o in grid]
    for c in configs:  # every point is validated before any of them computes
        validate(c)
    mine = [(o, c) for i, (o, c) in enumerate(zip(grid, configs)) if i % num_shards == shard]
    print(
        f"[bon_jax] sweep {base.name}: {len(grid)} points, this shard ({shard}/{num_shards}) runs {len(mine)}"
    )
    for overrides, c in mine:
        if os.path.exists(os.path.join(c.workdir, "summary.json")):
            print(f"[bon_jax] {point_name(overrides)}: done, skipped")
            continue
        # Stages are shared across points through one cache root.
        run_experiment(c, cache_root=os.path.join(root, "stages"))
    rows = collect(root, grid)
    write_tables(root, rows)
    plot_reward_vs_kl(root, rows)
    return rows


def collect(root: str, grid: list[dict]) -> list[dict]:
    rows = []
    for overrides in grid:
        path = os.path.join(root, "sweep", point_name(overrides), "summary.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            s = json.load(f)
        rl = s["config"]["rl"]
        row = {"point": point_name(overrides), "objective": rl["objective"], "n": rl["n"], "beta": rl["beta"]}
        for policy in ("base", "tuned"):
            ev = s["eval"].get(policy)
            if not ev:
                continue
            row[f"{policy}_reward"] = ev["mean_reward"]["mean"]
            row[f"{policy}_kl"] = ev["kl"]["mean"]
            for fam in ("bon_at_k", "pass_at_k"):
                for k, e in ev.get(fam, {}).items():
                    row[f"{policy}_{fam.replace('_at_k', '')}@{k}"] = e["mean"]
        rows.append(row)
    return rows


def write_tables(root: str, rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(root, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    with open(os.path.join(root, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower or equal KL and higher or equal reward)."""
    front = []
    for i, (kl_i, r_i) in enumerate(points):
        dominated = any(
            (kl_j <= kl_i and r_j >= r_i) and (kl_j < kl_i or r_j > r_i)
            for j, (kl_j, r_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot_reward_vs_kl(root: str, rows: list[dict]) -> None:
    pts = [(r["tuned_kl"], r["tuned_reward"], r["objective"], r) for r in rows if "tuned_kl" in r]
    if not pts:
        return
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for obj in sorted({p[2] for p in pts}):
        sel = [p for p in pts if p[2] == obj]
        ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=obj)
    front = pareto_front([(p[0], p[1]) for p in pts])
    fp = sorted((pts[i][0], pts[i][1]) for i in front)
    ax.plot([p[0] for p in fp], [p[1] for p in fp], "k--", lw=1, label="Pareto front")
    base = rows[0]
    bon = sorted(
        (kl_bon_upper_bound(int(k.split("@")[1])), v) for k, v in base.items() if k.startswith("base_bon@")
    )
    if bon:
        ax.plot([b[0] for b in bon], [b[1] for b in bon], "g-o", ms=3, label="BoN sampling (KL bound)")
    ax.set_xlabel("KL(pi || pi_ref)")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(root, "reward_vs_kl.png"), dpi=120)
    plt.close(fig)
