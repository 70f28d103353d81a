"""Optimisers: AdamW with linear warm-up, then constant (Chow et al.'s RL) or cosine decay (SFT)."""

from __future__ import annotations

import optax


def learning_rate_schedule(lr: float, steps: int, warmup: int, decay: str = "constant") -> optax.Schedule:
    """Linear warm-up from 0 over `warmup` steps, then `constant` or `cosine` decay to 10% at `steps`."""
    warmup = max(0, min(warmup, steps))
    warm = optax.linear_schedule(0.0, lr, max(warmup, 1))
    if decay == "constant":
        after = optax.constant_schedule(lr)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(lr, max(steps - warmup, 1), alpha=0.1)
    else:
        raise ValueError(f"decay must be 'constant' or 'cosine', got {decay!r}")
    return optax.join_schedules([warm, after], [warmup]) if warmup else after


def adamw(
    lr: float,
    steps: int,
    *,
    warmup: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    decay: str = "constant",
    b2: float = 0.99,
) -> optax.GradientTransformation:
    """Gradient clipping by global norm (if set), then AdamW on the schedule above."""
    parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
    schedule = learning_rate_schedule(lr, steps, warmup, decay)
    parts.append(optax.adamw(schedule, b1=0.9, b2=b2, weight_decay=weight_decay))
    return optax.chain(*parts)
