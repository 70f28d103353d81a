"""Log-probs of taken tokens from final hidden states, in chunks of rows: never the [R, V] logits.

    taken_logprobs(h_RD, embedding_VD, tokens_R, ...) -> logprobs_R float32

The maths (forward, the custom VJP and its memory) is in the docstring of `bon_jax.logprobs`, which
builds teacher-forced sequence log-probs on it; the SFT loss (`train/lm.py`) and the verifier's surprisal
(`models/transformer.py`) use it too. It sits in `models` so that the decoder itself can call it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from bon_jax.models.products import weight_gradient

# Default chunk: C = this // V rows (at least 1, at most R), so one chunk's float32 logits are <= 64 MiB.
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(num_rows: int, vocab_size: int, chunk: int | None = None) -> int:
    """Rows per chunk: `chunk` if given, else CHUNK_ELEMENTS // V, clipped to [1, num_rows]."""
    if chunk is None:
        chunk = CHUNK_ELEMENTS // vocab_size
    return max(1, min(int(chunk), num_rows))


def _soft_capped(z, cap):
    """(l, tanh(z / cap) or None): the final soft-cap of `layers.soft_cap`, keeping tanh for the VJP."""
    if cap is None:
        return z, None
    t = jnp.tanh(z / cap)
    return t * cap, t


def _chunked(x, n_chunks: int, c: int):
    """[R, ...] -> [n_chunks, c, ...], zero-padded at the end."""
    pad = n_chunks * c - x.shape[0]
    return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(n_chunks, c, *x.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _taken_logprobs(h_RD, embedding_VD, tokens_R, temperature, cap, c, dtype):
    return _taken_fwd(h_RD, embedding_VD, tokens_R, temperature, cap, c, dtype)[0]


def _taken_fwd(h_RD, embedding_VD, tokens_R, temperature, cap, c, dtype):
    R = h_RD.shape[0]
    n_chunks = -(-R // c)
    e_VD = embedding_VD.astype(dtype)

    def one_chunk(xs):
        h_CD, tokens_C = xs
        z_CV = jnp.einsum("CD,VD->CV", h_CD.astype(dtype), e_VD, preferred_element_type=jnp.float32)
        s_CV = _soft_capped(z_CV, cap)[0]
        if temperature != 1:
            s_CV = s_CV / temperature
        lse_C = jax.nn.logsumexp(s_CV, axis=-1)
        return jnp.take_along_axis(s_CV, tokens_C[:, None], axis=-1)[:, 0] - lse_C, lse_C

    logp_IC, lse_IC = lax.map(one_chunk, (_chunked(h_RD, n_chunks, c), _chunked(tokens_R, n_chunks, c)))
    return logp_IC.reshape(-1)[:R], (h_RD, embedding_VD, tokens_R, lse_IC.reshape(-1)[:R])


def _taken_bwd(temperature, cap, c, dtype, residuals, g_R):
    h_RD, embedding_VD, tokens_R, lse_R = residuals
    R, D = h_RD.shape
    V = embedding_VD.shape[0]
    n_chunks = -(-R // c)
    e_VD = embedding_VD.astype(dtype)

    def one_chunk(grad_e_VD, xs):
        h_CD, tokens_C, lse_C, g_C = xs
        h_CD = h_CD.astype(dtype)
        z_CV = jnp.einsum("CD,VD->CV", h_CD, e_VD, preferred_element_type=jnp.float32)
        l_CV, t_CV = _soft_capped(z_CV, cap)
        p_CV = jnp.exp(l_CV / temperature - lse_C[:, None])
        taken_CV = tokens_C[:, None] == lax.broadcasted_iota(tokens_C.dtype, z_CV.shape, 1)
        dz_CV = (jnp.where(taken_CV, 1.0, 0.0) - p_CV) * (g_C / temperature)[:, None]
        if t_CV is not None:
            dz_CV = dz_CV * (1.0 - t_CV * t_CV)
        dz_CV = dz_CV.astype(dtype)
        grad_h_CD = jnp.einsum("CV,VD->CD", dz_CV, e_VD, preferred_element_type=jnp.float32)
        grad_e_VD = grad_e_VD + weight_gradient(dz_CV, h_CD, preferred_element_type=jnp.float32)
        return grad_e_VD, grad_h_CD

    xs = tuple(_chunked(x, n_chunks, c) for x in (h_RD, tokens_R, lse_R, g_R))
    grad_e_VD, grad_h_ICD = lax.scan(one_chunk, jnp.zeros((V, D), jnp.float32), xs)
    grad_h_RD = grad_h_ICD.reshape(-1, D)[:R].astype(h_RD.dtype)
    return grad_h_RD, grad_e_VD.astype(embedding_VD.dtype), None


_taken_logprobs.defvjp(_taken_fwd, _taken_bwd)


def taken_logprobs(h_RD, embedding_VD, tokens_R, *, temperature: float = 1.0,
                   final_logit_soft_cap: float | None = None, compute_dtype=jnp.float32,
                   chunk: int | None = None):
    """log softmax(soft_cap(h_r E^T, c_f) / temperature)[tokens_r] for each row r: float32 [R].

    The unembedding of `Transformer.logits` (h and E cast to `compute_dtype`, float32 accumulation),
    computed in chunks of `chunk` rows (default `chunk_rows`) so that no [R, V] array exists, with a
    backward pass that recomputes each chunk (module docstring). Differentiable in h_RD and embedding_VD.
    """
    if h_RD.ndim != 2 or embedding_VD.ndim != 2 or h_RD.shape[1] != embedding_VD.shape[1]:
        raise ValueError(f"taken_logprobs wants h [R, D] and embedding [V, D], got {h_RD.shape} and "
                         f"{embedding_VD.shape}")
    if tokens_R.shape != h_RD.shape[:1]:
        raise ValueError(f"taken_logprobs: tokens {tokens_R.shape} do not match h {h_RD.shape}")
    if not temperature > 0:
        raise ValueError(f"taken_logprobs: temperature must be > 0, got {temperature}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"taken_logprobs: chunk must be >= 1, got {chunk}")
    if h_RD.shape[0] == 0:
        return jnp.zeros((0,), jnp.float32)
    c = chunk_rows(h_RD.shape[0], embedding_VD.shape[0], chunk)
    return _taken_logprobs(h_RD, embedding_VD, tokens_R.astype(jnp.int32), float(temperature),
                           None if final_logit_soft_cap is None else float(final_logit_soft_cap), c,
                           jnp.dtype(compute_dtype))
