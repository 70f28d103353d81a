"""GRPO and Dr. GRPO: RL with group-relative advantages, the field's standard baseline (docs/maths.md section 4).

Shao et al. 2024 (DeepSeekMath: GRPO); Yu et al. 2025 (DAPO: token-level loss normalisation, clip-higher,
dynamic sampling); Liu et al. 2025 (Dr. GRPO: no std scaling, a constant length normaliser).
"""

from __future__ import annotations

import inspect
import math

import jax.numpy as jnp
import numpy as np

from bon_jax.objectives import _common as C
from bon_jax.objectives._registry import ObjectiveSpec, register

__all__ = ["LOSS_NORMS", "check_options", "dr_grpo", "group_advantages", "grpo"]

LOSS_NORMS = ("sequence", "token", "constant")
_OPTIONS = (
    "scale_by_std",
    "loss_norm",
    "max_len",
    "clip_eps",
    "clip_eps_high",
    "skip_equal_groups",
    "adv_eps",
)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def check_options(
    *,
    scale_by_std=True,
    loss_norm="sequence",
    max_len=None,
    clip_eps=None,
    clip_eps_high=None,
    skip_equal_groups=True,
    adv_eps=1e-4,
) -> None:
    """Refuses a bad option value with a ValueError naming it (an unknown option is a TypeError)."""
    for key, value in (("scale_by_std", scale_by_std), ("skip_equal_groups", skip_equal_groups)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"grpo: {key} must be True or False, got {value!r}")
    if loss_norm not in LOSS_NORMS:
        raise ValueError(f"grpo: loss_norm must be one of {LOSS_NORMS}, got {loss_norm!r}")
    if max_len is not None:
        if loss_norm != "constant":
            raise ValueError(
                f"grpo: max_len is the divisor of loss_norm='constant'; loss_norm is {loss_norm!r}"
            )
        if not _is_number(max_len) or not max_len > 0 or not math.isfinite(max_len):
            raise ValueError(f"grpo: max_len must be a number > 0, got {max_len!r}")
    for key, value in (("clip_eps", clip_eps), ("clip_eps_high", clip_eps_high)):
        if value is not None and (not _is_number(value) or not 0 < value < math.inf):
            raise ValueError(f"grpo: {key} must be a number > 0 (or None), got {value!r}")
    if clip_eps is not None and clip_eps >= 1:
        raise ValueError(
            f"grpo: clip_eps must be < 1 (the lower clip bound is 1 - clip_eps), got {clip_eps!r}"
        )
    if clip_eps_high is not None and clip_eps is None:
        raise ValueError("grpo: clip_eps_high (the upper clip bound) needs clip_eps (the lower one)")
    if not _is_number(adv_eps) or not 0 <= adv_eps < math.inf:
        raise ValueError(f"grpo: adv_eps must be a number >= 0, got {adv_eps!r}")


def group_advantages(rewards_BM, mask_BM, *, scale_by_std=True, adv_eps=1e-4):
    """Group-relative advantages over the valid samples of each prompt (row).

    A_j = (R_j - mean R) / (std R + adv_eps), mean and std (divisor m: the group's own spread) over the m
    valid samples of the row; scale_by_std False: A_j = R_j - mean R. A row is informative when it has at
    least 2 valid samples whose rewards are not all equal; other rows get A = 0 exactly (R_j - mean R is 0
    there, up to rounding). Returns (A_BM (0 at masked samples), std_B, informative_B).
    """
    valid = jnp.asarray(mask_BM, bool)
    r = jnp.where(valid, jnp.asarray(rewards_BM, C.F32), 0.0)
    m = jnp.sum(valid, axis=-1, keepdims=True).astype(C.F32)
    mean = jnp.sum(r, axis=-1, keepdims=True) / jnp.maximum(m, 1.0)
    centred = jnp.where(valid, r - mean, 0.0)
    std = jnp.sqrt(jnp.sum(centred**2, axis=-1, keepdims=True) / jnp.maximum(m, 1.0))
    # Equality by max == min, not std > 0: a float mean of equal values can differ from them by rounding.
    hi = jnp.max(jnp.where(valid, r, -jnp.inf), axis=-1)
    lo = jnp.min(jnp.where(valid, r, jnp.inf), axis=-1)
    informative = (m[:, 0] >= 2) & (hi > lo)
    adv = centred / (std + adv_eps) if scale_by_std else centred
    return jnp.where(informative[:, None], adv, 0.0), std[:, 0], informative


def _lengths(name, rollout, p: C.Prepared, loss_norm):
    """Cleaned [B, M] float lengths and the count of bad ones (non-finite or negative) at valid samples."""
    if rollout.lengths_BM is None:
        raise ValueError(
            f"objective {name!r} with loss_norm={loss_norm!r} needs rollout.lengths_BM (the number of tokens "
            "each sequence log-prob sums); use loss_norm='constant' for sequence sums"
        )
    if jnp.shape(rollout.lengths_BM) != p.logp.shape:
        raise ValueError(
            f"{name}: rollout.lengths_BM has shape {jnp.shape(rollout.lengths_BM)}, logp_BM {p.logp.shape}"
        )
    lengths, n_bad = C._clean(rollout.lengths_BM, p.mask)
    negative = p.mask & (lengths < 0)
    return jnp.where(negative, 0.0, lengths), n_bad + jnp.sum(negative).astype(jnp.int32)


def _grpo(name, logp_BM, rollout, *, beta, expert_logp_B, anchor_coef, **options):
    C.check_unused(name, expert_logp_B)
    check_options(**options)
    shape = np.shape(logp_BM)
    if len(shape) == 2 and shape[1] < 2:
        raise ValueError(
            f"objective {name!r} needs M >= 2 samples per prompt (its baseline is the group's own mean); "
            f"got M = {shape[1]}"
        )
    loss_norm = options["loss_norm"]
    p = C.prepare(name, logp_BM, rollout, beta=beta, anchor_coef=anchor_coef)
    adv, std_B, informative_B = group_advantages(
        p.rewards, p.mask, scale_by_std=options["scale_by_std"], adv_eps=options["adv_eps"]
    )
    batch = p.logp.shape[0]
    n_bad = p.n_bad
    keep_B = informative_B.astype(C.F32) if options["skip_equal_groups"] else jnp.ones((batch,), C.F32)
    # The loss is -(1/B) sum_b sum_j w_bj logp_bj, and logp_bj = sum_t logp_bjt: every normalisation below is
    # a per-sample factor on A_bj.
    if loss_norm == "token":
        lengths, bad = _lengths(name, rollout, p, loss_norm)
        n_bad = n_bad + bad
        tokens = jnp.sum(jnp.where(p.mask, lengths, 0.0) * keep_B[:, None])
        scale = keep_B[:, None] * batch / jnp.maximum(tokens, 1.0)
    else:
        if loss_norm == "sequence":
            lengths, bad = _lengths(name, rollout, p, loss_norm)
            n_bad = n_bad + bad
            per_sample = 1.0 / (p.m * jnp.maximum(lengths, 1.0))
        else:
            per_sample = 1.0 / (p.m * float(options["max_len"] or 1.0))
        groups = jnp.sum(keep_B) if options["skip_equal_groups"] else float(batch)
        scale = per_sample * (keep_B * batch / jnp.maximum(groups, 1.0))[:, None]
    w = jnp.where(p.mask, adv * scale, 0.0)
    w_kl, metrics = C.kl_regulariser(name, p, beta=beta, anchor_coef=anchor_coef)
    w = w + w_kl
    per, extra = C.policy_loss(p, w, clip_eps=options["clip_eps"], clip_eps_high=options["clip_eps_high"])
    metrics.update(extra)
    metrics["reward_mean"] = C.masked_mean(p.rewards, p.mask)
    metrics["reward_std"] = jnp.mean(std_B)
    metrics["frac_informative"] = jnp.mean(informative_B.astype(C.F32))
    return C.finish(per, w, p, metrics, n_bad=n_bad)


_DOC = """

    Estimator. Per prompt, the M samples are a group: A_j = (R_j - mean R) / (std R + adv_eps) over the
    group's valid samples (scale_by_std=False: A_j = R_j - mean R, Dr. GRPO), 0 for a group whose rewards are
    all equal. Sample j's weight is A_j times its loss normalisation (logp_j = sum_t log pi(y_jt) is the
    token sum, so each is a per-sample factor):
      loss_norm "sequence" (GRPO): 1/(m L_j), L_j = rollout.lengths_BM (the token mean of each sample, mean
        over the group's m samples, mean over groups);
      "token" (DAPO): B/T, T the total number of tokens of the counted groups (sum over the batch's tokens
        divided by their number);
      "constant" (Dr. GRPO): 1/(m max_len) (max_len None: 1/m, the sequence sums).
    skip_equal_groups (DAPO's dynamic sampling at the loss level): groups whose rewards are all equal get
    weight 0 and are not counted in the normaliser (mean over the B' informative groups, or T over their
    tokens only). clip_eps / clip_eps_high: PPO clip with rollout.old_logp_BM, ratio bounds
    [1 - clip_eps, 1 + clip_eps_high] (clip-higher, DAPO; the ratio is the sequence's, not per token). The
    KL terms use the unbiased RLOO weights (`_common.kl_regulariser`), not GRPO's per-token k3 penalty.

    **Biased** for grad J except in one case: with scale_by_std=False, sequence sums (loss_norm "constant",
    max_len None), no skipping and on-policy, E[estimate] = (M-1)/M grad E_pi[R] exactly (the group mean
    includes R_j itself). Otherwise (docs/maths.md section 4): std scaling reweights each prompt's gradient by
    about 1/std_pi(R | x) (binary R, large M: grad of 2 arcsin sqrt(pass@1)) and is biased for that too at
    finite M; "sequence" weights samples by 1/L_j (E = (M-1)/M E_pi[(R - E R) grad log pi / L]); "token"
    divides by a random total length; skipping rescales the batch by B/B'.

    Inputs: rollout.rewards_BM (mask_BM optional); lengths_BM for loss_norm "sequence" / "token";
    ref_logp_BM if beta != 0; anchor_logp_BM if anchor_coef != 0; old_logp_BM for clip_eps. M >= 2.
    n is unused. Options: scale_by_std, loss_norm, max_len, clip_eps, clip_eps_high, skip_equal_groups,
    adv_eps (default 1e-4). Metrics: reward_mean, reward_std (mean group std), frac_informative (groups whose
    rewards differ), kl_ref, clip_frac, ...
"""


@register("grpo", ObjectiveSpec(min_samples=2))
def grpo(
    logp_BM,
    rollout,
    *,
    n=None,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    scale_by_std=True,
    loss_norm="sequence",
    max_len=None,
    clip_eps=None,
    clip_eps_high=None,
    skip_equal_groups=True,
    adv_eps=1e-4,
):
    return _grpo(
        "grpo",
        logp_BM,
        rollout,
        beta=beta,
        expert_logp_B=expert_logp_B,
        anchor_coef=anchor_coef,
        scale_by_std=scale_by_std,
        loss_norm=loss_norm,
        max_len=max_len,
        clip_eps=clip_eps,
        clip_eps_high=clip_eps_high,
        skip_equal_groups=skip_equal_groups,
        adv_eps=adv_eps,
    )


grpo.__doc__ = (
    """GRPO (Shao et al. 2024), with DAPO's (Yu et al. 2025) and Dr. GRPO's (Liu et al. 2025) options.

    J = E_pi[R] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor), the J it ascends (not the one it
    estimates: see below). Defaults: std-scaled advantages, loss_norm "sequence", groups of equal rewards
    skipped; `dr_grpo` is the same estimator with Dr. GRPO's defaults."""
    + _DOC
)


@register("dr_grpo", ObjectiveSpec(min_samples=2))
def dr_grpo(
    logp_BM,
    rollout,
    *,
    n=None,
    beta=0.0,
    expert_logp_B=None,
    anchor_coef=0.0,
    scale_by_std=False,
    loss_norm="constant",
    max_len=None,
    clip_eps=None,
    clip_eps_high=None,
    skip_equal_groups=False,
    adv_eps=1e-4,
):
    return _grpo(
        "dr_grpo",
        logp_BM,
        rollout,
        beta=beta,
        expert_logp_B=expert_logp_B,
        anchor_coef=anchor_coef,
        scale_by_std=scale_by_std,
        loss_norm=loss_norm,
        max_len=max_len,
        clip_eps=clip_eps,
        clip_eps_high=clip_eps_high,
        skip_equal_groups=skip_equal_groups,
        adv_eps=adv_eps,
    )


dr_grpo.__doc__ = (
    """Dr. GRPO (Liu et al. 2025): `grpo` with scale_by_std=False, loss_norm "constant", no skipping.

    J = E_pi[R] - beta KL(pi || pi_ref) - anchor_coef KL(pi || pi_anchor). With its defaults (max_len None,
    on-policy) it is (M-1)/M times an unbiased estimate of grad J's reward part: w_j = (R_j - mean R)/M (RLOO
    scaled by (M-1)/M); max_len divides it by that constant (Dr. GRPO's generation budget)."""
    + _DOC
)


def _options_checker(fn):
    params = inspect.signature(fn).parameters
    defaults = {k: params[k].default for k in _OPTIONS}

    def check(**options):
        """Checks `options` (as the config passes them) on top of this objective's defaults."""
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(
                f"{fn.objective_name}: unknown option(s) {unknown}; options: {', '.join(_OPTIONS)}"
            )
        check_options(**{**defaults, **options})

    return check


# The config validation calls `check_options` of an objective that has one, before any compute.
grpo.check_options = _options_checker(grpo)
dr_grpo.check_options = _options_checker(dr_grpo)
