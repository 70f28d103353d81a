"""Machinery shared by the objectives: input preparation and guards, KL regularisers, the surrogate loss.

Every sample-based objective reduces to per-sample weights w_bj (data, no gradient) such that, for prompt b,
sum_j w_bj grad log pi(y_bj) estimates grad J. The surrogate loss is then
    loss = -(1/B) sum_b sum_j w_bj * logp_bj           (or the PPO-clipped ratio form, see `policy_loss`),
so -grad(loss) is the batch mean of the per-prompt estimates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bon_jax.objectives.rollout import Rollout, is_concrete, validate_rollout
from bon_jax.objectives.weights import check_n

Array = Any
F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Cleaned [B, M] inputs: values at masked samples and non-finite values replaced by 0."""

    logp: Array  # [B, M] policy log-probs (carry gradients; masked entries zeroed through jnp.where)
    mask: Array  # [B, M] bool
    m: Array  # [B, 1] float, number of valid samples
    rewards: Array
    scores: Array | None
    ref_logp: Array | None
    anchor_logp: Array | None
    old_logp: Array | None
    n_bad: Array  # [] int32, number of non-finite (or non-binary, where required) values at valid samples


def is_zero(x) -> bool:
    """True only for a Python/numpy number equal to 0 (a traced coefficient counts as nonzero)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _clean(x, valid):
    x = jnp.asarray(x, F32)
    ok = valid & jnp.isfinite(x)
    return jnp.where(ok, x, 0.0), jnp.sum(valid & ~jnp.isfinite(x)).astype(jnp.int32)


def prepare(
    name: str,
    logp_BM,
    rollout: Rollout,
    *,
    need: tuple[str, ...] = (),
    n=None,
    min_samples: int | None = None,
    binary: bool = False,
    beta=0.0,
    anchor_coef=0.0,
) -> Prepared:
    """Checks and cleans the inputs of objective `name`. Argument errors are raised before any compute.

    need: rollout fields that must be present (ref_logp_BM / anchor_logp_BM are added when beta /
    anchor_coef are nonzero). n: the static BoN size, checked. min_samples: the static M must be at least
    this (a ValueError at trace time otherwise). binary: rewards must be 0/1 at valid samples. When the
    rollout is concrete it is validated on the host (InvalidRolloutError); under jit bad values are counted
    in n_bad.
    """
    if not isinstance(rollout, Rollout):
        raise TypeError(f"{name}: rollout must be a bon_jax.objectives.Rollout, got {type(rollout).__name__}")
    if n is not None:
        check_n(n)
    logp_BM = jnp.asarray(logp_BM)
    if logp_BM.ndim != 2:
        raise ValueError(f"{name}: logp_BM must be [B, M], got shape {logp_BM.shape}")
    if jnp.shape(rollout.rewards_BM) != logp_BM.shape:
        raise ValueError(
            f"{name}: rollout.rewards_BM has shape {jnp.shape(rollout.rewards_BM)}, logp_BM {logp_BM.shape}"
        )
    need = tuple(need)
    if not is_zero(beta):
        need += ("ref_logp_BM",)
    if not is_zero(anchor_coef):
        need += ("anchor_logp_BM",)
    for field in need:
        if getattr(rollout, field) is None:
            why = {"ref_logp_BM": " (beta != 0)", "anchor_logp_BM": " (anchor_coef != 0)"}.get(field, "")
            raise ValueError(f"objective {name!r} needs rollout.{field}{why}")
    if min_samples is not None and logp_BM.shape[1] < min_samples:
        raise ValueError(
            f"objective {name!r} needs M >= N samples per prompt; got M = {logp_BM.shape[1]}, "
            f"N = {min_samples}"
        )
    if is_concrete(rollout):
        validate_rollout(rollout, binary=binary)
    mask = (
        jnp.ones(logp_BM.shape, bool)
        if rollout.mask_BM is None
        else jnp.asarray(rollout.mask_BM).astype(bool)
    )
    rewards, n_bad = _clean(rollout.rewards_BM, mask)
    if binary:
        n_bad = n_bad + jnp.sum(mask & (rewards != 0) & (rewards != 1)).astype(jnp.int32)
    out = {}
    for field in ("scores_BM", "ref_logp_BM", "anchor_logp_BM", "old_logp_BM"):
        value = getattr(rollout, field)
        if value is None:
            out[field] = None
            continue
        out[field], bad = _clean(value, mask)
        n_bad = n_bad + bad
    logp = jnp.where(mask, logp_BM.astype(F32), 0.0)
    m = jnp.sum(mask, axis=-1, keepdims=True).astype(F32)
    return Prepared(
        logp=logp,
        mask=mask,
        m=m,
        rewards=rewards,
        scores=out["scores_BM"],
        ref_logp=out["ref_logp_BM"],
        anchor_logp=out["anchor_logp_BM"],
        old_logp=out["old_logp_BM"],
        n_bad=n_bad,
    )


def clean_ref(name: str, rollout: Rollout, field: str):
    """(values_BK, mask_BK, n_bad) of a reference-sample field, non-finite/masked values zeroed."""
    value = getattr(rollout, field)
    if value is None:
        raise ValueError(f"objective {name!r} needs rollout.{field} (or exact CDFs as options)")
    value = jnp.asarray(value)
    mask = (
        jnp.ones(value.shape, bool)
        if rollout.ref_mask_BK is None
        else jnp.asarray(rollout.ref_mask_BK).astype(bool)
    )
    cleaned, n_bad = _clean(value, mask)
    return cleaned, mask, n_bad


def sampled_logp(p: Prepared):
    """log pi(y_j) of the policy that drew the samples, as data: old_logp (PPO) or stop_gradient(logp)."""
    return p.old_logp if p.old_logp is not None else jax.lax.stop_gradient(p.logp)


def loo_mean(x_BM, mask_BM, m_B1):
    """Mean of x over the OTHER valid samples of the prompt (0 when there is no other)."""
    x = jnp.where(mask_BM, x_BM, 0.0)
    total = jnp.sum(x, axis=-1, keepdims=True)
    return jnp.where(m_B1 > 1, (total - x) / jnp.maximum(m_B1 - 1, 1), 0.0)


def masked_mean(x_BM, mask_BM):
    """Mean of x over all valid samples of the batch (0 if none)."""
    x = jnp.where(mask_BM, x_BM, 0.0)
    return jnp.sum(x) / jnp.maximum(jnp.sum(mask_BM), 1)


def rloo_weights(reward_BM, p: Prepared):
    """(1/m) (r_j - mean of r over the other valid samples): the RLOO weights, unbiased for grad E_pi[r]."""
    adv = reward_BM - loo_mean(reward_BM, p.mask, p.m)
    return jnp.where(p.mask, adv / jnp.maximum(p.m, 1.0), 0.0)


def kl_regulariser(name: str, p: Prepared, *, beta, anchor_coef):
    """Weights and metrics of -beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor), from samples of pi.

    grad KL(pi || q) = E_pi[grad log pi (log pi - log q)] + E_pi[grad log pi] and the last term is 0, so the
    RLOO weights of the reward -(log pi - log q) (a stop-gradient value) are unbiased. Requires the rollout's
    samples to come from pi (old_logp_BM for the behaviour policy under PPO).
    """
    w = jnp.zeros(p.logp.shape, F32)
    metrics = {}
    logp_data = sampled_logp(p)
    if p.ref_logp is not None:
        k1 = logp_data - p.ref_logp
        metrics["kl_ref"] = masked_mean(k1, p.mask)
        metrics["kl_ref_k3"] = masked_mean(jnp.expm1(-k1) + k1, p.mask)
    if not is_zero(beta):
        if p.ref_logp is None:
            raise ValueError(f"objective {name!r} with beta != 0 needs rollout.ref_logp_BM")
        w = w - beta * rloo_weights(logp_data - p.ref_logp, p)
    if p.anchor_logp is not None:
        metrics["kl_anchor"] = masked_mean(logp_data - p.anchor_logp, p.mask)
    if not is_zero(anchor_coef):
        if p.anchor_logp is None:
            raise ValueError(f"objective {name!r} with anchor_coef != 0 needs rollout.anchor_logp_BM")
        w = w - anchor_coef * rloo_weights(logp_data - p.anchor_logp, p)
    return w, metrics


def policy_loss(p: Prepared, w_BM, *, clip_eps=None, clip_eps_high=None):
    """Per-prompt surrogate [B] whose -gradient is sum_j w_j grad log pi(y_j) (at ratio 1).

    On-policy (rollout.old_logp_BM None): -sum_j w_j logp_j. With old_logp_BM: the importance ratio
    rho_j = exp(logp_j - old_logp_j) replaces logp_j (gradient rho_j w_j grad log pi, unbiased off-policy),
    and with clip_eps the PPO form -sum_j min(rho_j w_j, clip(rho_j, 1 - eps, 1 + eps_high) w_j), where
    eps_high = clip_eps_high if given (DAPO's clip-higher: a looser upper bound) else clip_eps.
    """
    if clip_eps_high is not None and clip_eps is None:
        raise ValueError("clip_eps_high (the upper clip bound) needs clip_eps (the lower one)")
    w = jax.lax.stop_gradient(jnp.where(p.mask, w_BM, 0.0))
    extra = {}
    if p.old_logp is None:
        if clip_eps is not None:
            raise ValueError("clip_eps needs rollout.old_logp_BM (the behaviour policy's log-probs)")
        per = -jnp.sum(w * p.logp, axis=-1)
    else:
        ratio = jnp.exp(jnp.where(p.mask, p.logp - p.old_logp, 0.0))
        if clip_eps is None:
            per = -jnp.sum(w * ratio, axis=-1)
        else:
            high = clip_eps if clip_eps_high is None else clip_eps_high
            clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
            per = -jnp.sum(jnp.where(p.mask, jnp.minimum(ratio * w, clipped * w), 0.0), axis=-1)
            outside = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + high)
            extra["clip_frac"] = masked_mean(outside.astype(F32), p.mask)
        extra["ratio_mean"] = masked_mean(ratio, p.mask)
    return per, extra


def finish(per_prompt_B, w_BM, p: Prepared, metrics: dict, n_bad=None):
    """Mean over prompts, the common metrics, and the NaN guard for bad values (see rollout.py)."""
    n_bad = p.n_bad if n_bad is None else n_bad
    loss = jnp.mean(per_prompt_B)
    # A bad value at a valid sample poisons the loss and, through the product, its gradient.
    loss = loss * jnp.where(n_bad > 0, jnp.nan, 1.0)
    out = {
        "loss": loss,
        "weight_mean": masked_mean(w_BM, p.mask),
        "weight_abs_mean": masked_mean(jnp.abs(w_BM), p.mask),
        "frac_valid": jnp.mean(p.mask.astype(F32)),
        "n_nonfinite": n_bad,
    }
    out.update(metrics)
    return loss, {k: jnp.asarray(v, F32) if k != "n_nonfinite" else v for k, v in out.items()}


def check_unused(name: str, expert_logp_B):
    if expert_logp_B is not None:
        raise ValueError(f"objective {name!r} does not use expert_logp_B (imitation objectives do)")


def check_expert(name: str, expert_logp_B, batch: int, rollout: Rollout):
    """The [B] demonstration log-probs: the keyword (documented way) or rollout.expert_logp_B."""
    if expert_logp_B is not None and rollout.expert_logp_B is not None:
        raise ValueError(f"{name}: expert_logp_B given both as a keyword and in the rollout; pass one")
    if expert_logp_B is None:
        expert_logp_B = rollout.expert_logp_B
    if expert_logp_B is None:
        raise ValueError(
            f"objective {name!r} needs expert_logp_B: the [B] log-prob under the policy of each "
            "prompt's demonstration (pass it as a keyword; it carries gradients)"
        )
    expert_logp_B = jnp.asarray(expert_logp_B)
    if expert_logp_B.shape != (batch,):
        raise ValueError(f"{name}: expert_logp_B must be [B={batch}], got shape {expert_logp_B.shape}")
    return expert_logp_B.astype(F32)
