"""Packing a sampler's (prompt, M completions) output into one `[B*M, Tp+Tc]` batch of full sequences.

Inputs, as the sampler produces them:

    prompt_tokens_BTp       int   left-padded prompts, bos first: [pad .. pad, bos, p_1 .. p_k]
    completion_tokens_BMTc  int   M completions per prompt, right-aligned garbage after each length
    completion_lengths_BM   int   real completion tokens of each (its eos included when it has one)

Output rows r = b * M + i (the order of `tile_cache`, so `reshape(B, M)` recovers the group axis):

    tokens_RT[r] = prompt_tokens_BTp[b] ++ completion_tokens_BMTc[b, i]   with T = Tp + Tc
    valid_RT[r]  = prompt_valid_BTp[b]  ++ (arange(Tc) < completion_lengths_BM[b, i])

and tokens set to `pad_id` wherever `valid_RT` is False. A row is therefore
`[pad*][bos] prompt completion [pad*]`: padding on both sides, which the decoder handles exactly because
positions and attention masks come from `valid_RT` (`positions_from_valid`, `causal_mask`). Its real tokens
are those of `sequence_batch`'s `[bos] prompt completion [eos]` when the completion ends with eos, so a
verifier trained on text scores sampled tokens on the same inputs.

Pure `jax.numpy` (jit-able; numpy inputs are fine too).
"""

from __future__ import annotations

import jax.numpy as jnp


def pack_prompt_completion(prompt_tokens_BT, completion_tokens_BMT, completion_lengths_BM, pad_id: int = 0,
                           prompt_valid_BT=None):
    """`(tokens_RT int32, valid_RT bool)`: R = B*M rows of T = Tp + Tc tokens (see the module docstring).

    `prompt_valid_BT` defaults to `prompt_tokens_BT != pad_id`. Completion lengths are clipped to [0, Tc].
    """
    prompt_BT = jnp.asarray(prompt_tokens_BT, jnp.int32)
    comp_BMT = jnp.asarray(completion_tokens_BMT, jnp.int32)
    lengths_BM = jnp.asarray(completion_lengths_BM, jnp.int32)
    if prompt_BT.ndim != 2 or comp_BMT.ndim != 3 or lengths_BM.ndim != 2:
        raise ValueError(
            f"expected prompt [B, Tp], completions [B, M, Tc], lengths [B, M]; got shapes "
            f"{prompt_BT.shape}, {comp_BMT.shape}, {lengths_BM.shape}")
    B, Tp = prompt_BT.shape
    B2, M, Tc = comp_BMT.shape
    if B2 != B or lengths_BM.shape != (B, M):
        raise ValueError(f"batch mismatch: prompt {prompt_BT.shape}, completions {comp_BMT.shape}, "
                         f"lengths {lengths_BM.shape}")
    if prompt_valid_BT is None:
        prompt_valid_BT = prompt_BT != pad_id
    prompt_valid_BT = jnp.asarray(prompt_valid_BT, bool)

    comp_valid_BMT = jnp.arange(Tc)[None, None, :] < lengths_BM[:, :, None]
    full_BMT = jnp.concatenate([jnp.broadcast_to(prompt_BT[:, None, :], (B, M, Tp)), comp_BMT], axis=-1)
    full_valid_BMT = jnp.concatenate(
        [jnp.broadcast_to(prompt_valid_BT[:, None, :], (B, M, Tp)), comp_valid_BMT], axis=-1)
    full_BMT = jnp.where(full_valid_BMT, full_BMT, jnp.int32(pad_id))
    T = Tp + Tc
    return full_BMT.reshape(B * M, T), full_valid_BMT.reshape(B * M, T)
