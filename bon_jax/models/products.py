"""Weight products `x . w` whose weight gradient XLA:CPU computes with its fast dot emitter.

For y = x w with x [R, In] (R rows: batch x positions) and w [In, Out], the weight gradient is
dW = x^T dy, a dot that contracts the *leading* axis of both operands. XLA:CPU's fast emitter (YNNPACK)
takes only the canonical form [a, k] @ [k, b]; for the other it writes a transposed copy of one operand,
often the larger, recomputing the elementwise backward that produced it, and runs the dot on the slower
Eigen path. Issue 14's profile of the update (`small` config, 8 x 32 rows of 64 tokens) found such a
copy of a [1024, 16384] operand in every feed-forward block, each about as long as a whole matmul.

`contract` and `weight_gradient` transpose the *smaller* of x and dy explicitly, behind
`lax.optimization_barrier` so that XLA cannot fold the transpose back into the dot's dimension numbers,
and contract in canonical form. The values are those of x^T dy up to float rounding (the sums run in
another order). Off CPU the plain products are used: TPU and GPU compilers choose operand layouts for
dots themselves.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def weight_gradient(x, dy, preferred_element_type=None):
    """x^T dy for x [R, In] and dy [R, Out]: [In, Out], summed over the rows R."""
    if not _on_cpu():
        return jnp.einsum("ri,ro->io", x, dy, preferred_element_type=preferred_element_type)
    if x.shape[1] <= dy.shape[1]:
        return jnp.matmul(lax.optimization_barrier(x.T), dy, preferred_element_type=preferred_element_type)
    # The product's transpose is weight-sized; the barrier keeps XLA from folding it into the dot.
    dw_T = jnp.matmul(lax.optimization_barrier(dy.T), x, preferred_element_type=preferred_element_type)
    return lax.optimization_barrier(dw_T).T


@jax.custom_vjp
def _matmul(x, w):
    return jnp.matmul(x, w)


def _matmul_fwd(x, w):
    return jnp.matmul(x, w), (x, w)


def _matmul_bwd(residuals, dy):
    x, w = residuals
    return jnp.matmul(dy, w.T), weight_gradient(x, dy).astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def contract(x, w, k: int):
    """x [*lead, *K] . w [*K, *out] -> [*lead, *out]: the last k axes of x against the first k of w.

    The same values as `jnp.tensordot(x, w, k)`; the weight gradient is `weight_gradient`'s on CPU.
    """
    lead, inner, out = x.shape[: x.ndim - k], x.shape[x.ndim - k:], w.shape[k:]
    if tuple(w.shape[:k]) != tuple(inner):
        raise ValueError(f"contract: x's last {k} axes {inner} are not w's first {k} {w.shape[:k]}")
    if not _on_cpu():
        return jnp.tensordot(x, w, k)
    n_in = math.prod(inner)
    y = _matmul(x.reshape(-1, n_in), w.reshape(n_in, -1))
    return y.reshape(*lead, *out)


def einsum_as_contraction(equation: str, x, w):
    """`jnp.einsum(equation, x, w)` for equations that contract x's trailing axes with axes of w and
    keep x's leading axes first in the output, e.g. "BTD,HDE->BTHE" or "BTHE,HED->BTD"; computed by
    `contract` (w's axes are permuted first: cheap, w is a weight). Other equations go to `jnp.einsum`."""
    inputs, out_sub = equation.replace(" ", "").split("->")
    x_sub, w_sub = inputs.split(",")
    summed = [c for c in x_sub if c in w_sub and c not in out_sub]
    kept_w = [c for c in w_sub if c not in x_sub]
    lead = x_sub[: len(x_sub) - len(summed)]
    plain = (
        "." in equation
        or not summed
        or len(set(x_sub)) != len(x_sub)
        or len(set(w_sub)) != len(w_sub)
        or set(x_sub[len(lead):]) != set(summed)
        or any(c in w_sub for c in lead)
        or out_sub[: len(lead)] != lead
        or sorted(out_sub[len(lead):]) != sorted(kept_w)
    )
    if plain:
        return jnp.einsum(equation, x, w)
    w_order = x_sub[len(lead):] + out_sub[len(lead):]
    w = jnp.transpose(w, [w_sub.index(c) for c in w_order]) if w_order != w_sub else w
    return contract(x, w, len(summed))
