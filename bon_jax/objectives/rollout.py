"""The rollout an objective consumes, and its host-side validation.

A `Rollout` holds everything about B prompts x M samples that is *data* (no gradient flows through it):
rewards, verifier scores, log-probs under frozen policies (reference, EMA anchor, behaviour policy),
validity masks, and K reference samples per prompt for CDF estimates. The log-probs under the policy being
trained are the loss function's first argument, `logp_BM`; the log-prob of a demonstration under that policy
(imitation objectives) is the keyword argument `expert_logp_B` -- both carry gradients, so neither lives here.

Refusing bad values (NaN or +-inf rewards or scores). `validate_rollout` checks on the host, in numpy, and
raises `InvalidRolloutError` naming the field, how many values are bad and the first (prompt, sample). Every
loss function calls it automatically when it is called eagerly (concrete arrays); a trainer that jits its
step should call it on each rollout before the step (the arrays are [B, M] scalars: one cheap device-to-host
copy). Under jit an exception is impossible without `checkify`, so the loss functions guard instead: a bad
value at a valid sample is replaced by 0 for the arithmetic, and the loss *and its gradient* are made NaN,
with the metric `n_nonfinite` counting the bad values -- training can never continue silently on them
(`optax.apply_if_finite` can skip such a step). Values at masked samples are never looked at.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np

from bon_jax.errors import BonJaxError

__all__ = ["InvalidRolloutError", "Rollout", "is_concrete", "validate_rollout"]

Array = Any


class InvalidRolloutError(BonJaxError, ValueError):
    """A rollout with values an objective cannot use (NaN/inf rewards, wrong shapes, non-binary rewards)."""


@flax.struct.dataclass
class Rollout:
    """B prompts x M samples (and K reference samples) of data for an objective. A jax pytree.

    Shapes: B prompts, M policy samples per prompt, K reference samples per prompt. Only `rewards_BM` is
    required; every other field defaults to None and is required only by the objectives that say so.

    Attributes:
      rewards_BM: [B, M] ground-truth reward R(x, y_j) (binary objectives: exactly 0 or 1).
      scores_BM: [B, M] verifier score s(x, y_j), what Best-of-N selects by (ties allowed).
      ref_logp_BM: [B, M] sequence log-prob of y_j under the frozen reference pi_ref (KL(pi || pi_ref)).
      mask_BM: [B, M] bool, True for valid samples; None means all valid. Masked samples are ignored.
      ref_rewards_BK: [B, K] rewards of K samples from pi_ref (empirical CDFs for vbon / vbon_bound / bond).
      ref_scores_BK: [B, K] verifier scores of those K reference samples (when selecting by score).
      ref_mask_BK: [B, K] bool, valid reference samples; None means all valid.
      expert_scores_B: [B] verifier score of each prompt's demonstration (bon_sft needs it).
      anchor_logp_BM: [B, M] log-prob of y_j under the EMA anchor of the policy (Chow's KL regulariser).
      old_logp_BM: [B, M] log-prob of y_j under the behaviour policy that sampled it (PPO ratios for
        several epochs over one batch). None: the samples are on-policy (ratio 1).
      expert_logp_B: [B] log-prob of each prompt's demonstration under the policy. Accepted here for
        convenience, but the documented way is the loss function's keyword `expert_logp_B`: a value in the
        rollout carries gradients only if the rollout is built inside the differentiated function. Giving
        both is an error; objectives without demonstrations ignore this field.
      lengths_BM: [B, M] number of tokens of y_j whose log-probs logp_BM sums (completion length, the stop
        token included), >= 0. Only length-normalised objectives read it (grpo's loss_norm "sequence" /
        "token").
    """

    rewards_BM: Array
    scores_BM: Array | None = None
    ref_logp_BM: Array | None = None
    mask_BM: Array | None = None
    ref_rewards_BK: Array | None = None
    ref_scores_BK: Array | None = None
    ref_mask_BK: Array | None = None
    expert_scores_B: Array | None = None
    anchor_logp_BM: Array | None = None
    old_logp_BM: Array | None = None
    expert_logp_B: Array | None = None
    lengths_BM: Array | None = None


_BM_FIELDS = ("rewards_BM", "scores_BM", "ref_logp_BM", "anchor_logp_BM", "old_logp_BM", "lengths_BM")
_BK_FIELDS = ("ref_rewards_BK", "ref_scores_BK")


def is_concrete(*trees) -> bool:
    """True when no leaf of the given pytrees is a jax tracer (so values can be inspected on the host)."""
    return not any(isinstance(x, jax.core.Tracer) for t in trees for x in jax.tree_util.tree_leaves(t))


def _first_bad(bad: np.ndarray) -> str:
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"prompt {where[0]}" if len(where) == 1 else f"prompt {where[0]}, sample {where[1]}"


def validate_rollout(rollout: Rollout, *, min_samples: int | None = None, binary: bool = False) -> None:
    """Host-side check of a rollout; raises `InvalidRolloutError` with a message naming the problem.

    Checks: every [B, M] field has the shape of `rewards_BM` (2-D), every [B, K] field the shape of the
    others, masks are boolean, and the values at valid samples are finite (NaN, +inf and -inf are refused)
    and, for lengths_BM, >= 0.
    With `binary`, rewards at valid samples must be exactly 0 or 1. With `min_samples`, M must be at least
    that (Best-of-N estimators need M >= N samples per prompt).

    Call it before a jitted train step; loss functions call it themselves when called eagerly.
    """
    rewards = np.asarray(rollout.rewards_BM)
    if rewards.ndim != 2:
        raise InvalidRolloutError(f"rewards_BM must be [B, M], got shape {rewards.shape}")
    shape = rewards.shape
    if min_samples is not None and shape[1] < min_samples:
        raise InvalidRolloutError(
            f"this objective needs M >= N samples per prompt, got M = {shape[1]} < N = {min_samples}"
        )
    mask = np.ones(shape, bool) if rollout.mask_BM is None else np.asarray(rollout.mask_BM)
    if mask.shape != shape:
        raise InvalidRolloutError(f"mask_BM has shape {mask.shape}, rewards_BM {shape}")
    if mask.dtype != np.bool_:
        raise InvalidRolloutError(f"mask_BM must be bool, got {mask.dtype}")
    for name in _BM_FIELDS:
        value = getattr(rollout, name)
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != shape:
            raise InvalidRolloutError(f"{name} has shape {value.shape}, rewards_BM {shape}")
        bad = mask & ~np.isfinite(value)
        if bad.any():
            raise InvalidRolloutError(
                f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf) at valid samples, first at "
                f"{_first_bad(bad)}: {value[tuple(np.argwhere(bad)[0])]!r}. Fix the reward/scoring function "
                "or mask those samples."
            )
    if rollout.lengths_BM is not None:
        lengths = np.asarray(rollout.lengths_BM)
        bad = mask & (lengths < 0)
        if bad.any():
            raise InvalidRolloutError(
                f"lengths_BM has {int(bad.sum())} negative value(s) at valid samples, first at "
                f"{_first_bad(bad)}: {lengths[tuple(np.argwhere(bad)[0])]!r}"
            )
    if binary:
        bad = mask & (rewards != 0) & (rewards != 1)
        if bad.any():
            raise InvalidRolloutError(
                f"this objective needs binary rewards (0 or 1); rewards_BM has {int(bad.sum())} other "
                f"value(s), first at {_first_bad(bad)}: {rewards[tuple(np.argwhere(bad)[0])]!r}"
            )
    ref_shape = None
    for name in _BK_FIELDS:
        value = getattr(rollout, name)
        if value is None:
            continue
        value = np.asarray(value)
        if value.ndim != 2 or value.shape[0] != shape[0]:
            raise InvalidRolloutError(f"{name} must be [B={shape[0]}, K], got shape {value.shape}")
        if ref_shape is not None and value.shape != ref_shape:
            raise InvalidRolloutError(
                f"{name} has shape {value.shape}, the other reference field {ref_shape}"
            )
        ref_shape = value.shape
        ref_mask = (
            np.ones(value.shape, bool) if rollout.ref_mask_BK is None else np.asarray(rollout.ref_mask_BK)
        )
        if ref_mask.shape != value.shape or ref_mask.dtype != np.bool_:
            raise InvalidRolloutError(
                f"ref_mask_BK must be bool of shape {value.shape}, got {ref_mask.dtype} {ref_mask.shape}"
            )
        bad = ref_mask & ~np.isfinite(value)
        if bad.any():
            raise InvalidRolloutError(
                f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf) at valid reference samples, "
                f"first at {_first_bad(bad)}"
            )
    for name in ("expert_scores_B", "expert_logp_B"):
        value = getattr(rollout, name)
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != shape[:1]:
            raise InvalidRolloutError(f"{name} must be [B={shape[0]}], got shape {value.shape}")
        bad = ~np.isfinite(value)
        if bad.any():
            raise InvalidRolloutError(
                f"{name} has {int(bad.sum())} non-finite value(s), first at {_first_bad(bad)}"
            )
