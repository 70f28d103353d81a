"""bon_jax.models.products: weight products with a CPU-friendly weight gradient, checked against
jnp.einsum in float64 (values and both gradients), and against XLA's compiled backward (no dot that
contracts the rows' leading axis)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.models.layers import FeedForward
from bon_jax.models.products import contract, einsum_as_contraction, weight_gradient

EQUATIONS = [
    # (equation, x shape, w shape): the model's projections, and shapes that go to jnp.einsum.
    ("BTD,DF->BTF", (2, 3, 4), (4, 5)),
    ("BTF,FD->BTD", (2, 3, 5), (5, 4)),
    ("BTD,HDE->BTHE", (2, 3, 4), (2, 4, 3)),
    ("BTD,CGDE->BTCGE", (2, 3, 4), (2, 1, 4, 3)),
    ("BTHE,HED->BTD", (2, 3, 2, 3), (2, 3, 4)),
    ("BTHE,EHD->BTD", (2, 3, 2, 3), (3, 2, 4)),  # w's contracted axes in another order
    ("BTD,CGDE->CBTGE", (2, 3, 4), (2, 1, 4, 3)),  # output not lead + kept: plain einsum
    ("BD,BDF->BF", (2, 4), (2, 4, 5)),  # a batch axis shared with w: plain einsum
]


@pytest.mark.parametrize("equation,x_shape,w_shape", EQUATIONS)
def test_einsum_as_contraction_matches_einsum_and_its_gradients(equation, x_shape, w_shape):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=x_shape))
        w = jnp.asarray(rng.normal(size=w_shape))
        out_ref = jnp.einsum(equation, x, w)
        g = jnp.asarray(rng.normal(size=out_ref.shape))

        def loss(fn):
            return lambda x, w: jnp.sum(fn(equation, x, w) * g)

        np.testing.assert_allclose(einsum_as_contraction(equation, x, w), out_ref, rtol=1e-12)
        got = jax.grad(loss(einsum_as_contraction), argnums=(0, 1))(x, w)
        want = jax.grad(loss(jnp.einsum), argnums=(0, 1))(x, w)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_in,n_out", [(3, 7), (7, 3)])  # each of the two transposition branches
def test_weight_gradient_is_x_transposed_dy(n_in, n_out):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x, dy = rng.normal(size=(11, n_in)), rng.normal(size=(11, n_out))
        np.testing.assert_allclose(weight_gradient(jnp.asarray(x), jnp.asarray(dy)), x.T @ dy, rtol=1e-12)


def test_contract_refuses_mismatched_axes():
    with pytest.raises(ValueError, match="last 1 axes"):
        contract(jnp.ones((2, 3)), jnp.ones((4, 5)), 1)


def test_feed_forward_backward_has_no_dot_over_the_rows_leading_axis():
    """The point of the module: XLA:CPU compiles every dot of the MLP's backward in canonical form
    (a dot contracting dim 0 of its lhs is the one that made XLA copy a transposed [F, rows] operand)."""
    ff = FeedForward(16, 64)
    x = jnp.ones((4, 8, 16))
    params = ff.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(ff.apply(p, x) ** 2), argnums=(0, 1)))
    hlo = grad.lower(params, x).compile().as_text()
    dots = re.findall(r"dot\([^\n]*lhs_contracting_dims=\{(\d+)\}", hlo)
    assert "0" not in dots, "a weight-gradient dot contracts its lhs's leading axis: " + str(dots)
