"""Best-of-N-aware objectives as pure, registered surrogate losses.

Registration. Each objective is registered with an `ObjectiveSpec` (`spec(name)`): where its samples come
from (the policy or pi_ref), what selects the Best-of-N winner (verifier score or reward), whether it needs K
reference samples, demonstrations or a value baseline, and its default beta. Trainers, the config validation
and `bon_jax.exact` read it (docs/objectives.md, "What each objective needs").

Contract. `get(name)` returns

    loss_fn(logp_BM, rollout, *, n, beta=<default>, expert_logp_B=None, **options) -> (loss, metrics)

  logp_BM        [B, M] sequence log-probs, under the policy being trained, of the M samples of each of B
                 prompts (the samples the rollout describes). Gradients flow through it.
  rollout        a `Rollout` (a pytree; data only: rewards, scores, log-probs under frozen policies, masks,
                 reference samples). No gradient flows through it.
  n              Best-of-N size, a static Python int (unused by sft and kl_rl).
  beta           coefficient of KL(pi || pi_ref) in J; 0 by default, 1 for vbon / vbon_bound / bond (their
                 paper's objective).
  expert_logp_B  [B] log-prob under the policy of each prompt's demonstration, for the imitation objectives
                 (sft, bon_sft, bond). It carries gradients, so it is an explicit keyword computed by the
                 trainer in the same differentiated function as logp_BM; objectives that do not use it
                 refuse it. (Rollout.expert_logp_B is accepted instead, if the rollout is built inside the
                 differentiated function; giving both is an error.)
  anchor_coef    (every sample-based objective) coefficient of KL(pi || pi_anchor), Chow's EMA-anchor
                 regulariser; schedule: `regularizers.anchor_kl_coef(step)`.
  loss           scalar, averaged over the B prompts: -grad(loss) is the mean over prompts of per-prompt
                 estimates of grad J (one prompt's J, stated in each docstring).
  metrics        dict of float32 scalars (and int32 `n_nonfinite`).

Bad values (NaN/inf rewards or scores at valid samples): see `rollout.py` -- an eager call raises
InvalidRolloutError; under jit the loss and gradient become NaN and `n_nonfinite` counts them; trainers call
`validate_rollout` before the jitted step.

The table of objectives (paper, equation, J, unbiasedness, inputs) is docs/objectives.md; exact J on a finite
outcome space for every name is `bon_jax.exact.objective`.
"""

from bon_jax.objectives import binary, bon_rl, grpo, imitation, kl_rl, variational  # noqa: F401  (registration)
from bon_jax.objectives._registry import ObjectiveSpec, get, names, register, spec
from bon_jax.objectives.regularizers import anchor_kl_coef, ema_update
from bon_jax.objectives.rollout import InvalidRolloutError, Rollout, validate_rollout
from bon_jax.objectives.weights import bon_rl_weights, bon_winner_weights, pass_at_k_weights

__all__ = [
    "InvalidRolloutError",
    "ObjectiveSpec",
    "Rollout",
    "anchor_kl_coef",
    "bon_rl_weights",
    "bon_winner_weights",
    "ema_update",
    "get",
    "names",
    "pass_at_k_weights",
    "register",
    "spec",
    "validate_rollout",
]
