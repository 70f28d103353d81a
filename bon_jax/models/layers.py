"""Building blocks of the decoder: RMSNorm, einsum projections, the tied embedder, the GeGLU MLP.

Parameters are stored in `param_dtype` and cast to the compute `dtype` where they are used.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bon_jax.models.products import einsum_as_contraction


class RMSNorm(nn.Module):
    """Gemma's RMSNorm over the last axis: `x / sqrt(mean(x^2) + eps) * (1 + scale)`, scale init 0.

    The statistics are computed in float32 whatever the input dtype; the output has the input's dtype.
    """

    eps: float = 1e-6
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + scale.astype(jnp.float32))).astype(x.dtype)


class Einsum(nn.Module):
    """A weight `w` of `shape` contracted with the input by `equation` (input first, `w` second).

    `in_axis` / `out_axis` / `batch_axis` index `w`'s axes for the fan-in-scaled init (LeCun normal).
    """

    shape: tuple[int, ...]
    in_axis: int | Sequence[int] = -2
    out_axis: int | Sequence[int] = -1
    batch_axis: Sequence[int] = ()
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        init = nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=self.in_axis, out_axis=self.out_axis,
            batch_axis=self.batch_axis)
        self.w = self.param("w", init, self.shape, self.param_dtype)

    def __call__(self, equation: str, x):
        return einsum_as_contraction(equation, x.astype(self.dtype), self.w.astype(self.dtype))

    def per_slice(self, equation: str, x):
        """`equation` contracted with each slice w[c] of the weight's first axis, one product each."""
        return tuple(einsum_as_contraction(equation, x.astype(self.dtype), w.astype(self.dtype))
                     for w in self.w)


class Embedder(nn.Module):
    """The tied embedding table `input_embedding` [V, D].

    `encode` looks tokens up and multiplies by sqrt(D) (so unit-variance rows give unit-scale inputs);
    `decode` maps hidden states to logits with the same table, accumulated in float32.
    """

    vocab_size: int
    embed_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        # std D^-1/2: the inputs (times sqrt(D)) have unit scale and the initial logits of a unit-RMS
        # hidden state have unit scale too.
        self.input_embedding = self.param(
            "input_embedding", nn.initializers.normal(stddev=self.embed_dim**-0.5),
            (self.vocab_size, self.embed_dim), self.param_dtype)

    def encode(self, tokens_BT):
        return embed(self.input_embedding, tokens_BT, self.dtype)

    def decode(self, x_BTD):
        return unembed(self.input_embedding, x_BTD, self.dtype)


def embed(table_VD, tokens, dtype):
    """`table[tokens] * sqrt(D)` in `dtype` (Gemma rounds the scale to the compute dtype before multiplying)."""
    x = jnp.take(table_VD, tokens, axis=0).astype(dtype)
    return x * jnp.asarray(table_VD.shape[-1] ** 0.5, dtype)


def unembed(table_VD, x_D, dtype):
    """Logits `x E^T` over the tied table, inputs in `dtype`, accumulated in float32: [..., D] -> [..., V]."""
    return jnp.einsum("...D,VD->...V", x_D.astype(dtype), table_VD.astype(dtype),
                      preferred_element_type=jnp.float32)


class FeedForward(nn.Module):
    """GeGLU: `linear(gelu_tanh(x @ W_gate) * (x @ W_up))`.

    Params: `gating_einsum/w` [2, D, F] (gate, up) and `linear/w` [F, D].
    """

    embed_dim: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BTD):
        # Two products, not one stacked [2, B, T, F] output: the stacked product's backward pads each
        # half's gradient back to [2, B, T, F] and transposes it (issue 14's profile of the update).
        gate_BTF, up_BTF = Einsum((2, self.embed_dim, self.mlp_dim), in_axis=1, out_axis=2,
                                  batch_axis=(0,), dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="gating_einsum").per_slice("BTD,DF->BTF", x_BTD)
        hidden_BTF = geglu(gate_BTF, up_BTF)
        return Einsum((self.mlp_dim, self.embed_dim), in_axis=0, out_axis=1, dtype=self.dtype,
                      param_dtype=self.param_dtype, name="linear")("BTF,FD->BTD", hidden_BTF)


def geglu(gate, up):
    """GeGLU's hidden activation: `gelu_tanh(gate) * up`."""
    return nn.gelu(gate, approximate=True) * up


def next_token_logprobs(logits_BTV, tokens_BT):
    """[B, T] float32: log p(tokens[b, t] | tokens[b, <t]) read off the logits at t - 1 (0 at t = 0)."""
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    next_BT = jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    return jnp.pad(next_BT, ((0, 0), (1, 0)))


def soft_cap(x, cap: float | None):
    """`cap * tanh(x / cap)`: bounds |x| by cap, identity near 0. `None` leaves x unchanged."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap
