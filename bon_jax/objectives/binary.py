"""Binary-reward, pass@N-aware objectives: J = 1 - p(x)^N with p(x) = P_pi(R = 0 | x) (pass@N).

Chow et al. Lemma 3 (`bon_rlb`, corrected sign; `bon_rlb_printed`, the sign as printed), Corollary 4
(`bon_rlbp`), and Walder & Karkhanis (2025) unbiased pass@k gradients (`pkpo`).

The exact gradient: grad J = -N p^(N-1) grad p = N p^(N-1) E_pi[1{R=1} grad log pi]. With the BoN
distribution of Chow Eq. 8 (selection by R: pi_bon = pi p^(N-1) on failures, pi (1-p^N)/(1-p) on successes),
and X = E_pi[1{R=1} grad log pi] = -E_pi[1{R=0} grad log pi]:
    E_{pi_bon}[1{R=1} grad log pi] g+_N - E_{pi_bon}[1{R=0} grad log pi] g-
        = N p^(N-1) X / (1-p) + N p^N X / (1-p) = (1+p)/(1-p) * grad J     (Lemma 3 as printed)
    E_{pi_bon}[1{R=1} grad log pi] g+_N + E_{pi_bon}[1{R=0} grad log pi] g-  = grad J    (sign corrected)
with g+_N(p) = N p^(N-1)/(1 - p^N), g-(p) = N p/(1-p); and Corollary 4's positives-only weight
g+(p) = N p^(N-1) (1-p)/(1-p^N) gives E_{pi_bon}[1{R=1} grad log pi] g+ = grad J.

Samples from pi_bon: the rollout holds M >= N iid samples of pi; every N-subset's BoN winner (selection by R,
ties uniform) is used through the weights u_j = P(j wins a random N-subset), so sum_j u_j h(y_j) is unbiased
for E_{pi_bon}[h] (`weights.bon_winner_weights`). The weights g(p) need p: exact with the true p (option
`p_B`); with p estimated from the same samples (default: leave-one-out, clipped to [0.01, 0.99] as in
Chow App. B) the plug-in is biased because g is nonlinear in p. `pkpo` is the unbiased alternative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register
from bon_jax.objectives.weights import bon_winner_weights, pass_at_k, pass_at_k_weights

# Every objective here selects by the (binary) reward itself.
_BINARY_SPEC = ObjectiveSpec(selects_by="reward", binary_reward=True, needs_n_samples=True)


def _check_p_options(name, p_estimate, p_clip, weight_clip):
    if weight_clip is not None and not weight_clip > 0:
        raise ValueError(f"{name}: weight_clip must be > 0 or None, got {weight_clip!r}")
    if p_clip is None or len(p_clip) != 2 or not 0.0 < p_clip[0] <= p_clip[1] < 1.0:
        raise ValueError(f"{name}: p_clip must be (lo, hi) with 0 < lo <= hi < 1, got {p_clip!r}")
    if p_estimate not in ("loo", "all"):
        raise ValueError(f"{name}: p_estimate must be 'loo' or 'all', got {p_estimate!r}")


def _failure_rate(name, p: C.Prepared, *, p_B, p_estimate, p_clip):
    """[B, M] p used for sample j: the given p_B, or the leave-one-out (or all-sample) estimate; clipped."""
    fail = jnp.where(p.mask, 1.0 - p.rewards, 0.0)
    if p_B is not None:
        p_B = jnp.asarray(p_B, C.F32)
        if p_B.shape not in ((), (p.logp.shape[0],)):
            raise ValueError(f"{name}: p_B must be a scalar or [B={p.logp.shape[0]}], got shape {p_B.shape}")
        est = jnp.broadcast_to(jnp.reshape(p_B, (-1, 1)) if p_B.ndim else p_B, p.logp.shape)
    elif p_estimate == "loo":
        # The failure rate of the OTHER valid samples; 0.5 (uninformative) when there is none.
        est = jnp.where(p.m > 1, C.loo_mean(fail, p.mask, p.m), 0.5)
    else:  # "all" (checked by _check_p_options)
        est = jnp.broadcast_to(jnp.sum(fail, -1, keepdims=True) / jnp.maximum(p.m, 1.0), p.logp.shape)
    return jax.lax.stop_gradient(jnp.clip(est, p_clip[0], p_clip[1]))


def _one_minus_pow(p, n):
    return -jnp.expm1(n * jnp.log(p))  # 1 - p^n, p in (0, 1)


def _clip_weights(name, w, weight_clip):
    """Optional |w| <= weight_clip (biased; tames the g- = N p/(1-p) weights near the p clip bound)."""
    if weight_clip is None:
        return w
    return jnp.clip(w, -weight_clip, weight_clip)


def _lemma3(
    name, logp_BM, rollout, *, n, beta, anchor_coef, sign, p_B, p_estimate, p_clip, clip_eps, weight_clip
):
    _check_p_options(name, p_estimate, p_clip, weight_clip)
    p = C.prepare(name, logp_BM, rollout, n=n, min_samples=n, binary=True, beta=beta, anchor_coef=anchor_coef)
    q = _failure_rate(name, p, p_B=p_B, p_estimate=p_estimate, p_clip=p_clip)
    u = bon_winner_weights(p.rewards, p.mask, n)
    g_pos = n * q ** (n - 1) / _one_minus_pow(q, n)
    g_neg = n * q / (1.0 - q)
    w = _clip_weights(name, u * jnp.where(p.rewards > 0.5, g_pos, sign * g_neg), weight_clip)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics.update(_pass_metrics(p, q, n))
    return C.finish(per, w, p, metrics)


def _pass_metrics(p: C.Prepared, q, n):
    m = jnp.sum(p.mask, -1).astype(jnp.int32)
    c = jnp.sum(jnp.where(p.mask, p.rewards, 0.0), -1).astype(jnp.int32)
    has = m >= n
    size = p.logp.shape[1]
    pass_n = jnp.where(has, pass_at_k(m, c, n, size), 0.0)
    return {
        "p_mean": C.masked_mean(q, p.mask),
        "pass_at_n": jnp.sum(pass_n) / jnp.maximum(jnp.sum(has), 1),
        "pass_at_1": C.masked_mean(p.rewards, p.mask),
    }


_OPTIONS_DOC = """
    Inputs: rollout.rewards_BM in {0, 1} (mask_BM optional); M >= N; ref_logp_BM if beta != 0;
    anchor_logp_BM if anchor_coef != 0. Options: p_B (known failure rate, scalar or [B]); p_estimate "loo"
    (default: failure rate of the other samples) | "all"; p_clip (default (0.01, 0.99), Chow App. B);
    clip_eps (PPO); weight_clip (|per-sample weight| <= weight_clip before the KL terms; None, the default,
    keeps the estimator as stated -- clipping biases it). Metrics: p_mean, pass_at_n (unbiased), pass_at_1.
"""


def _lemma3_objective(name: str, sign: float):
    """The registered objective `name`: Lemma 3's estimator with `sign` on its negative term."""

    def objective(
        logp_BM,
        rollout,
        *,
        n,
        beta=0.0,
        expert_logp_B=None,
        anchor_coef=0.0,
        p_B=None,
        p_estimate="loo",
        p_clip=(0.01, 0.99),
        clip_eps=None,
        weight_clip=None,
    ):
        C.check_unused(name, expert_logp_B)
        return _lemma3(
            name,
            logp_BM,
            rollout,
            n=n,
            beta=beta,
            anchor_coef=anchor_coef,
            sign=sign,
            p_B=p_B,
            p_estimate=p_estimate,
            p_clip=p_clip,
            clip_eps=clip_eps,
            weight_clip=weight_clip,
        )

    objective.__name__ = objective.__qualname__ = name
    return register(name, _BINARY_SPEC)(objective)


bon_rlb = _lemma3_objective("bon_rlb", sign=1.0)
bon_rlb.__doc__ = (
    """BoN-RLB, Chow et al. Lemma 3 with the sign of the negative term corrected (exact).

    J = 1 - p^N (pass@N of pi, binary R as the BoN selector) - beta KL(pi||pi_ref)
        - anchor_coef KL(pi||anchor).
    Estimator: E_{pi_bon}[1{R=1} grad log pi] g+_N(p) + E_{pi_bon}[1{R=0} grad log pi] g-(p), with
    g+_N = N p^(N-1)/(1-p^N), g- = N p/(1-p), BoN samples from all N-subsets of the M samples (module doc).
    **Unbiased with the true p** (`p_B`); with p estimated (leave-one-out, clipped) biased but consistent.
    The paper prints a MINUS sign on the negative term (`bon_rlb_printed`), which is (1+p)/(1-p) x grad J.
"""
    + _OPTIONS_DOC
)


bon_rlb_printed = _lemma3_objective("bon_rlb_printed", sign=-1.0)
bon_rlb_printed.__doc__ = (
    """Chow et al. Lemma 3 exactly as printed (MINUS sign on the negative term). For comparison.

    J = 1 - p^N (- KL terms as in bon_rlb). Estimator: E_{pi_bon}[1{R=1} grad log pi] g+_N(p)
    - E_{pi_bon}[1{R=0} grad log pi] g-(p). **Not unbiased**: with the true p its expectation is
    (1+p)/(1-p) x grad(1 - p^N) -- the right direction for one prompt, over-weighting hard prompts (large p)
    relative to easy ones when averaged over prompts. The KL terms, if any, are unbiased.
"""
    + _OPTIONS_DOC
)


@register("bon_rlbp", _BINARY_SPEC)
def bon_rlbp(
    logp_BM,
    rollout,
    *,
    n,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    p_B=None,
    p_estimate="loo",
    p_clip=(0.01, 0.99),
    clip_eps=None,
    weight_clip=None,
):
    """BoN-RLBP, Chow et al. Corollary 4: positive BoN samples only.

    J = 1 - p^N - beta KL(pi||pi_ref) - anchor_coef KL(pi||anchor).
    Estimator: E_{pi_bon}[1{R=1} grad log pi] g+(p), g+ = N p^(N-1) (1-p)/(1-p^N), on the BoN winners of
    all N-subsets of the M samples. **Unbiased with the true p** (`p_B`); biased (consistent) with p
    estimated leave-one-out and clipped.
    """
    name = "bon_rlbp"
    C.check_unused(name, expert_logp_B)
    _check_p_options(name, p_estimate, p_clip, weight_clip)
    p = C.prepare(name, logp_BM, rollout, n=n, min_samples=n, binary=True, beta=beta, anchor_coef=anchor_coef)
    q = _failure_rate(name, p, p_B=p_B, p_estimate=p_estimate, p_clip=p_clip)
    u = bon_winner_weights(p.rewards, p.mask, n)
    # (1 - p)/(1 - p^N) = 1 / sum_{i<N} p^i, stable for p near 1.
    g_pos = n * q ** (n - 1) / jnp.sum(q[..., None] ** jnp.arange(n, dtype=C.F32), axis=-1)
    w = _clip_weights(name, u * jnp.where(p.rewards > 0.5, g_pos, 0.0), weight_clip)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics.update(_pass_metrics(p, q, n))
    return C.finish(per, w, p, metrics)


bon_rlbp.__doc__ += _OPTIONS_DOC


@register("pkpo", _BINARY_SPEC)
def pkpo(logp_BM, rollout, *, n, beta=0.0, expert_logp_B=None, anchor_coef=0.0, clip_eps=None):
    """Unbiased pass@k policy gradient, k = N (Walder & Karkhanis 2025, "Pass@K Policy Optimization").

    J = pass@N = 1 - p^N - beta KL(pi||pi_ref) - anchor_coef KL(pi||anchor), binary R.
    Estimator: with M >= N samples, c correct, rho(M, c, k) = 1 - C(M-c, k)/C(M, k): correct samples get
    (k/M)(1 - b_j), incorrect ones (k/M)(rho(M-1, c, k-1) - b_j), with the leave-one-out baseline
    b_j = rho(M-1, c_-j, k) (M > k) or the others' mean reward (M = k). **Unbiased** for every M >= N.
    It equals `bon_rl` with s = R for binary R (computed here in O(M) from the counts); the unbiased
    counterpart of bon_rl_s and bon_rlbp.

    Inputs: rollout.rewards_BM in {0, 1} (mask_BM optional); ref_logp_BM if beta != 0; anchor_logp_BM if
    anchor_coef != 0. Options: clip_eps (PPO). Metrics: pass_at_n (unbiased), pass_at_1.
    """
    name = "pkpo"
    C.check_unused(name, expert_logp_B)
    p = C.prepare(name, logp_BM, rollout, n=n, min_samples=n, binary=True, beta=beta, anchor_coef=anchor_coef)
    w, _, _ = pass_at_k_weights(p.rewards, p.mask, n)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    pm = _pass_metrics(p, jnp.zeros_like(p.rewards), n)
    metrics["pass_at_n"], metrics["pass_at_1"] = pm["pass_at_n"], pm["pass_at_1"]
    return C.finish(per, w, p, metrics)
