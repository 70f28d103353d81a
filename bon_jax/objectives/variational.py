"""Variational Best-of-N (Amini et al. 2025) and BOND's Jeffreys divergence (Sessa et al. 2024).

The target is pi_BoN(pi_ref, r, N) -- Best-of-N of the frozen REFERENCE policy, selecting by r (the reward by
default, Amini et al.'s reward model; select_by="score" selects by the verifier score). Exactly (docs/maths.md
section 1) pi_BoN(y) = pi_ref(y) G(y) with G(y) = (F^N - F_^N)/(F - F_) at y's level, F(r) = P_ref(r' <= r),
F_(r) = P_ref(r' < r). Hence

    -KL(pi || pi_BoN) = E_pi[log G(y)] - KL(pi || pi_ref),

KL-regularised RL with beta = 1 and the reward log G, which depends on y only through the quantile of its
reward under pi_ref. F and F_ are estimated from the K reference samples of each prompt with add-one
smoothing F = (k_le + 1)/(K + 1), F_ = k_lt/(K + 1) (the sample counts as one more draw at its own reward:
F - F_ >= 1/(K+1) so log G is finite), or passed exactly (options ref_cdf_BM, ref_cdf_lt_BM).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from bon_jax import bon
from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register

__all__ = ["MAX_LOG_G_BIAS", "log_g_bias", "min_ref_samples"]

# The target is Best-of-N of pi_ref: CDFs from K reference samples per prompt, selecting by the reward.
_CDF_SPEC = ObjectiveSpec(selects_by="reward", select_option=True, reference_samples=True, default_beta=1.0)

# Largest accepted bias of E_ref[log G-hat] (nats), see `log_g_bias`; `min_ref_samples` turns it into a K.
MAX_LOG_G_BIAS = 0.1


def log_g_bias(k: int, n: int) -> float:
    """Bias E[log G-hat(y)] - E[log G(y)], y ~ pi_ref, of the add-one-smoothed estimate from K = `k` samples.

    For a continuous reward the rank of y's reward among K iid reference rewards, k_lt, is uniform on
    {0, ..., K}, so with F = (k_lt + 1)/(K + 1), F_ = k_lt/(K + 1):
        E[log G-hat] = (1/(K+1)) sum_{j=0..K} log(((j+1)^N - j^N) / (K+1)^(N-1)),
    while log G = log N + (N-1) log U, U ~ Uniform(0, 1), has mean log N - (N - 1). The bias is positive
    (log G-hat is floored at the lowest rank, where log G -> -inf) and grows with N and shrinks like 1/K:
    0.20 nats at K = 32, N = 8; 0.56 at K = 32, N = 16; 0.06 at K = 300, N = 16 (docs/objectives.md,
    "How many reference samples").
    """
    if k < 1 or n < 1:
        raise ValueError(f"log_g_bias needs k >= 1 and n >= 1, got k={k}, n={n}")
    total = 0.0
    for j in range(k + 1):
        # log((j+1)^N - j^N) = N log(j+1) + log(1 - (j/(j+1))^N)
        total += n * math.log(j + 1) + (math.log1p(-((j / (j + 1)) ** n)) if j else 0.0)
    estimated = total / (k + 1) - (n - 1) * math.log(k + 1)
    return estimated - (math.log(n) - (n - 1))


def min_ref_samples(n: int, max_bias: float = MAX_LOG_G_BIAS) -> int:
    """The smallest K with `log_g_bias(K, n) <= max_bias` (1 for N = 1, where G = 1)."""
    if log_g_bias(1, n) <= max_bias:
        return 1
    lo, hi = 1, 2
    while log_g_bias(hi, n) > max_bias:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the bias decreases in K
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if log_g_bias(mid, n) > max_bias else (lo, mid)
    return hi


def _cdf_needs(name, select_by, ref_cdf_BM, ref_cdf_lt_BM, cdf_smoothing):
    """Rollout fields the CDF inputs need; argument errors raised before any compute."""
    if select_by not in ("reward", "score"):
        raise ValueError(f"{name}: select_by must be 'reward' or 'score', got {select_by!r}")
    if (ref_cdf_BM is None) != (ref_cdf_lt_BM is None):
        raise ValueError(f"{name}: pass both ref_cdf_BM and ref_cdf_lt_BM, or neither")
    need = () if select_by == "reward" else ("scores_BM",)
    if ref_cdf_BM is None:
        if not cdf_smoothing > 0:
            raise ValueError(f"{name}: cdf_smoothing must be > 0 (keeps log F finite), got {cdf_smoothing!r}")
        need += ("ref_rewards_BK",) if select_by == "reward" else ("ref_scores_BK",)
    return need


def _cdfs(name, p: C.Prepared, rollout, *, select_by, ref_cdf_BM, ref_cdf_lt_BM, cdf_smoothing):
    """(F_BM, F_lt_BM, n_bad): CDFs under pi_ref of each sample's selection value."""
    if select_by == "reward":
        sel, ref_field = p.rewards, "ref_rewards_BK"
    elif select_by == "score":
        if p.scores is None:
            raise ValueError(f"objective {name!r} with select_by='score' needs rollout.scores_BM")
        sel, ref_field = p.scores, "ref_scores_BK"
    else:
        raise ValueError(f"{name}: select_by must be 'reward' or 'score', got {select_by!r}")
    if (ref_cdf_BM is None) != (ref_cdf_lt_BM is None):
        raise ValueError(f"{name}: pass both ref_cdf_BM and ref_cdf_lt_BM, or neither")
    if ref_cdf_BM is not None:
        f = jnp.asarray(ref_cdf_BM, C.F32)
        f_lt = jnp.asarray(ref_cdf_lt_BM, C.F32)
        if f.shape != p.logp.shape or f_lt.shape != p.logp.shape:
            raise ValueError(f"{name}: ref_cdf_BM and ref_cdf_lt_BM must be [B, M] = {p.logp.shape}")
        # CDFs summed in float32 may exceed 1 or each other by rounding: tolerate 1e-5, then clip.
        tol = 1e-5
        ok = (f > 0) & (f <= 1 + tol) & (f_lt >= -tol) & (f_lt <= f + tol)
        n_bad = jnp.sum(p.mask & ~ok).astype(jnp.int32)
        f = jnp.where(p.mask & ok, jnp.minimum(f, 1.0), 1.0)
        f_lt = jnp.where(p.mask & ok, jnp.clip(f_lt, 0.0, f), 0.0)
        return f, f_lt, n_bad
    if not cdf_smoothing > 0:
        raise ValueError(f"{name}: cdf_smoothing must be > 0 (keeps log F finite), got {cdf_smoothing!r}")
    ref, ref_mask, n_bad = C.clean_ref(name, rollout, ref_field)
    f, f_lt = bon.empirical_cdfs(ref, sel, smoothing=cdf_smoothing, ref_mask_BK=ref_mask)
    return f.astype(C.F32), f_lt.astype(C.F32), n_bad


_CDF_DOC = """
    CDF options: select_by "reward" (default: rollout.rewards_BM against rollout.ref_rewards_BK) or "score"
    (scores_BM against ref_scores_BK); ref_mask_BK optional; cdf_smoothing a > 0 (default 1: add-one,
    F = (k_le + a)/(K + a), F_ = k_lt/(K + a)); or exact CDFs ref_cdf_BM = F(r_j), ref_cdf_lt_BM = F_(r_j)
    under pi_ref ([B, M] each), which replace the reference samples.
"""


def _prepare_with_cdfs(
    name, logp_BM, rollout, *, n, beta, anchor_coef, select_by, ref_cdf_BM, ref_cdf_lt_BM, cdf_smoothing
):
    """The setup vbon, vbon_bound and bond share: checked inputs `p` and each sample's (F, F_) under pi_ref."""
    need = _cdf_needs(name, select_by, ref_cdf_BM, ref_cdf_lt_BM, cdf_smoothing)
    p = C.prepare(name, logp_BM, rollout, need=need, n=n, beta=beta, anchor_coef=anchor_coef)
    f, f_lt, n_bad = _cdfs(
        name,
        p,
        rollout,
        select_by=select_by,
        ref_cdf_BM=ref_cdf_BM,
        ref_cdf_lt_BM=ref_cdf_lt_BM,
        cdf_smoothing=cdf_smoothing,
    )
    return p, f, f_lt, n_bad


@register("vbon", _CDF_SPEC)
def vbon(
    logp_BM,
    rollout,
    *,
    n,
    beta=1.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    select_by="reward",
    ref_cdf_BM=None,
    ref_cdf_lt_BM=None,
    cdf_smoothing=1.0,
    clip_eps=None,
):
    name = "vbon"
    C.check_unused(name, expert_logp_B)
    p, f, f_lt, n_bad = _prepare_with_cdfs(
        name,
        logp_BM,
        rollout,
        n=n,
        beta=beta,
        anchor_coef=anchor_coef,
        select_by=select_by,
        ref_cdf_BM=ref_cdf_BM,
        ref_cdf_lt_BM=ref_cdf_lt_BM,
        cdf_smoothing=cdf_smoothing,
    )
    log_g = jnp.where(p.mask, bon.log_bon_weight(f, f_lt, n), 0.0)
    w = C.rloo_weights(log_g, p)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics["log_g_mean"] = C.masked_mean(log_g, p.mask)
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    if "kl_ref" in metrics:
        metrics["kl_to_bon"] = metrics["kl_ref"] - metrics["log_g_mean"]
    return C.finish(per, w, p, metrics, n_bad=p.n_bad + n_bad)


vbon.__doc__ = (
    """vBoN, Amini et al. 2025 (arXiv 2407.06057): backward KL to Best-of-N of the reference.

    J = E_pi[log G(y)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor); at beta = 1 (default)
    J = -KL(pi || pi_BoN(pi_ref, r, N)) exactly (module docstring). Other beta: the same reward, more or
    less KL.
    Estimator: RLOO on the shaped reward log G_j - beta (log pi - log pi_ref)(y_j) (see kl_rl) -- Amini et al.
    optimise the same J with PPO, available through clip_eps and rollout.old_logp_BM.
    **Unbiased with exact CDFs**; with CDFs estimated from K reference samples it is unbiased for the J in
    which log G is replaced by E[log G^] (log of a smoothed empirical quantity: biased by O(1/K)).
    Inputs: rollout.rewards_BM (or scores_BM), ref_rewards_BK (or ref_scores_BK, or exact CDFs), ref_logp_BM
    (if beta != 0), mask_BM optional. Metrics: log_g_mean, kl_ref, kl_to_bon (= kl_ref - log_g_mean).
"""
    + _CDF_DOC
)


@register("vbon_bound", _CDF_SPEC)
def vbon_bound(
    logp_BM,
    rollout,
    *,
    n,
    beta=1.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    select_by="reward",
    ref_cdf_BM=None,
    ref_cdf_lt_BM=None,
    cdf_smoothing=1.0,
    clip_eps=None,
):
    name = "vbon_bound"
    C.check_unused(name, expert_logp_B)
    p, f, f_lt, n_bad = _prepare_with_cdfs(
        name,
        logp_BM,
        rollout,
        n=n,
        beta=beta,
        anchor_coef=anchor_coef,
        select_by=select_by,
        ref_cdf_BM=ref_cdf_BM,
        ref_cdf_lt_BM=ref_cdf_lt_BM,
        cdf_smoothing=cdf_smoothing,
    )
    log_f = jnp.where(p.mask, jnp.log(f), 0.0)
    w = C.rloo_weights((n - 1) * log_f, p)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics["log_f_mean"] = C.masked_mean(log_f, p.mask)
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    bound = jnp.log(float(n)) + (n - 1) * metrics["log_f_mean"]
    if "kl_ref" in metrics:
        bound = bound - beta * metrics["kl_ref"]
    metrics["bound"] = bound
    return C.finish(per, w, p, metrics, n_bad=p.n_bad + n_bad)


vbon_bound.__doc__ = (
    """vBoN's lower bound, Amini et al. 2025 (the objective they optimise with PPO).

    J = log N + (N - 1) E_pi[log F(r(y))] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor),
    beta = 1 by default: the paper's L, i.e. (N - 1) x [reward log F with KL coefficient 1/(N - 1)] + log N.
    In the continuous limit log G = log N + (N - 1) log F and L = -KL(pi || pi_BoN); on a finite outcome
    space log N + (N-1) log F_ <= log G <= log N + (N-1) log F, so with F (not F_) L is an UPPER bound of
    vbon's J there, tight as the reward becomes continuous (tested).
    Estimator: RLOO on (N - 1) log F_j - beta (log pi - log pi_ref)(y_j). **Unbiased for this J with exact
    CDFs** (estimated CDFs: as vbon). It is not an unbiased gradient of vbon's J.
    Inputs: as vbon. Metrics: log_f_mean, bound (the estimate of J without the anchor term), kl_ref.
"""
    + _CDF_DOC
)


@register("bond", dataclasses.replace(_CDF_SPEC, demonstrations="bon_of_reference"))
def bond(
    logp_BM,
    rollout,
    *,
    n,
    beta=1.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    b=0.5,
    select_by="reward",
    ref_cdf_BM=None,
    ref_cdf_lt_BM=None,
    cdf_smoothing=1.0,
    clip_eps=None,
):
    name = "bond"
    expert = C.check_expert(name, expert_logp_B, jnp.shape(logp_BM)[0], rollout)
    if not 0.0 <= b <= 1.0:
        raise ValueError(f"{name}: b must be in [0, 1], got {b!r}")
    p, f, f_lt, n_bad = _prepare_with_cdfs(
        name,
        logp_BM,
        rollout,
        n=n,
        beta=beta,
        anchor_coef=anchor_coef,
        select_by=select_by,
        ref_cdf_BM=ref_cdf_BM,
        ref_cdf_lt_BM=ref_cdf_lt_BM,
        cdf_smoothing=cdf_smoothing,
    )
    log_g = jnp.where(p.mask, bon.log_bon_weight(f, f_lt, n), 0.0)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=0.0)
    w = b * (C.rloo_weights(log_g, p) + w_kl)
    if not C.is_zero(anchor_coef):
        w_anchor, m_anchor = C.kl_regulariser(name, p, beta=0.0, anchor_coef=anchor_coef)
        w = w + w_anchor
        metrics.update(m_anchor)
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    per = per - (1.0 - b) * expert
    metrics.update(extra)
    metrics["log_g_mean"] = C.masked_mean(log_g, p.mask)
    metrics["expert_logp_mean"] = jnp.mean(expert)
    if "kl_ref" in metrics:
        metrics["kl_to_bon"] = metrics["kl_ref"] - metrics["log_g_mean"]
    return C.finish(per, w, p, metrics, n_bad=p.n_bad + n_bad)


bond.__doc__ = (
    """BOND, Sessa et al. 2024: Jeffreys divergence to BoN of the reference (b = 0.5).

    J = -(1 - b) KL(pi_BoN || pi) + b [E_pi[log G] - beta KL(pi || pi_ref)] - anchor_coef KL(pi || anchor);
    at beta = 1 (default) the bracket is -KL(pi || pi_BoN), so J = -Jeffreys_b(pi_BoN, pi).
    Estimator: forward part (1 - b) grad log pi(y_BoN) -- SFT on a Best-of-N sample of the reference,
    whose log-prob under pi the trainer passes as `expert_logp_B` (one per prompt, carrying gradients,
    selected by the same select_by); backward part b x the vbon estimator on the rollout's samples of pi.
    **Unbiased with exact CDFs and exact BoN samples.** J-BOND (Sessa et al.): N = 2 with the reference
    replaced by an EMA anchor of the policy (rate 0.02, `regularizers.ema_update`): the trainer passes the
    anchor's log-probs as ref_logp_BM and draws the reference samples from the anchor.
    Inputs: expert_logp_B, rollout.rewards_BM (or scores_BM), ref_rewards_BK (or ref_scores_BK, or exact
    CDFs), ref_logp_BM (if beta != 0). Options: b, and those of vbon.
"""
    + _CDF_DOC
)
