"""Exact objectives on a finite outcome space (a one-step bandit), differentiable with jax.

For a policy pi = softmax(logits) over A outcomes with rewards R, verifier scores s and a reference
pi_ref = softmax(ref_logits), `objective(name, ...)` returns J(theta) of the registered objective `name`
(the J in its docstring, bon_jax.objectives), computed exactly -- Best-of-N distributions with uniform
tie-breaking from `bon_jax.bon` -- so jax.grad gives grad J exactly. The tests compare the Monte Carlo mean of
each estimator with this gradient.

    objective(name, logits_A, rewards_A, scores_A, ref_logits_A, *, n, beta=None, **options) -> scalar J

beta None means the objective's declared default (`objectives.spec(name).default_beta`: 0, or 1 for vbon /
vbon_bound / bond). What selects, whether rewards must be binary and whether KL terms are allowed also come
from the objective's `ObjectiveSpec`. Options that change J:
  anchor_coef, anchor_logits_A    -anchor_coef KL(pi || softmax(anchor_logits)) (every objective but
                                  bon_distill_sft)
  expert_probs_A                  the demonstration distribution D over the A outcomes (sft, bon_sft)
  lam                             bon_sft's tilt (default lambda_N)
  select_by                       vbon / vbon_bound / bond ("reward" default, or "score");
                                  bon_distill_sft ("score" default, or "reward")
  b                               bond's mixing weight (0.5)
Estimator-only options (baseline, values_B, p_B, p_estimate, p_clip, clip_eps, temperature, ref_cdf_BM,
ref_cdf_lt_BM, cdf_smoothing; grpo's scale_by_std, loss_norm, max_len, clip_eps_high, skip_equal_groups,
adv_eps) are accepted and ignored, so the same options can be passed to both. grpo / dr_grpo get the J they
ascend, E_pi[R] (their estimators are biased for it: docs/maths.md section 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax import bon, objectives

__all__ = ["bon_reward", "kl", "objective"]

_ESTIMATOR_ONLY = frozenset(
    {
        "baseline",
        "values_B",
        "p_B",
        "p_estimate",
        "p_clip",
        "clip_eps",
        "temperature",
        "ref_cdf_BM",
        "ref_cdf_lt_BM",
        "cdf_smoothing",
        "scale_by_std",
        "loss_norm",
        "max_len",
        "clip_eps_high",
        "skip_equal_groups",
        "adv_eps",
    }
)


def kl(probs_p, logp_p, logp_q):
    """KL(p || q) = sum_y p (log p - log q), with 0 log 0 = 0."""
    return jnp.sum(jnp.where(probs_p > 0, probs_p * (logp_p - jnp.where(probs_p > 0, logp_q, 0.0)), 0.0), -1)


def bon_reward(probs_A, rewards_A, scores_A, n):
    """E_{y ~ pi_BoN(pi, s, n)}[R(y)], exact with uniform tie-breaking."""
    return jnp.sum(bon.bon_distribution(probs_A, scores_A, n) * rewards_A, axis=-1)


def _is_zero(x):
    return isinstance(x, (int, float)) and x == 0


def objective(
    name,
    logits_A,
    rewards_A,
    scores_A,
    ref_logits_A,
    *,
    n,
    beta=None,
    anchor_coef=0.0,
    anchor_logits_A=None,
    expert_probs_A=None,
    lam=None,
    select_by=None,
    b=0.5,
    **options,
):
    """Exact J of objective `name` for the bandit policy softmax(logits_A); see the module docstring.

    Args:
      name: a registered objective name.
      logits_A: [A] policy logits (differentiate with respect to these).
      rewards_A, scores_A: [A] rewards R(y) and verifier scores s(y) (binary rewards for bon_rlb*, pkpo).
      ref_logits_A: [A] reference logits (pi_ref).
      n: Best-of-N size (Python int).
      beta: KL(pi || pi_ref) coefficient; None = the objective's default.
    Returns: scalar J.
    """
    spec = objectives.spec(name)  # KeyError for unknown names
    unknown = set(options) - _ESTIMATOR_ONLY
    if unknown:
        raise TypeError(f"exact.objective({name!r}): unknown option(s) {sorted(unknown)}")
    if select_by is not None and not spec.select_option:
        raise TypeError(f"exact.objective({name!r}) has no select_by option (it selects by {spec.selects_by})")
    if not spec.kl_terms and not (_is_zero(beta or 0.0) and _is_zero(anchor_coef)):
        raise ValueError(f"{name} has no KL terms (its samples come from pi_ref)")
    beta = spec.default_beta if beta is None else beta
    logits_A = jnp.asarray(logits_A)
    dtype = logits_A.dtype if jnp.issubdtype(logits_A.dtype, jnp.floating) else jnp.float32
    logits_A = logits_A.astype(dtype)
    rewards_A = jnp.asarray(rewards_A, dtype)
    scores_A = jnp.asarray(scores_A, dtype)
    logpi = jax.nn.log_softmax(logits_A)
    pi = jnp.exp(logpi)
    logref = jax.nn.log_softmax(jnp.asarray(ref_logits_A, dtype))
    ref = jnp.exp(logref)

    def select():
        by = spec.selection({} if select_by is None else {"select_by": select_by})
        return rewards_A if by == "reward" else scores_A

    def need_expert():
        if expert_probs_A is None:
            raise ValueError(
                f"exact.objective({name!r}) needs expert_probs_A (the demonstration distribution)"
            )
        return jnp.asarray(expert_probs_A, dtype)

    def expect_logpi(probs, log_probs):
        return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0))

    if spec.binary_reward:
        if not isinstance(rewards_A, jax.core.Tracer) and not np.all(np.isin(np.asarray(rewards_A), [0, 1])):
            raise ValueError(f"exact.objective({name!r}) needs binary rewards")
        p_fail = jnp.sum(pi * (1.0 - rewards_A))
        j = 1.0 - p_fail**n
    elif name in ("bon_rl", "bon_rl_v", "bon_rl_s"):
        j = bon_reward(pi, rewards_A, select(), n)
    elif name in ("kl_rl", "grpo", "dr_grpo"):  # grpo's J, the one it ascends; its estimator is biased
        j = jnp.sum(pi * rewards_A)
    elif name == "sft":
        j = expect_logpi(need_expert(), logpi)
    elif name == "bon_sft":
        cdf, _ = bon.bon_cdfs(pi, scores_A)  # Q_pi(y) = P_{y'~pi}(s(y) >= s(y')), depends on theta
        tilt = bon.bon_lambda(n) if lam is None else lam
        log_tw = jax.nn.log_softmax(logpi + tilt * cdf)
        j = expect_logpi(need_expert(), log_tw)
    elif name == "bon_distill_sft":
        target = bon.bon_distribution(ref, select(), n)
        j = expect_logpi(target, logpi)
    elif name in ("vbon", "vbon_bound", "bond"):
        sel = select()
        cdf, cdf_lt = bon.bon_cdfs(ref, sel)
        if name == "vbon_bound":
            j = jnp.log(float(n)) + (n - 1) * jnp.sum(pi * jnp.log(cdf)) - beta * kl(pi, logpi, logref)
        else:
            log_g = bon.log_bon_weight(cdf, cdf_lt, n)
            backward = jnp.sum(pi * log_g) - beta * kl(pi, logpi, logref)
            if name == "vbon":
                j = backward
            else:
                target = bon.bon_distribution(ref, sel, n)
                log_target = jnp.log(jnp.where(target > 0, target, 1.0))
                j = -(1.0 - b) * kl(target, log_target, logpi) + b * backward
        beta = 0.0  # already included
    else:  # pragma: no cover - every registered name is handled above
        raise NotImplementedError(name)

    if not _is_zero(beta):
        j = j - beta * kl(pi, logpi, logref)
    if not _is_zero(anchor_coef):
        if anchor_logits_A is None:
            raise ValueError("anchor_coef != 0 needs anchor_logits_A")
        loganchor = jax.nn.log_softmax(jnp.asarray(anchor_logits_A, dtype))
        j = j - anchor_coef * kl(pi, logpi, loganchor)
    return j
