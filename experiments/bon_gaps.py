"""Where Best-of-M loses to the oracle: the prompts whose verifier-selected sample is wrong though a right one
was drawn, and how much of the policy's mass sits on the wrong answers that outrank every right one.

    python -m experiments.bon_gaps EVAL_STAGE [EVAL_STAGE ...]
    python -m experiments.bon_gaps --paired BASE_EVAL_STAGE TUNED_EVAL_STAGE

EVAL_STAGE is an evaluation stage folder of a run (`runs/arith_bo32/stages/eval_base-*`, `eval_tuned-*`),
whose `chunks/*.npz` hold every sample's reward, verifier score and parsed answer. For each stage it prints:

- gap prompts: BoN@M wrong (the top-scored sample's reward is 0) while pass@M is right (some sample's is 1);
- per gap prompt the *outranking share* q: the fraction of its M samples that are wrong and scored above every
  right sample. A sample of the policy outranks every right one with probability about q, so a fresh draw of
  M samples holds none of them with probability about (1 - q)^M: BoN@M on that prompt turns right only when
  the policy has moved q close to 0 (q <= 1/M gives (1 - 1/M)^M ~ 0.37), not merely lowered it;
- for integer answers, |top-scored wrong answer - right answer|: what kind of mistake the verifier misses.

`--paired` follows the first stage's gap prompts into the second (the same prompts, evaluated after
fine-tuning): how many lowered their share q, and how many lost every right sample.

A diagnostic of evaluations already made: it reads their samples and changes no result.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os

import numpy as np


def load_samples(stage: str) -> tuple[list[list], np.ndarray, np.ndarray]:
    """(answers [P][M], rewards [P, M], scores [P, M]) of an evaluation stage's chunks, in prompt order."""
    files = sorted(glob.glob(os.path.join(stage, "chunks", "*.npz")))
    if not files:
        raise SystemExit(f"{stage}: no chunks/*.npz (not an evaluation stage folder?)")
    answers, rewards, scores = [], [], []
    for f in files:
        with np.load(f) as d:
            answers += json.loads(str(d["answers_json"]))
            rewards.append(d["rewards_BM"])
            scores.append(d["scores_BM"])
    return answers, np.concatenate(rewards), np.concatenate(scores)


def outranking_share(rewards_M, scores_M) -> float | None:
    """Fraction of the samples that are wrong (reward 0) and scored above every right one (reward > 0);
    None when no sample is right."""
    right = rewards_M > 0
    if not right.any():
        return None
    return float(np.mean(~right & (scores_M > scores_M[right].max())))


def gap_prompts(rewards_PM, scores_PM) -> np.ndarray:
    """Indices of the prompts whose top-scored sample is wrong while some sample is right (ties: the first
    top-scored sample, as np.argmax picks)."""
    top = rewards_PM[np.arange(len(rewards_PM)), np.argmax(scores_PM, axis=1)]
    return np.flatnonzero((top <= 0) & (rewards_PM.max(axis=1) > 0))


def summarize(answers, rewards_PM, scores_PM) -> dict:
    gaps = gap_prompts(rewards_PM, scores_PM)
    M = rewards_PM.shape[1]
    q = np.array([outranking_share(rewards_PM[p], scores_PM[p]) for p in gaps], np.float64)
    slips = collections.Counter()
    for p in gaps:
        right = next(a for a, r in zip(answers[p], rewards_PM[p]) if r > 0)
        top = answers[p][int(np.argmax(scores_PM[p]))]
        try:
            slips[abs(int(top) - int(right))] += 1
        except (TypeError, ValueError):
            slips["not integers"] += 1
    return {
        "prompts": len(rewards_PM),
        "samples_per_prompt": M,
        "gap_prompts": len(gaps),
        "share_median": float(np.median(q)) if len(q) else None,
        "share_at_least_1/8": int(np.sum(q >= 1 / 8)),
        "share_at_least_1/4": int(np.sum(q >= 1 / 4)),
        "share_at_most_1/M": int(np.sum(q <= 1 / M)),
        "mean_P_none_in_M": float(np.mean((1 - q) ** M)) if len(q) else None,
        "top_wrong_minus_right": dict(sorted(slips.items(), key=lambda kv: -kv[1])),
        "shares": q.round(3).tolist(),
    }


def paired(base, tuned) -> dict:
    """The base's gap prompts followed into the tuned evaluation (`load_samples` tuples of the same
    prompts): their shares q before and after (None: no right sample left)."""
    _, rb, sb = base
    _, rt, st = tuned
    if rb.shape[0] != rt.shape[0]:
        raise SystemExit(f"the two evaluations hold {rb.shape[0]} and {rt.shape[0]} prompts: not the same prompts")
    gaps = gap_prompts(rb, sb)
    before = [outranking_share(rb[p], sb[p]) for p in gaps]
    after = [outranking_share(rt[p], st[p]) for p in gaps]
    kept = [(b, t) for b, t in zip(before, after) if t is not None]
    return {
        "gap_prompts": len(gaps),
        "lower": sum(t < b for b, t in kept),
        "higher_or_equal": sum(t >= b for b, t in kept),
        "lost_every_right_sample": sum(t is None for t in after),
        "fixed": int(np.sum(rt[gaps, np.argmax(st[gaps], axis=1)] > 0)) if len(gaps) else 0,
        "median_before": float(np.median(before)) if before else None,
        "median_after_kept": float(np.median([t for _, t in kept])) if kept else None,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stages", nargs="+", help="evaluation stage folders (runs/<run>/stages/eval_*)")
    p.add_argument("--paired", action="store_true", help="two stages: the base's gap prompts after tuning")
    a = p.parse_args(argv)
    if a.paired:
        if len(a.stages) != 2:
            raise SystemExit("--paired takes two evaluation stages: the base's, then the tuned policy's")
        d = paired(load_samples(a.stages[0]), load_samples(a.stages[1]))
        print(f"the base's {d['gap_prompts']} gap prompts after tuning: share q lower on {d['lower']}, "
              f"higher or equal on {d['higher_or_equal']}, every right sample lost on "
              f"{d['lost_every_right_sample']}; BoN@M right on {d['fixed']}")
        print(f"  median q {d['median_before']:.3f} -> {d['median_after_kept']:.3f} (prompts with a right sample left)")
        return
    for stage in a.stages:
        s = summarize(*load_samples(stage))
        print(f"{stage}: {s['prompts']} prompts x {s['samples_per_prompt']} samples")
        print(f"  gap prompts (BoN@M wrong, pass@M right): {s['gap_prompts']}")
        if s["gap_prompts"]:
            print(f"  outranking share q: median {s['share_median']:.3f}; q >= 1/8 on {s['share_at_least_1/8']}, "
                  f">= 1/4 on {s['share_at_least_1/4']}, <= 1/M on {s['share_at_most_1/M']}")
            print(f"  mean (1 - q)^M (a fresh draw holds no outranking wrong sample): {s['mean_P_none_in_M']:.3f}")
            print(f"  |top-scored wrong - right| (integer answers): {s['top_wrong_minus_right']}")
            print(f"  q per gap prompt, sorted: {sorted(s['shares'])}")


if __name__ == "__main__":
    main()
