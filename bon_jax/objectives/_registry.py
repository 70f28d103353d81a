"""Objectives registered by name, each with an `ObjectiveSpec` declaring what it needs.

`register(name, spec)`, `get(name)`, `spec(name)`, `names()`. The spec is the one place that says where an
objective's samples come from, what selects the Best-of-N winner, which extra inputs it takes and its beta
convention; the pipeline, the config validation, `bon_jax.exact` and the tests read it (docs/objectives.md,
"What each objective needs").
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping

__all__ = ["ObjectiveSpec", "get", "names", "register", "spec"]

SAMPLE_SOURCES = ("policy", "reference")
SELECTIONS = ("score", "reward")
DEMONSTRATIONS = ("dataset", "bon_of_reference")


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """Facts about one objective, declared at registration.

    samples: whose samples the rollout holds: "policy" (the policy being trained; the KL terms beta and
        anchor_coef are then estimable) or "reference" (pi_ref, e.g. SFT on Best-of-N samples of pi_ref;
        no KL terms).
    selects_by: what picks the Best-of-N winner by default: "score" (the verifier), "reward" (the ground
        truth), or None (no selection: sft, kl_rl).
    select_option: the objective takes a `select_by` option that overrides `selects_by`.
    binary_reward: rewards must be 0/1.
    needs_n_samples: needs M >= N samples per prompt.
    min_samples: needs M >= this many samples per prompt whatever N is (grpo: 2, its baseline is the
        group's own mean).
    reference_samples: needs K samples of pi_ref per prompt (rollout.ref_rewards_BK / ref_scores_BK) for
        the reward CDFs under pi_ref.
    demonstrations: None, "dataset" (expert_logp_B of each prompt's reference solution, and
        rollout.expert_scores_B when selects_by is "score") or "bon_of_reference" (expert_logp_B of a
        Best-of-N sample of pi_ref, selected like the objective selects).
    value_baseline: takes `values_B`, a learned per-prompt value used as the baseline.
    default_beta: the default coefficient of KL(pi || pi_ref) in J (the paper's convention).
    winners_only: with beta = anchor_coef = 0 and on-policy (no rollout.old_logp_BM), only the samples that
        can win a Best-of-N draw (`bon_winner_weights` > 0 under the objective's selection) have a nonzero
        weight, so the update need only differentiate their log-probs (`pipeline.update_rows`; checked for
        every objective declaring it by tests/test_update_rows.py).
    """

    samples: str = "policy"
    selects_by: str | None = None
    select_option: bool = False
    binary_reward: bool = False
    needs_n_samples: bool = False
    min_samples: int = 1
    reference_samples: bool = False
    demonstrations: str | None = None
    value_baseline: bool = False
    default_beta: float = 0.0
    winners_only: bool = False
    name: str = ""

    def __post_init__(self):
        if self.samples not in SAMPLE_SOURCES:
            raise ValueError(f"ObjectiveSpec.samples must be one of {SAMPLE_SOURCES}, got {self.samples!r}")
        if self.selects_by not in SELECTIONS + (None,):
            raise ValueError(f"ObjectiveSpec.selects_by must be one of {SELECTIONS} or None, got {self.selects_by!r}")
        if self.select_option and self.selects_by is None:
            raise ValueError("ObjectiveSpec: select_option needs a default selects_by")
        if self.demonstrations not in DEMONSTRATIONS + (None,):
            raise ValueError(
                f"ObjectiveSpec.demonstrations must be one of {DEMONSTRATIONS} or None, got {self.demonstrations!r}"
            )
        if not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise ValueError(f"ObjectiveSpec.min_samples must be an int >= 1, got {self.min_samples!r}")
        if self.winners_only and self.selects_by is None:
            raise ValueError("ObjectiveSpec: winners_only needs a selection (selects_by)")
        if self.samples == "reference" and self.default_beta != 0:
            raise ValueError("ObjectiveSpec: samples from the reference admit no KL term (default_beta must be 0)")

    @property
    def kl_terms(self) -> bool:
        """Whether beta / anchor_coef are allowed: KL(pi || q) is estimated from samples of pi."""
        return self.samples == "policy"

    def selection(self, options: Mapping | None = None) -> str | None:
        """What selects the winner with these objective options: "score", "reward" or None."""
        if self.select_option and options and "select_by" in options:
            by = options["select_by"]
            if by not in SELECTIONS:
                raise ValueError(f"{self.name}: select_by must be one of {SELECTIONS}, got {by!r}")
            return by
        return self.selects_by


_REGISTRY: dict[str, Callable] = {}
_SPECS: dict[str, ObjectiveSpec] = {}


def _check_signature(name: str, fn: Callable, s: ObjectiveSpec) -> None:
    """The function's keywords agree with its declaration (a registration-time guard against drift)."""
    params = inspect.signature(fn).parameters
    if "beta" not in params or params["beta"].default != s.default_beta:
        raise ValueError(f"objective {name!r}: spec.default_beta={s.default_beta} but the beta default differs")
    for option, declared in (("values_B", s.value_baseline), ("select_by", s.select_option)):
        if (option in params) != declared:
            raise ValueError(f"objective {name!r}: the keyword {option!r} and the spec disagree")


def register(name: str, spec: ObjectiveSpec | None = None) -> Callable[[Callable], Callable]:
    """Decorator registering a loss function under `name` with its `ObjectiveSpec`.

    A loss function has the signature `loss_fn(logp_BM, rollout, *, n, beta=..., expert_logp_B=None,
    **options) -> (loss, metrics)`; see `bon_jax.objectives` for the contract. Names are unique;
    re-registering the same function is a no-op (its spec is kept).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"objective name must be a non-empty string, got {name!r}")
    if spec is not None and not isinstance(spec, ObjectiveSpec):
        raise TypeError(f"register({name!r}): spec must be an ObjectiveSpec, got {type(spec).__name__}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY:
            if _REGISTRY[name] is not fn:
                raise ValueError(f"objective {name!r} is already registered (by {_REGISTRY[name].__module__})")
            if spec is None or dataclasses.replace(spec, name=name) == _SPECS[name]:
                return fn
            raise ValueError(f"objective {name!r} is already registered with another spec")
        if spec is None:
            raise TypeError(f"register({name!r}) needs an ObjectiveSpec declaring what the objective needs")
        s = dataclasses.replace(spec, name=name)
        _check_signature(name, fn, s)
        _REGISTRY[name] = fn
        _SPECS[name] = s
        fn.objective_name = name
        fn.spec = s
        return fn

    return decorator


def get(name: str) -> Callable:
    """The loss function registered under `name`; a KeyError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(names())}") from None


def spec(name: str) -> ObjectiveSpec:
    """The `ObjectiveSpec` of objective `name`; a KeyError listing the registered names otherwise."""
    get(name)
    return _SPECS[name]


def names() -> tuple[str, ...]:
    """Registered objective names, sorted."""
    return tuple(sorted(_REGISTRY))
