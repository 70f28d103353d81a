"""Building a model from a config, initialising its params (concretely or abstractly) and counting them."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.models.config import ModelConfig
from bon_jax.models.masks import causal_mask
from bon_jax.models.transformer import ScalarHeadTransformer, Transformer


def make_model(cfg: ModelConfig, *, scalar_head: bool = False) -> Transformer | ScalarHeadTransformer:
    """The Flax module: the language model, or with `scalar_head` the verifier / value model."""
    return ScalarHeadTransformer(cfg) if scalar_head else Transformer(cfg)


def init_params(cfg: ModelConfig, rng: jax.Array, *, scalar_head: bool = False) -> dict:
    """Freshly initialised params (a nested dict of arrays in `cfg.param_dtype`), built by one jitted
    computation. Pass the result to the modules as `apply({'params': params}, ...)`."""
    return _jitted_init(cfg, scalar_head)(rng)


@functools.cache
def _jitted_init(cfg: ModelConfig, scalar_head: bool):
    def init(rng):
        tokens_BT = jnp.zeros((1, 1), jnp.int32)
        variables = make_model(cfg, scalar_head=scalar_head).init(
            rng, tokens_BT, jnp.zeros_like(tokens_BT), causal_mask(jnp.ones((1, 1), bool)))
        return variables["params"]

    return jax.jit(init)


def abstract_params(cfg: ModelConfig, *, scalar_head: bool = False) -> dict:
    """The params' `jax.ShapeDtypeStruct`s via `jax.eval_shape`: no memory, even for 9B."""
    init = functools.partial(init_params, cfg, scalar_head=scalar_head)
    return jax.eval_shape(init, jax.random.key(0))


def count_params(params) -> int:
    """Total number of scalars in a params pytree (concrete or abstract)."""
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(params)))
