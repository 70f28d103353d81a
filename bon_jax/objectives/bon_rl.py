"""RL through Best-of-N: J = E_x E_{y ~ pi_BoN(pi, s, N)}[R(x, y)] (Chow et al. 2025, Lemma 2).

`bon_rl` is the exact (unbiased) U-statistic estimator; `bon_rl_v` and `bon_rl_s` are the paper's estimator
as printed (BoN-RL-V: select by the verifier; BoN-RL-S: select by the reward itself, i.e. pass@N for a
binary reward), which updates only the selected sample and is biased.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register
from bon_jax.objectives.weights import bon_rl_weights, bon_winner_weights


@register("bon_rl", ObjectiveSpec(selects_by="score", needs_n_samples=True))
def bon_rl(
    logp_BM, rollout, *, n, beta=0.0, expert_logp_B=None, anchor_coef=0.0, baseline="loo", clip_eps=None
):
    """Unbiased gradient of the Best-of-N reward (beyond the papers; docs/maths.md section 3, bon_rl).

    J = E_{y ~ pi_BoN(pi, s, N)}[R(y)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor),
    pi_BoN selecting by the verifier score s with uniform tie-breaking.

    Estimator: since J_BoN = E_{y_1..y_N iid pi}[R(y*)], grad J_BoN = E[R(y*) sum_i grad log pi(y_i)]. With
    M >= N samples per prompt every sample gets w_j = (N/M) (A_j - b_j), A_j the mean of R(best of S) over
    the N-subsets S of the M samples that contain j (ties: the mean reward of the tied top), b_j the mean of
    R(best of S) over the N-subsets of the other M-1 samples (M > N) or the others' mean reward (M = N).
    Computed exactly in O(M^2) per prompt (`weights.bon_rl_weights`). The KL terms use RLOO weights.
    **Unbiased** for every M >= N (masked samples: the estimate over the valid ones, if the mask does not
    depend on the samples' values; prompts with fewer than N valid samples contribute 0).

    Inputs: rollout.rewards_BM, scores_BM (mask_BM optional); ref_logp_BM if beta != 0; anchor_logp_BM if
    anchor_coef != 0. Options: baseline "loo" | "none"; clip_eps (PPO, with rollout.old_logp_BM).
    Metrics: bon_reward (unbiased BoN@N estimate of E_{pi_BoN}[R]), reward_mean, kl_ref, ...
    """
    name = "bon_rl"
    C.check_unused(name, expert_logp_B)
    p = C.prepare(
        name, logp_BM, rollout, need=("scores_BM",), n=n, min_samples=n, beta=beta, anchor_coef=anchor_coef
    )
    w, _, _ = bon_rl_weights(p.scores, p.rewards, p.mask, n, baseline=baseline)
    u = bon_winner_weights(p.scores, p.mask, n)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics["bon_reward"] = jnp.mean(jnp.sum(u * p.rewards, axis=-1))
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    return C.finish(per, w, p, metrics)


def _printed(name, logp_BM, rollout, *, n, beta, anchor_coef, select_by_reward, values_B, baseline, clip_eps):
    need = () if select_by_reward else ("scores_BM",)
    p = C.prepare(name, logp_BM, rollout, need=need, n=n, min_samples=n, beta=beta, anchor_coef=anchor_coef)
    sel = p.rewards if select_by_reward else p.scores
    u = bon_winner_weights(sel, p.mask, n)
    bon_reward_B = jnp.sum(u * p.rewards, axis=-1)
    batch = p.logp.shape[0]
    if values_B is not None:
        values_B = jnp.asarray(values_B, C.F32)
        if values_B.shape != (batch,):
            raise ValueError(f"{name}: values_B must be [B={batch}], got shape {values_B.shape}")
        b = jax.lax.stop_gradient(values_B)
    elif baseline == "batch":
        has = (jnp.sum(p.mask, axis=-1) >= n).astype(C.F32)
        total, count = jnp.sum(has * bon_reward_B), jnp.sum(has)
        b = jnp.where(count - has > 0, (total - has * bon_reward_B) / jnp.maximum(count - has, 1.0), 0.0)
    elif baseline == "none":
        b = jnp.zeros((batch,), C.F32)
    else:
        raise ValueError(f"{name}: baseline must be 'batch' or 'none' (or pass values_B), got {baseline!r}")
    w = u * (p.rewards - b[:, None])
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics["bon_reward"] = jnp.mean(bon_reward_B)
    metrics["baseline_mean"] = jnp.mean(b)
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    return C.finish(per, w, p, metrics)


_PRINTED_DOC = """

    Estimator as printed: draw N samples, select y* (the highest {sel}, ties uniformly at random), update
    grad log pi(y*) (R(y*) - b(x)). Here every N-subset of the M >= N samples is used and the tie-break is
    averaged: sample j gets w_j = u_j (R_j - b) with u_j = P(j wins a random N-subset) (`bon_winner_weights`),
    which has exactly the printed single-draw estimator's expectation with lower variance.
    Baseline b(x): `values_B` (a learned value, [B], stop-gradient) if given; else baseline="batch" (default:
    the mean BoN reward estimate of the OTHER prompts of the batch) or "none".

    **Biased.** Its expectation (for a b independent of the prompt's samples) is
        E_{{y ~ pi_BoN}}[(R(y) - b) grad log pi(y)],
    while grad J = E_{{y ~ pi_BoN}}[R(y) grad log pi_BoN(y)]: it drops the grad log G(y) part of
    grad log pi_BoN = grad log pi + grad log G (Chow's lambda_N grad Q - grad log Z), and since
    E_{{pi_BoN}}[grad log pi] != 0 even the baseline shifts it. Exact for N = 1. Measured (exact
    expectations, 60 random bandits, N in {{2, 8}}): with b = the BoN value (what values_B learns) the
    cosine with grad J was >= 0.78 (V) / 0.55 (S); with b = 0 BoN-RL-V pointed away from grad J on up to 18%
    of bandits. For binary R, BoN-RL-S with b = 0 is parallel to grad pass@N, scaled by
    sum_{{i<N}} p^i / (N p^(N-1)) >= 1. See docs/objectives.md.

    Inputs: rollout.rewards_BM{need}; ref_logp_BM if beta != 0; anchor_logp_BM if anchor_coef != 0.
    Options: values_B, baseline, clip_eps (PPO, with rollout.old_logp_BM). Metrics: bon_reward, baseline_mean.
"""


@register(
    "bon_rl_v", ObjectiveSpec(selects_by="score", needs_n_samples=True, value_baseline=True, winners_only=True)
)
def bon_rl_v(
    logp_BM,
    rollout,
    *,
    n,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    values_B=None,
    baseline="batch",
    clip_eps=None,
):
    C.check_unused("bon_rl_v", expert_logp_B)
    return _printed(
        "bon_rl_v",
        logp_BM,
        rollout,
        n=n,
        beta=beta,
        anchor_coef=anchor_coef,
        select_by_reward=False,
        values_B=values_B,
        baseline=baseline,
        clip_eps=clip_eps,
    )


_V_HEAD = """BoN-RL-V, Chow et al. Lemma 2, estimator as printed: BoN selects by the verifier score s.

    J = E_{y ~ pi_BoN(pi, s, N)}[R(y)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor)."""
bon_rl_v.__doc__ = _V_HEAD + _PRINTED_DOC.format(sel="verifier score s", need=", scores_BM")


@register(
    "bon_rl_s", ObjectiveSpec(selects_by="reward", needs_n_samples=True, value_baseline=True, winners_only=True)
)
def bon_rl_s(
    logp_BM,
    rollout,
    *,
    n,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    values_B=None,
    baseline="batch",
    clip_eps=None,
):
    C.check_unused("bon_rl_s", expert_logp_B)
    return _printed(
        "bon_rl_s",
        logp_BM,
        rollout,
        n=n,
        beta=beta,
        anchor_coef=anchor_coef,
        select_by_reward=True,
        values_B=values_B,
        baseline=baseline,
        clip_eps=clip_eps,
    )


_S_HEAD = """BoN-RL-S, Chow et al. Lemma 2, estimator as printed: BoN selects by the reward itself (s = R).

    J = E_{y ~ pi_BoN(pi, R, N)}[R(y)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor)
    (= pass@N for a binary R). Its unbiased counterpart is `pkpo` (binary R) or `bon_rl` with s = R."""
bon_rl_s.__doc__ = _S_HEAD + _PRINTED_DOC.format(sel="reward R", need="")
