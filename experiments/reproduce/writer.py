"""Writes docs/reproduction.md: per claim the statement, every run tried, the CI tables, the figure, the verdict;
the command and the total wall time (from runs.json)."""

from __future__ import annotations

import os

from experiments.reproduce import stats

RULE = """\
**How the numbers are made.** Each run evaluates its tuned policy and the base policy of its seed on the
same held-out test prompts with the same sampling keys. A difference `a - b` is taken per prompt within a
seed, then combined over seeds and prompts (crossed: every seed sees the same prompts): the mean, and a 95%
interval mean +- t * sqrt(V) with V = var(seed means)/S + var(prompt means)/P and Welch-Satterthwaite
degrees of freedom (experiments/reproduce/stats.py). With one seed the interval is over prompts only.

**Verdict rule** (mechanical). A comparison claimed `>` is *reproduced* when its interval lies above 0, *not
reproduced* when it lies below 0, *inconclusive* otherwise; `<` is the mirror image; `=` (claim 8) is
reproduced when the interval lies inside [-margin, margin], not reproduced when it lies wholly outside,
inconclusive otherwise. Comparisons without a direction are reported, not judged. A claim is *not
reproduced* if any of its judged comparisons is, *reproduced* if all are, *inconclusive* otherwise
(including when runs are missing)."""


def _fmt(e: stats.Estimate | None, digits: int = 3) -> str:
    if e is None:
        return "-"
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _comparison_table(result) -> list[str]:
    lines = ["| comparison | claimed | mean [95% CI] | seeds x prompts | verdict |", "|---|---|---|---|---|"]
    for row in result.rows:
        e = row.estimate
        shape = f"{e.seeds} x {e.prompts}" if e else "no data"
        lines.append(
            f"| {row.label} | {row.comparison.direction or '(reported)'} | {_fmt(e)} | {shape} | "
            f"{row.verdict or '-'} |"
        )
    return lines


def _level_table(result) -> list[str]:
    metrics = list(dict.fromkeys(m for lv in result.levels.values() for m in lv))
    if not metrics:
        return []
    lines = ["| policy | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for who, lv in result.levels.items():
        lines.append(f"| {who} | " + " | ".join(_fmt(lv.get(m)) for m in metrics) + " |")
    return lines


def _extra(result) -> list[str]:
    lines = []
    front = result.extra.get("on_front")
    if front:
        lines += [
            "",
            "Points on the Pareto front (per seed, over every point of the sweep), summed over seeds:",
            "",
            "| objective | on the front | points |",
            "|---|---|---|",
        ]
        lines += [f"| {obj} | {on} | {n} |" for obj, (on, n) in sorted(front.items())]
    curve = result.extra.get("kl_curve")
    if curve:
        lines += ["", "| N | measured KL(BoN@N) [95% CI] | bound log N - (N-1)/N |", "|---|---|---|"]
        lines += [f"| {k} | {_fmt(e)} | {b:.3f} |" for k, e, b in curve]
    return lines


def _runs(result, log: dict, root: str) -> list[str]:
    lines = ["| run | settings | wall s | status |", "|---|---|---|---|"]
    for run, finished in result.runs:
        entry = log.get(run.run_id, {})
        method = {k: v for k, v in dict(run.overrides).items() if k in result_settings(run)}
        lines.append(
            f"| `{run.run_id}` | {_settings(method)} | {entry.get('wall_s', 0):.0f} | "
            f"{'done' if finished else entry.get('status', 'not run')} |"
        )
    return lines


def result_settings(run) -> set:
    """The keys worth showing for a run: the method's and the budget's rl.* / seed keys."""
    return {k for k, _ in run.overrides if k.startswith("rl.")}


def _settings(d: dict) -> str:
    return ", ".join(f"{k.removeprefix('rl.')}={v}" for k, v in sorted(d.items()))


def _tuning(result, log: dict) -> list[str]:
    if not result.tuning:
        return []
    metrics = list(dict.fromkeys(m for _, diffs in result.tuning for m in diffs))
    lines = [
        "",
        f"Validation tries (seed {result.tuning[0][0].seed}; tuned - base on validation prompts, 95% CI over "
        "prompts):",
        "",
        "| try | settings | " + " | ".join(metrics) + " | wall s |",
        "|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for run, diffs in result.tuning:
        cells = " | ".join(_fmt(diffs.get(m)) for m in metrics)
        wall = log.get(run.run_id, {}).get("wall_s", 0)
        settings = _settings({k: v for k, v in run.overrides if k.startswith("rl.")})
        lines.append(f"| `{run.run_id}` | {settings} | {cells} | {wall:.0f} |")
    return lines


def wall_time(results, log: dict, root: str) -> dict:
    """Seconds spent on the runs the current settings use (`current`, over every invocation, with how many
    of them are finished) and on every run in runs.json (`tried`, runs of earlier settings included)."""
    current = {run.run_id: finished for r in results for run, finished in [*r.runs, *((run, run.finished(root)) for run, _ in r.tuning)]}
    return {
        "current_s": sum(log.get(rid, {}).get("wall_s", 0.0) for rid in current),
        "current_runs": len(current),
        "current_finished": sum(current.values()),
        "tried_s": sum(e.get("wall_s", 0.0) for e in log.values()),
        "tried_runs": len(log),
    }


def claims_table(results, doc_link: str) -> list[str]:
    """The README's table: one row per claim, its verdict, and the judged comparisons' means [95% CI]."""
    lines = ["| claim | paper | verdict | judged comparisons, mean [95% CI] |", "|---|---|---|---|"]
    for r in results:
        judged = "; ".join(
            f"{row.label} {_fmt(row.estimate)}" for row in r.rows if row.comparison.direction is not None
        )
        lines.append(
            f"| [{r.claim.id}]({doc_link}#{r.claim.id}): {r.claim.statement} | {r.claim.paper} | "
            f"**{r.verdict}** | {judged or '-'} |"
        )
    return lines


BEGIN, END = "<!-- claims-table:begin -->", "<!-- claims-table:end -->"


def update_readme(readme_path: str, results, doc_link: str, note: str) -> None:
    """Replaces what lies between README's claims-table markers with `note` and the claims table."""
    with open(readme_path) as f:
        text = f.read()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme_path} has no {BEGIN} ... {END} block for the claims table")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    block = "\n".join(["", note, "", *claims_table(results, doc_link), ""])
    with open(readme_path + ".tmp", "w") as f:
        f.write(head + BEGIN + block + "\n" + END + tail)
    os.replace(readme_path + ".tmp", readme_path)


def _verifier(v) -> list[str]:
    if v is None:
        return []
    top = max(v.levels)
    lines = [
        "",
        "## The learned verifier",
        "",
        f"The base policy of each arith seed ({', '.join(map(str, v.seeds))}) with its learned verifier, on the "
        f"held-out test prompts (issue 15's bar: BoN@{top} at least 0.45 x pass@{top}, BoN@k not falling as k "
        f"grows). BoN@{top} / pass@{top} = **{v.ratio:.2f}**.",
        "",
        "| k | BoN@k | pass@k | BoN@k - BoN@(previous k) |",
        "|---|---|---|---|",
    ]
    step = {b: e for _, b, e in v.steps}
    for k, lv in v.levels.items():
        lines.append(f"| {k} | {_fmt(lv['BoN@k'])} | {_fmt(lv['pass@k'])} | {_fmt(step.get(k))} |")
    return lines


def write(results, *, profile, log: dict, root: str, doc_path: str, figure_dir: str, command: str,
          verifier=None) -> str:
    t = wall_time(results, log, root)
    lines = [
        "# Reproduction of the papers' claims",
        "",
        f"Made by `{command}` (profile `{profile.name}`, seeds {', '.join(map(str, profile.seeds))}); the "
        "settings are in experiments/reproduce/settings.py. It resumes where it stopped: finished runs are kept.",
        "",
        f"Wall time of the runs the current settings use: **{t['current_s'] / 3600:.2f} h** "
        f"({t['current_s']:.0f} s; {t['current_finished']} of {t['current_runs']} runs finished). Every run "
        f"tried, runs of earlier settings included: {t['tried_s'] / 3600:.2f} h over {t['tried_runs']} runs "
        f"(runs.json under `{os.path.join(root, profile.name)}`).",
        "",
        RULE,
        "",
        "| claim | paper | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| [{r.claim.id}](#{r.claim.id}) | {r.claim.paper} | **{r.verdict}** |" for r in results]
    lines += _verifier(verifier)
    for r in results:
        fig = os.path.join(figure_dir, f"reproduce_{r.claim.id}.png")
        rel = os.path.relpath(fig, os.path.dirname(os.path.abspath(doc_path)))
        lines += [
            "",
            f"## {r.claim.id}",
            "",
            f"*{r.claim.paper}, on `{r.claim.family}`.* {r.claim.statement}",
            "",
            f"**Verdict: {r.verdict}.**",
            "",
            *_comparison_table(r),
            "",
            *_level_table(r),
            *_extra(r),
            *_tuning(r, log),
            "",
            f"![{r.claim.id}]({rel})",
            "",
            "Runs:",
            "",
            *_runs(r, log, root),
        ]
    listed = {run.run_id for r in results for run, _ in r.runs} | {
        run.run_id for r in results for run, _ in r.tuning
    }
    tried = [rid for rid in log if rid not in listed]
    if tried:
        lines += [
            "",
            "## Other runs tried",
            "",
            "Runs in runs.json that the current settings no longer use:",
            "",
            "| run | settings | wall s | status |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{rid}` | {_settings({k: v for k, v in log[rid].get('overrides', {}).items() if k.startswith('rl.')})}"
            f" | {log[rid].get('wall_s', 0):.0f} | {log[rid].get('status')} |"
            for rid in tried
        ]
    os.makedirs(os.path.dirname(os.path.abspath(doc_path)), exist_ok=True)
    with open(doc_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return doc_path
