"""Objectives registered by name: `register`, `get`, `names`."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["get", "names", "register"]

_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering a loss function under `name`.

    A loss function has the signature `loss_fn(logp_BM, rollout, *, n, beta=..., expert_logp_B=None,
    **options) -> (loss, metrics)`; see `bon_jax.objectives` for the contract. Names are unique.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"objective name must be a non-empty string, got {name!r}")

    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"objective {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        fn.objective_name = name
        return fn

    return decorator


def get(name: str) -> Callable:
    """The loss function registered under `name`; a KeyError listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    """Registered objective names, sorted."""
    return tuple(sorted(_REGISTRY))
