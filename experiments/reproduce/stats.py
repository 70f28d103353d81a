"""95% confidence intervals over seeds and held-out prompts together, and the verdict rule.

The data of one comparison is a matrix d[s, p] (S seeds x P prompts), e.g. d = tuned - base of BoN@32 on
prompt p in the run of seed s. Every seed is evaluated on the same P test prompts (the task's seed, not
the pipeline's, fixes the split), so seeds and prompts are *crossed*, and the model is

    d[s, p] = mu + a_s + b_p + e_sp,   Var a = s_a^2 (seed: base policy, verifier, fine-tuning, sampling),
                                        Var b = s_b^2 (prompt), Var e = s_e^2 (interaction, sampling noise).

We want mu (the expected difference over new seeds and new prompts); the estimate is the grand mean d..,
whose variance is s_a^2/S + s_b^2/P + s_e^2/(SP). With the seed means r_s = d_s. and the prompt means
c_p = d_.p, E[var(r)] = s_a^2 + s_e^2/P and E[var(c)] = s_b^2 + s_e^2/S (sample variances, ddof = 1), so

    V = var(r)/S + var(c)/P = s_a^2/S + s_b^2/P + 2 s_e^2/(SP)

estimates the variance, conservatively by s_e^2/(SP) (the same bias as Owen's pigeonhole bootstrap for
crossed designs, without its coarseness at S = 3). The interval is d.. +- t_{0.975, nu} sqrt(V) with
Welch-Satterthwaite degrees of freedom nu = V^2 / ((var(r)/S)^2/(S-1) + (var(c)/P)^2/(P-1)): with 3 seeds
and a seed term that dominates, nu -> 2 and t = 4.3, so three seeds that disagree give a wide interval, as
they should. With one seed the seed term is absent (it cannot be estimated) and the interval is the
paired one over prompts (nu = P - 1); the tables say how many seeds each interval has.

Verdict of one comparison, from its interval [low, high] and the claimed direction:
    ">": reproduced if low > 0, not reproduced if high < 0, else inconclusive;
    "<": the mirror image;
    "=": reproduced if -margin <= low and high <= margin, not reproduced if low > margin or high < -margin,
         else inconclusive.
Verdict of a claim: not reproduced if any of its directed comparisons is, reproduced if all are, else
inconclusive (also when data is missing). docs/reproduction.md states the same rule.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats as sps

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    seeds: int
    prompts: int
    dof: float


def crossed_ci(d_SP, level: float = 0.95) -> Estimate:
    """Mean of d[s, p] and its `level` CI over seeds and prompts (module docstring). float64 numpy."""
    d = np.asarray(d_SP, np.float64)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"crossed_ci: need [seeds, prompts] with >= 2 prompts, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("crossed_ci: non-finite values in the data")
    s, p = d.shape
    mean = float(d.mean())
    v_prompt = d.mean(0).var(ddof=1) / p
    v_seed = d.mean(1).var(ddof=1) / s if s > 1 else 0.0
    v = v_seed + v_prompt
    denom = v_prompt**2 / (p - 1) + (v_seed**2 / (s - 1) if s > 1 else 0.0)
    dof = v**2 / denom if denom > 0 else float(p - 1)
    half = float(sps.t.ppf(0.5 + level / 2, dof) * np.sqrt(v)) if v > 0 else 0.0
    return Estimate(mean, mean - half, mean + half, s, p, float(dof))


def verdict(est: Estimate, direction: str, margin: float = 0.0) -> str:
    """The verdict of one comparison (module docstring)."""
    if direction == ">":
        return REPRODUCED if est.low > 0 else NOT_REPRODUCED if est.high < 0 else INCONCLUSIVE
    if direction == "<":
        return REPRODUCED if est.high < 0 else NOT_REPRODUCED if est.low > 0 else INCONCLUSIVE
    if direction == "=":
        if -margin <= est.low and est.high <= margin:
            return REPRODUCED
        return NOT_REPRODUCED if est.low > margin or est.high < -margin else INCONCLUSIVE
    raise ValueError(f"verdict: direction must be '>', '<' or '=', got {direction!r}")


def claim_verdict(verdicts: list[str | None]) -> str:
    """A claim's verdict from its directed comparisons' (None: the comparison's data is missing)."""
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    return INCONCLUSIVE
