"""KL-regularised RL baseline: RLOO, optionally PPO-clipped."""

from __future__ import annotations

from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register


@register("kl_rl", ObjectiveSpec())
def kl_rl(logp_BM, rollout, *, n=None, beta=0.0, expert_logp_B=None, anchor_coef=0.0, clip_eps=None):
    """KL-regularised RL (the standard baseline; Ahmadian et al. 2024 RLOO, Schulman et al. 2017 PPO-clip).

    J = E_{y ~ pi}[R(y)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor).

    Estimator: RLOO on the shaped reward r~_j = R_j - beta (log pi(y_j) - log pi_ref(y_j)) (a stop-gradient
    value): w_j = (r~_j - mean of r~ over the other valid samples) / M. **Unbiased** for every M >= 1 (M = 1:
    no baseline). Why the KL part is unbiased: grad E_pi[log pi - log pi_ref] = E_pi[grad log pi (log pi -
    log pi_ref)] + E_pi[grad log pi], the second term (from log pi inside the reward) is 0, and the
    leave-one-out baseline is independent of y_j. n is unused (accepted for the common signature).

    PPO: with rollout.old_logp_BM (log-probs under the behaviour policy) the ratio exp(logp - old_logp)
    replaces logp and the shaped reward uses old_logp; with clip_eps the clipped surrogate
    -min(rho w, clip(rho, 1-eps, 1+eps) w) is used for several epochs over one batch (the first epoch,
    rho = 1, is the RLOO gradient).

    Inputs: rollout.rewards_BM (mask_BM optional); ref_logp_BM if beta != 0; anchor_logp_BM if
    anchor_coef != 0; old_logp_BM for PPO. Metrics: reward_mean, kl_ref (k1), kl_ref_k3, clip_frac.
    """
    name = "kl_rl"
    C.check_unused(name, expert_logp_B)
    p = C.prepare(name, logp_BM, rollout, beta=beta, anchor_coef=anchor_coef)
    w = C.rloo_weights(p.rewards, p)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    return C.finish(per, w, p, metrics)
