"""A guarded, jitted, sharded optimisation step shared by every training stage.

`make_update_step(loss_fn, optimizer)` returns `step(state, batch) -> (state, metrics)` (one program, for
`jax.jit`; `make_two_program_step` runs the same update as two, for batches whose shapes vary):

    (loss, aux), grads = value_and_grad(loss_fn, has_aux)(state.params, batch)
    if loss and grads are finite:  params, opt_state <- optimizer update
    else:                          params, opt_state unchanged, metrics['skipped'] = 1

The finite check happens on device (`jnp.where` over the trees), so a bad step costs no host round trip;
the host loop reads `skipped` with the other metrics and stops after too many consecutive failures.
Gradient accumulation over `accum` micro-batches (axis 0 of every batch leaf split into `accum` chunks;
0-d leaves, per-step scalars, given whole to each) runs inside the same jitted step with `lax.scan`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar; params and opt_state: pytrees; the optimiser itself is static."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def create(cls, params, optimizer: optax.GradientTransformation) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _split_micro(batch, accum: int):
    """Every leaf `[R, ...]` -> `[accum, R / accum, ...]`; a 0-d leaf (a per-step scalar such as the anchor
    KL coefficient) is the same for every micro-batch, so it is repeated: `[]` -> `[accum]`."""

    def split(x):
        if jnp.ndim(x) == 0:
            return jnp.broadcast_to(x, (accum,))
        if x.shape[0] % accum:
            raise ValueError(f"batch axis {x.shape[0]} is not divisible by grad_accum={accum}")
        return x.reshape((accum, x.shape[0] // accum) + x.shape[1:])

    return jax.tree.map(split, batch)


def make_gradient_step(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]], *, accum: int = 1
) -> Callable[[Any, Any], tuple[tuple[jax.Array, dict], Any]]:
    """`gradients(params, batch) -> ((loss, aux), grads)`: `value_and_grad(loss_fn, has_aux=True)`, over
    `accum` micro-batches (`lax.scan`) when `accum > 1`."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, batch):
        if accum == 1:
            return grad_fn(params, batch)
        micro = _split_micro(batch, accum)

        def body(carry, mb):
            (loss, aux), g = grad_fn(params, mb)
            acc_loss, acc_aux, acc_g = carry
            return (
                acc_loss + loss,
                jax.tree.map(jnp.add, acc_aux, aux),
                jax.tree.map(jnp.add, acc_g, g),
            ), None

        first = jax.tree.map(lambda x: x[0], micro)
        (loss0, aux0), g0 = grad_fn(params, first)
        rest = jax.tree.map(lambda x: x[1:], micro)
        (loss, aux, g), _ = jax.lax.scan(body, (loss0, aux0, g0), rest)
        scale = lambda t: jax.tree.map(lambda x: x / accum, t)
        return (loss / accum, scale(aux)), scale(g)

    return gradients


def apply_gradients(
    state: TrainState, loss: jax.Array, aux: dict, grads, optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict]:
    """The guarded optimiser update (module docstring): `(state, metrics)`, metrics = aux + loss, grad_norm,
    skipped."""
    ok = jnp.isfinite(loss) & tree_all_finite(grads)
    safe_grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), grads)
    updates, new_opt = optimizer.update(safe_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    new_state = TrainState(
        step=state.step + ok.astype(jnp.int32),
        params=keep(new_params, state.params),
        opt_state=keep(new_opt, state.opt_state),
    )
    metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(safe_grads), skipped=1 - ok.astype(jnp.int32))
    return new_state, metrics


def make_update_step(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    accum: int = 1,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """The (un-jitted) guarded update step; wrap it with `jax.jit(..., donate_argnums=0)`."""
    gradients = make_gradient_step(loss_fn, accum=accum)

    def step(state: TrainState, batch) -> tuple[TrainState, dict]:
        (loss, aux), grads = gradients(state.params, batch)
        return apply_gradients(state, loss, aux, grads, optimizer)

    return step


def make_two_program_step(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]],
    optimizer: optax.GradientTransformation,
    *,
    accum: int = 1,
    then: Callable[[TrainState, Any], Any] | None = None,
) -> Callable[[TrainState, Any, Any], tuple[TrainState, Any, dict]]:
    """`make_update_step` as two jitted programs: `step(state, extra, batch) -> (state, extra, metrics)`.

        (loss, aux), grads <- gradients(state.params, batch)     compiled once per batch shape
        state, metrics     <- apply_gradients(state, ...)        compiled once
        extra              <- then(state, extra)                 (in the second program; e.g. an EMA anchor)

    Same arithmetic as the one-program step, in the same order. Use it where the batch's shapes vary from
    step to step (the fine-tuning update's rows and widths): XLA:CPU spends about a third of a one-program
    step's compilation on the optimiser's elementwise update of every parameter (5 s of 15 for the default
    experiment's policy, docs/lab_notes/performance.md), and the split compiles that part once. `state`,
    `extra` and the gradients are donated to the second program.
    """
    gradients = jax.jit(make_gradient_step(loss_fn, accum=accum))

    def apply(state, extra, loss, aux, grads):
        state, metrics = apply_gradients(state, loss, aux, grads, optimizer)
        return state, (then(state, extra) if then is not None else extra), metrics

    apply = jax.jit(apply, donate_argnums=(0, 1, 4))

    def step(state: TrainState, extra, batch):
        (loss, aux), grads = gradients(state.params, batch)
        return apply(state, extra, loss, aux, grads)

    step.programs = {"gradients": gradients, "apply": apply}  # the jitted halves, for inspection
    return step


class BadStepMonitor:
    """Counts consecutive skipped (non-finite) steps on the host; raises after `max_bad_steps`."""

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total = 0

    def update(self, skipped: int, step: int) -> None:
        if skipped:
            self.consecutive += 1
            self.total += 1
            if self.consecutive >= self.max_bad_steps:
                raise FloatingPointError(
                    f"{self.consecutive} consecutive steps with non-finite loss or gradients (last at step "
                    f"{step}); stopping. Lower the learning rate or check the rewards and log-probs."
                )
        else:
            self.consecutive = 0
