"""Imitation objectives: SFT, Chow's BoN-aware SFT (Lemma 1 / Algorithm 1), SFT on BoN samples of pi_ref.

Demonstrations carry gradients, so they do not travel in the rollout: the trainer computes the log-prob of
each prompt's demonstration under the policy and passes it as the keyword `expert_logp_B` ([B]), inside the
same differentiated function as `logp_BM`. Their verifier scores (data) travel as rollout.expert_scores_B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bon_jax import bon
from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register
from bon_jax.objectives.weights import bon_winner_weights


@register("sft", ObjectiveSpec(demonstrations="dataset"))
def sft(logp_BM, rollout, *, n=None, beta=0.0, expert_logp_B=None, anchor_coef=0.0, clip_eps=None):
    """Supervised fine-tuning (maximum likelihood of demonstrations).

    J = E_{(x, y) ~ D}[log pi(y | x)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor).

    Two ways to give the demonstrations:
      * `expert_logp_B` ([B], one demonstration per prompt): loss = -mean_b expert_logp_B; the rollout's
        samples (which must then come from pi) are used only for the KL terms (RLOO weights, see kl_rl);
        (rollout.expert_logp_B is accepted instead of the keyword, see Rollout);
      * no `expert_logp_B`: the rollout's valid samples ARE the demonstrations (e.g. M = 1 dataset answer per
        prompt) and loss = -mean_b (mean over valid j of logp_bj); beta and anchor_coef must then be 0.
    **Unbiased** (the demonstration's log-prob gradient is grad J for one draw from D).
    Inputs: expert_logp_B or the rollout's samples; ref_logp_BM / anchor_logp_BM for the KL terms.
    n is unused (common signature). Metrics: nll (mean negative log-likelihood of the demonstrations).
    """
    name = "sft"
    if expert_logp_B is None and rollout.expert_logp_B is None:
        if not (C.is_zero(beta) and C.is_zero(anchor_coef)):
            raise ValueError(
                "sft without expert_logp_B treats the rollout's samples as demonstrations; the KL "
                "terms need samples from pi: pass expert_logp_B, or beta = anchor_coef = 0"
            )
        p = C.prepare(name, logp_BM, rollout)
        w = jnp.where(p.mask, 1.0 / jnp.maximum(p.m, 1.0), 0.0)
        per = -jnp.sum(w * p.logp, axis=-1)
        metrics = {"nll": jnp.mean(per)}
        return C.finish(per, w, p, metrics)
    expert = C.check_expert(name, expert_logp_B, jnp.shape(logp_BM)[0], rollout)
    p = C.prepare(name, logp_BM, rollout, beta=beta, anchor_coef=anchor_coef)
    w, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    metrics.update(extra)
    per = per - expert
    metrics["nll"] = -jnp.mean(expert)
    return C.finish(per, w, p, metrics)


@register("bon_sft", ObjectiveSpec(selects_by="score", needs_n_samples=True, demonstrations="dataset"))
def bon_sft(
    logp_BM,
    rollout,
    *,
    n,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    lam=None,
    temperature=1.0,
    clip_eps=None,
):
    """BoN-SFT, Chow et al. Lemma 1 (Eq. 5) with Algorithm 1: imitation learning through Best-of-N.

    J = E_{(x, y) ~ D}[log pi_bon(y | x)] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor), with the
    exponential-twisting approximation pi_bon(y) ∝ pi(y) exp(lambda_N Q_pi(y)), Q_pi(y) = P_{y'~pi}(s(y) >=
    s(y')), lambda_N from `bon.bon_lambda` (Chow Eqs. 3, 10, 11).
    Eq. 5: grad J = E_D[grad f(x, y)] - E_{y ~ pi_bon}[grad f(x, y)],
        grad f(x, y) = grad log pi(y) + lambda_N E_{y' ~ pi}[grad log pi(y') sigma(s(y) - s(y'))].
    Estimator (Algorithm 1): the demonstration's grad f, minus grad f at the actual BoN sample of N draws
    (here every N-subset of the M samples, weights u_j = P(j wins)), with E_{y'~pi} the mean over the M
    samples and sigma((s - s') / temperature) for the indicator 1{s >= s'}. Per-sample weight of
    grad log pi(y_i): (lambda_N / M) [sigma(s_e - s_i) - sum_j u_j sigma(s_j - s_i)] - u_i; weight 1 on the
    demonstration.
    **Biased by construction** (sigmoid for the indicator -- sigma(0) = 1/2 on ties where the indicator is 1
    --, the BoN sample for a draw of the twisted pi_bon, the same samples for y* and y'); consistent in
    direction with grad J: the tests measure its cosine similarity with the exact gradient on bandits.

    Inputs: expert_logp_B ([B], gradient-carrying), rollout.expert_scores_B, rollout.scores_BM of M >= N
    samples from pi (mask_BM optional); ref_logp_BM / anchor_logp_BM for the KL terms.
    Options: lam (overrides lambda_N), temperature of the sigmoid (default 1, as printed), clip_eps (PPO on
    the sample terms). Metrics: lambda, expert_win_rate (mean sigma(s_e - s_j)), nll.
    """
    name = "bon_sft"
    expert = C.check_expert(name, expert_logp_B, jnp.shape(logp_BM)[0], rollout)
    need = ("scores_BM", "expert_scores_B")
    p = C.prepare(name, logp_BM, rollout, need=need, n=n, min_samples=n, beta=beta, anchor_coef=anchor_coef)
    lam = bon.bon_lambda(n) if lam is None else lam
    s_e = jnp.asarray(rollout.expert_scores_B, C.F32)
    bad_e = jnp.sum(~jnp.isfinite(s_e)).astype(jnp.int32)
    s_e = jnp.where(jnp.isfinite(s_e), s_e, 0.0)
    u = bon_winner_weights(p.scores, p.mask, n)
    sig_e = jax.nn.sigmoid((s_e[:, None] - p.scores) / temperature)  # [B, M(i)]
    sig_ji = jax.nn.sigmoid(
        (p.scores[..., :, None] - p.scores[..., None, :]) / temperature
    )  # [B, M(j), M(i)]
    sig_bon = jnp.einsum("bj,bji->bi", u, sig_ji)
    w = (lam / jnp.maximum(p.m, 1.0)) * (sig_e - sig_bon) - u
    w = jnp.where(p.mask & (p.m >= n), w, 0.0)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=clip_eps)
    per = per - expert
    metrics.update(extra)
    metrics["lambda"] = jnp.asarray(lam, C.F32)
    metrics["expert_win_rate"] = C.masked_mean(sig_e, p.mask)
    metrics["nll"] = -jnp.mean(expert)
    return C.finish(per, w, p, metrics, n_bad=p.n_bad + bad_e)


@register(
    "bon_distill_sft",
    ObjectiveSpec(
        samples="reference", selects_by="score", select_option=True, needs_n_samples=True, winners_only=True
    ),
)
def bon_distill_sft(logp_BM, rollout, *, n, beta=0.0, expert_logp_B=None, anchor_coef=0.0, select_by="score"):
    """BoN-SFT baseline of Amini et al. 2025: SFT on Best-of-N samples of the reference policy.

    J = E_{y ~ pi_BoN(pi_ref, s, N)}[log pi(y)] (selection by the verifier score; select_by="reward" selects
    by the reward). Here the rollout's M >= N samples are drawn from pi_REF (not pi), logp_BM their log-probs
    under pi. Estimator: the BoN winner of every N-subset, sum_j u_j grad log pi(y_j) with u_j = P(j wins a
    random N-subset), ties shared uniformly. **Unbiased** (M >= N). beta and anchor_coef must be 0 (the
    samples are not from pi). Inputs: rollout.scores_BM (or rewards_BM), mask_BM optional.
    Metrics: bon_reward (BoN@N of the reference: sum_j u_j R_j), nll (of the BoN samples).
    """
    name = "bon_distill_sft"
    C.check_unused(name, expert_logp_B)
    if not (C.is_zero(beta) and C.is_zero(anchor_coef)):
        raise ValueError(
            "bon_distill_sft: the rollout's samples come from pi_ref, beta and anchor_coef must be 0"
        )
    if select_by not in ("score", "reward"):
        raise ValueError(f"{name}: select_by must be 'score' or 'reward', got {select_by!r}")
    need = ("scores_BM",) if select_by == "score" else ()
    p = C.prepare(name, logp_BM, rollout, need=need, n=n, min_samples=n)
    sel = p.scores if select_by == "score" else p.rewards
    u = bon_winner_weights(sel, p.mask, n)
    per = -jnp.sum(u * p.logp, axis=-1)
    metrics = {"bon_reward": jnp.mean(jnp.sum(u * p.rewards, axis=-1)), "nll": jnp.mean(per)}
    return C.finish(per, u, p, metrics)
