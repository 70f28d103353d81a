"""Teacher-forced log-probs of given completions, without ever holding the [rows, T, V] logits.

    sequence_logprobs(params, cfg, prompts_BT, completions_BMT, ...) -> logprobs_BMT float32
    taken_logprobs(h_RD, embedding_VD, tokens_R, ...)                 -> logprobs_R float32

These are the `logp_BM` (summed over tokens) and `expert_logp_B` the objectives differentiate
(docs/objectives.md, "Inputs"). For one row r (a flattened (sample, position) pair) whose taken token is
c_r and whose final-normed hidden state is h_r, with the tied embedding E [V, D] (`models/transformer.py`):

    z_r = h_r E^T   (float32 accumulation),   l_r = c_f tanh(z_r / c_f)   (Gemma 2's final soft-cap;
    l_r = z_r without one),   s_r = l_r / tau,   logp_r = s_rc_r - logsumexp_v s_rv

`taken_logprobs` walks over the R rows in chunks of C rows (`lax.map`), holding one chunk's [C, V] logits
at a time and keeping per row only the logsumexp and the taken logit; with Gemma 3's V = 262,144 the full
logits of B * M = 128 rows of 192 tokens would be 128 * 192 * 262,144 * 4 bytes = 25.8 GB. Its backward
pass (`jax.custom_vjp`) recomputes each chunk's logits rather than saving them. With p_r = softmax(s_r)
and an incoming cotangent g_r,

    d logp_r / d z_rv = (1[v = c_r] - p_rv) (1 - (l_rv / c_f)^2) / tau     (no cap: the last factor is 1)
    grad h_r = sum_v g_r (d logp_r / d z_rv) E_v,     grad E_v = sum_r g_r (d logp_r / d z_rv) h_r

the second accumulated over the chunks by a `lax.scan`. Peak memory: a chunk's [C, V] logits and a few
temporaries of that size, plus grad E [V, D] (the size of the embedding) in the backward pass.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from bon_jax.models.cache import init_cache, tile_cache
from bon_jax.models.config import ModelConfig
from bon_jax.models.masks import causal_mask, positions_from_valid, take_last_valid, valid_from_lengths
from bon_jax.models.transformer import Transformer
from bon_jax.models.unembed import CHUNK_ELEMENTS, chunk_rows, taken_logprobs  # noqa: F401  (re-exported)


def prompt_valid(prompts_BT, prompt_lengths_B, pad_id, padding_side):
    """Real prompt tokens [B, T]: the first/last `prompt_lengths_B` (per `padding_side`), else != pad_id."""
    if prompt_lengths_B is None:
        return prompts_BT != pad_id
    return valid_from_lengths(jnp.asarray(prompt_lengths_B), prompts_BT.shape[1], padding_side)


def sequence_logprobs(params, model_cfg: ModelConfig, prompts_BT, completions_BMT, *,
                      completion_lengths_BM=None, prompt_lengths_B=None,
                      padding_side: str = "right", pad_id: int = 0, temperature: float = 1.0,
                      share_prompt: bool = True, chunk: int | None = None):
    """Teacher-forced per-token log-probs of completions: float32 [B, M, T_c], 0 past each length.

        logprobs[b, i, j] = log softmax(l / temperature)[c_bij],  l = policy logits after
                            prompt_b, c_bi0 .. c_bi(j-1)

    Pure and differentiable in params (call it inside the trainer's jit). The B * M * T_c predicting
    hidden states are unembedded by `taken_logprobs` in chunks of `chunk` rows (default `chunk_rows`):
    memory grows with V by one chunk's logits, not by B * M * T_c of them. Real prompt tokens come
    from `prompt_lengths_B` / `padding_side` or `!= pad_id`, as in `sampling.sample`; real completion
    tokens are the first `completion_lengths_BM` (default: those != pad_id).

    `share_prompt` (default): each prompt runs through the model once, [B, T], writing its keys/values
    into a cache of T + T_c slots; the cache is tiled M times and the B * M completions [B * M, T_c] run
    against it, so the prompt's projections and MLPs cost B rows, not B * M (gradients reach the prompt's
    keys/values through the tiling, summed over its M completions). `share_prompt=False`: one full forward
    of the B * M concatenated (prompt, completion) rows, the reference the tests hold it to.
    """
    prompts_BT = jnp.asarray(prompts_BT, jnp.int32)
    completions_BMT = jnp.asarray(completions_BMT, jnp.int32)
    if prompts_BT.ndim != 2 or completions_BMT.ndim != 3 or completions_BMT.shape[0] != prompts_BT.shape[0]:
        raise ValueError(f"sequence_logprobs wants prompts [B, T] and completions [B, M, T_c], got "
                         f"{prompts_BT.shape} and {completions_BMT.shape}")
    if not temperature > 0:
        raise ValueError(f"sequence_logprobs: temperature must be > 0, got {temperature}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"sequence_logprobs: padding_side must be 'left' or 'right', got {padding_side!r}")
    B, M, Tc = completions_BMT.shape
    T = prompts_BT.shape[1]
    pvalid_BT = prompt_valid(prompts_BT, prompt_lengths_B, pad_id, padding_side)
    if completion_lengths_BM is None:
        cvalid_BMT = completions_BMT != pad_id
    else:
        cvalid_BMT = jnp.arange(Tc) < jnp.asarray(completion_lengths_BM)[..., None]
    model = Transformer(model_cfg)
    hidden = functools.partial(model.apply, {"params": params}, method=Transformer.hidden_states)
    if share_prompt:
        # The prompt's hidden states and keys/values once per prompt. A real completion token sits at
        # position (real prompt tokens) + (real completion tokens before it) and reads the prompt's real
        # slots and its own real slots up to itself: the masks and positions of the full forward.
        cache = init_cache(model_cfg, B, T + Tc)
        h_BTD, cache = hidden(prompts_BT, positions_from_valid(pvalid_BT), causal_mask(pvalid_BT, T + Tc),
                              cache)
        h_last_RD = jnp.repeat(take_last_valid(h_BTD, pvalid_BT), M, axis=0)
        cvalid_RTc = cvalid_BMT.reshape(B * M, Tc)
        plen_R = jnp.repeat(pvalid_BT.sum(-1, dtype=jnp.int32), M)
        positions_RTc = jnp.where(cvalid_RTc, plen_R[:, None] + positions_from_valid(cvalid_RTc), 0)
        prompt_part_RTcT = jnp.broadcast_to(jnp.repeat(pvalid_BT, M, axis=0)[:, None, :], (B * M, Tc, T))
        mask_RTcS = jnp.concatenate([prompt_part_RTcT, causal_mask(cvalid_RTc)], axis=-1)
        h_RTcD, _ = hidden(completions_BMT.reshape(B * M, Tc), positions_RTc, mask_RTcS,
                           tile_cache(cache, M))
        h_prev_RTcD = jnp.concatenate([h_last_RD[:, None], h_RTcD[:, :Tc - 1]], axis=1)
    else:
        pvalid_RT = jnp.repeat(pvalid_BT, M, axis=0)
        tokens_RT = jnp.concatenate([jnp.repeat(prompts_BT, M, axis=0),
                                     completions_BMT.reshape(B * M, Tc)], axis=1)
        valid_RT = jnp.concatenate([pvalid_RT, cvalid_BMT.reshape(B * M, Tc)], axis=1)
        h_RTD, _ = hidden(tokens_RT, positions_from_valid(valid_RT), causal_mask(valid_RT))
        # Completion token j is predicted by the hidden state one real token earlier: the prompt's last
        # real token for j = 0, completion token j - 1 otherwise.
        h_prev_RTcD = jnp.concatenate([take_last_valid(h_RTD[:, :T], pvalid_RT)[:, None],
                                       h_RTD[:, T:T + Tc - 1]], axis=1)
    logprobs_R = taken_logprobs(
        h_prev_RTcD.reshape(B * M * Tc, -1), params["embedder"]["input_embedding"],
        completions_BMT.reshape(-1), temperature=temperature,
        final_logit_soft_cap=model_cfg.final_logit_soft_cap, compute_dtype=model_cfg.compute_dtype,
        chunk=chunk)
    return jnp.where(cvalid_BMT, logprobs_R.reshape(B, M, Tc), 0.0)


__all__ = ["CHUNK_ELEMENTS", "chunk_rows", "prompt_valid", "sequence_logprobs", "taken_logprobs"]
