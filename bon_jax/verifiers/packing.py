"""Packing a sampler's (prompt, N completions) output into one `[B*N, Tp+Tc]` batch of full sequences.

Inputs, as the sampler produces them:

    prompt_tokens_BTp       int   left-padded prompts, bos first: [pad .. pad, bos, p_1 .. p_k]
    completion_tokens_BNTc  int   N completions per prompt, right-aligned garbage after each length
    completion_lengths_BN   int   real completion tokens of each (its eos included when it has one)

Output rows m = b * N + n (the order of `tile_cache`, so `reshape(B, N)` recovers the group axis):

    tokens_MS[m] = prompt_tokens_BTp[b] ++ completion_tokens_BNTc[b, n]   with S = Tp + Tc
    valid_MS[m]  = prompt_valid_BTp[b]  ++ (arange(Tc) < completion_lengths_BN[b, n])

and tokens set to `pad_id` wherever `valid_MS` is False. A row is therefore
`[pad*][bos] prompt completion [pad*]`: padding on both sides, which the decoder handles exactly because
positions and attention masks come from `valid_MS` (`positions_from_valid`, `causal_mask`). Its real tokens
are those of `sequence_batch`'s `[bos] prompt completion [eos]` when the completion ends with eos, so a
verifier trained on text scores sampled tokens on the same inputs.

Pure `jax.numpy` (jit-able; numpy inputs are fine too).
"""

from __future__ import annotations

import jax.numpy as jnp


def pack_prompt_completion(prompt_tokens_BT, completion_tokens_BNT, completion_lengths_BN, pad_id: int = 0,
                           prompt_valid_BT=None):
    """Returns `(tokens_MS int32, valid_MS bool)` with M = B*N, S = Tp + Tc (see the module docstring).

    `prompt_valid_BT` defaults to `prompt_tokens_BT != pad_id`. Completion lengths are clipped to [0, Tc].
    """
    prompt_BT = jnp.asarray(prompt_tokens_BT, jnp.int32)
    comp_BNT = jnp.asarray(completion_tokens_BNT, jnp.int32)
    lengths_BN = jnp.asarray(completion_lengths_BN, jnp.int32)
    if prompt_BT.ndim != 2 or comp_BNT.ndim != 3 or lengths_BN.ndim != 2:
        raise ValueError(
            f"expected prompt [B, Tp], completions [B, N, Tc], lengths [B, N]; got shapes "
            f"{prompt_BT.shape}, {comp_BNT.shape}, {lengths_BN.shape}")
    B, Tp = prompt_BT.shape
    B2, N, Tc = comp_BNT.shape
    if B2 != B or lengths_BN.shape != (B, N):
        raise ValueError(f"batch mismatch: prompt {prompt_BT.shape}, completions {comp_BNT.shape}, "
                         f"lengths {lengths_BN.shape}")
    if prompt_valid_BT is None:
        prompt_valid_BT = prompt_BT != pad_id
    prompt_valid_BT = jnp.asarray(prompt_valid_BT, bool)

    comp_valid_BNT = jnp.arange(Tc)[None, None, :] < lengths_BN[:, :, None]
    tokens_BNS = jnp.concatenate([jnp.broadcast_to(prompt_BT[:, None, :], (B, N, Tp)), comp_BNT], axis=-1)
    valid_BNS = jnp.concatenate(
        [jnp.broadcast_to(prompt_valid_BT[:, None, :], (B, N, Tp)), comp_valid_BNT], axis=-1)
    tokens_BNS = jnp.where(valid_BNS, tokens_BNS, jnp.int32(pad_id))
    S = Tp + Tc
    return tokens_BNS.reshape(B * N, S), valid_BNS.reshape(B * N, S)
