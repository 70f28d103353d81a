"""Best-of-N sampling: prefill each prompt once, decode N continuations from a KV cache tiled N times.

    sample(params, cfg, prompts_BT, n, rng, max_new_tokens=...) -> SampleOutput(tokens_BNT,
                                                                            logprobs_BNT, lengths_BN)

Pipeline (two jitted functions, compiled once per shape bucket and static settings):
1. `_prefill` runs the prompts [B, T] through the model into a cache of S = T + max_new_tokens - 1
   slots, unembeds only each row's last real token, and tiles logits and cache to R = B * N rows
   (row b * N + i is sample i of prompt b).
2. `_decode` samples token 0 from those logits, then a `lax.while_loop` feeds each sampled token back
   (one cache slot per step) and samples the next, until every row has stopped or max_new_tokens tokens
   exist. The cache is donated to it and returned, so XLA updates it in place.

Sampling distribution at each step, from the policy logits l (float32, after the final soft-cap):
temperature l / tau, then top-k (the k largest, `lax.top_k`, no full sort), then top-p (the smallest
prefix of the sorted candidates whose mass reaches p; ties at the cut-off are kept), then a categorical
draw. `greedy` (or temperature 0) takes argmax l.

Log-probs: by default `log softmax(l)[token]`, the policy at temperature 1 whatever the sampling settings
(what the objectives need); `logprobs='sampling'` gives the log-prob under the distribution actually
sampled from (0 for greedy). Positions after a row has stopped hold `pad_id` and log-prob 0.

RNG: the key of sample i of prompt b at step t is
    fold_in(fold_in(fold_in(rng, prompt_id_b), i), t)
with `prompt_ids_B` defaulting to arange(B): a prompt's samples do not depend on its batch position or
neighbours, and prefill-once + tile draws exactly what decoding N copies of the prompt would.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from bon_jax.errors import ConfigError
from bon_jax.models.cache import KVCache, init_cache, tile_cache
from bon_jax.models.config import ModelConfig
from bon_jax.models.masks import (
    causal_mask,
    positions_from_valid,
    take_last_valid,
    valid_from_lengths,
)
from bon_jax.models.transformer import Transformer

# How often each jitted function was traced (a Python side effect that runs only while tracing): tests
# and benchmarks read it to check that a second call with the same shapes does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class SampleOutput:
    """tokens_BNT int32 (pad_id after a stop), logprobs_BNT float32 (0 after a stop), lengths_BN int32
    (generated tokens, counting the stop token)."""

    tokens_BNT: jax.Array
    logprobs_BNT: jax.Array
    lengths_BN: jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The static part of a sampling call: changing any field compiles a new decode loop."""

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0
    logprobs: str = "policy"

    def validate(self, vocab_size: int) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("sampling.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError("sampling.temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= vocab_size:
            raise ConfigError("sampling.top_k", f"must be in [1, {vocab_size}], got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError("sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.logprobs not in ("policy", "sampling"):
            raise ConfigError("sampling.logprobs", f"'policy' or 'sampling', got {self.logprobs!r}")


# ----------------------------------------------------------------------------- one sampling step


def _nucleus_keep(sorted_logits_RK, top_p: float):
    """Keep-mask over logits sorted in descending order: the prefix whose mass first reaches top_p."""
    probs_RK = jax.nn.softmax(sorted_logits_RK, axis=-1)
    mass_before_RK = jnp.cumsum(probs_RK, axis=-1) - probs_RK
    return mass_before_RK < top_p


def sample_step(logits_RV, keys_R, settings: SamplingSettings):
    """Draws one token per row from float32 logits. Returns (tokens_R int32, logprobs_R float32)."""
    policy_logprobs_RV = jax.nn.log_softmax(logits_RV, axis=-1)
    if settings.greedy or settings.temperature == 0:
        tokens_R = jnp.argmax(logits_RV, axis=-1).astype(jnp.int32)
        sampling_logprobs_R = jnp.zeros(tokens_R.shape, jnp.float32)
    else:
        scaled_RV = logits_RV / settings.temperature
        if settings.top_k is not None:
            candidates_RK, token_ids_RK = lax.top_k(scaled_RV, settings.top_k)  # sorted, descending
            if settings.top_p is not None:
                keep_RK = _nucleus_keep(candidates_RK, settings.top_p)
                candidates_RK = jnp.where(keep_RK, candidates_RK, -jnp.inf)
        else:
            candidates_RK, token_ids_RK = scaled_RV, None
            if settings.top_p is not None:
                sorted_RV = -jnp.sort(-scaled_RV, axis=-1)
                keep_RV = _nucleus_keep(sorted_RV, settings.top_p)
                # The smallest kept logit is the cut-off; compare in vocabulary order, no gather back.
                cutoff_R1 = jnp.min(jnp.where(keep_RV, sorted_RV, jnp.inf), axis=-1, keepdims=True)
                candidates_RK = jnp.where(scaled_RV >= cutoff_R1, scaled_RV, -jnp.inf)
        choice_R = jax.vmap(jax.random.categorical)(keys_R, candidates_RK)
        sampling_logprobs_R = jnp.take_along_axis(
            jax.nn.log_softmax(candidates_RK, axis=-1), choice_R[:, None], axis=-1)[:, 0]
        tokens_R = choice_R if token_ids_RK is None else jnp.take_along_axis(
            token_ids_RK, choice_R[:, None], axis=-1)[:, 0]
        tokens_R = tokens_R.astype(jnp.int32)
    if settings.logprobs == "sampling":
        return tokens_R, sampling_logprobs_R
    return tokens_R, jnp.take_along_axis(policy_logprobs_RV, tokens_R[:, None], axis=-1)[:, 0]


# ----------------------------------------------------------------------------- prefill


@functools.partial(jax.jit, static_argnames=("cfg", "cache_length", "n"))
def _prefill(params, tokens_BT, valid_BT, *, cfg: ModelConfig, cache_length: int, n: int):
    """Prompts -> (next-token logits_RV float32, cache with R = B * n rows)."""
    TRACE_COUNTS["prefill"] += 1
    model = Transformer(cfg)
    cache = init_cache(cfg, tokens_BT.shape[0], cache_length)
    h_BTD, cache = model.apply(
        {"params": params}, tokens_BT, positions_from_valid(valid_BT),
        causal_mask(valid_BT, cache_length), cache, method=Transformer.hidden_states)
    logits_BV = model.apply({"params": params}, take_last_valid(h_BTD, valid_BT),
                            method=Transformer.logits)
    return jnp.repeat(logits_BV, n, axis=0), tile_cache(cache, n)


# ----------------------------------------------------------------------------- decode


@flax.struct.dataclass
class _DecodeState:
    step: jax.Array  # index of the next token to sample
    last_tokens_R: jax.Array
    done_R: jax.Array
    tokens_RT: jax.Array
    logprobs_RT: jax.Array
    lengths_R: jax.Array


@functools.partial(jax.jit, static_argnames=("cfg", "settings", "n"), donate_argnames=("cache",))
def _decode(params, cache: KVCache, logits_RV, prompt_valid_BT, rng, prompt_ids_B, *,
            cfg: ModelConfig, settings: SamplingSettings, n: int):
    """Samples max_new_tokens (or until every row stopped) from prefilled, tiled logits and cache.

    Returns (tokens_RT, logprobs_RT, lengths_R) and the final cache (returned only so that the donated
    input buffers are aliased and updated in place).
    """
    TRACE_COUNTS["decode"] += 1
    model = Transformer(cfg)
    R, T_new, T_prompt = logits_RV.shape[0], settings.max_new_tokens, prompt_valid_BT.shape[1]
    S = cache.length

    prompt_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, prompt_ids_B)
    row_keys_R = jax.vmap(jax.random.fold_in)(
        jnp.repeat(prompt_keys_B, n, axis=0), jnp.tile(jnp.arange(n, dtype=jnp.int32), R // n))
    prompt_lengths_R = jnp.repeat(prompt_valid_BT.sum(-1), n).astype(jnp.int32)
    prompt_valid_RS = jnp.pad(jnp.repeat(prompt_valid_BT, n, axis=0), ((0, 0), (0, S - T_prompt)))
    slot_S = jnp.arange(S)
    stop_ids = jnp.asarray(settings.stop_ids, jnp.int32)

    def emit(state: _DecodeState, logits_RV) -> _DecodeState:
        keys_R = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys_R, state.step)
        tokens_R, logprobs_R = sample_step(logits_RV, keys_R, settings)
        active_R = ~state.done_R
        tokens_R = jnp.where(active_R, tokens_R, settings.pad_id)
        logprobs_R = jnp.where(active_R, logprobs_R, 0.0)
        stopped_R = active_R & jnp.any(tokens_R[:, None] == stop_ids[None, :], axis=-1)
        return _DecodeState(
            step=state.step + 1,
            last_tokens_R=tokens_R,
            done_R=state.done_R | stopped_R,
            tokens_RT=lax.dynamic_update_slice(state.tokens_RT, tokens_R[:, None], (0, state.step)),
            logprobs_RT=lax.dynamic_update_slice(state.logprobs_RT, logprobs_R[:, None],
                                                 (0, state.step)),
            lengths_R=state.lengths_R + active_R.astype(jnp.int32))

    def cond(carry):
        state, _ = carry
        return (state.step < T_new) & ~jnp.all(state.done_R)

    def body(carry):
        state, cache = carry
        # Token step-1 sits in slot T_prompt + step - 1 at position prompt_length + step - 1; a query
        # reads the real prompt slots and every generated slot up to its own.
        key_valid_RS = prompt_valid_RS | ((slot_S >= T_prompt) & (slot_S < T_prompt + state.step))
        logits_R1V, cache = model.apply(
            {"params": params}, state.last_tokens_R[:, None],
            (prompt_lengths_R + state.step - 1)[:, None], key_valid_RS[:, None, :], cache)
        return emit(state, logits_R1V[:, 0]), cache

    init = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        last_tokens_R=jnp.zeros((R,), jnp.int32),
        done_R=jnp.zeros((R,), bool),
        tokens_RT=jnp.full((R, T_new), settings.pad_id, jnp.int32),
        logprobs_RT=jnp.zeros((R, T_new), jnp.float32),
        lengths_R=jnp.zeros((R,), jnp.int32))
    state, cache = lax.while_loop(cond, body, (emit(init, logits_RV), cache))
    return (state.tokens_RT, state.logprobs_RT, state.lengths_R), cache


# ----------------------------------------------------------------------------- public API


def _prompt_valid(prompts_BT, prompt_lengths_B, pad_id, padding_side):
    if prompt_lengths_B is None:
        return prompts_BT != pad_id
    return valid_from_lengths(jnp.asarray(prompt_lengths_B), prompts_BT.shape[1], padding_side)


def sample(params, model_cfg: ModelConfig, prompts_BT, n: int, rng, *, max_new_tokens: int,
           prompt_lengths_B=None, padding_side: str = "right", pad_id: int = 0,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           greedy: bool = False, eos_id: int | None = None, stop_ids=(),
           logprobs: str = "policy", prompt_ids_B=None, pad_prompts_to_multiple: int = 1,
           prefill_once: bool = True) -> SampleOutput:
    """Draws n completions of each of the B prompts.

    Args:
      params: the policy's params (the 'params' collection of `models.Transformer`).
      model_cfg: its config.
      prompts_BT: int prompts, padded on either side (or both) with pad_id.
      n: samples per prompt (N).
      rng: a PRNG key; see the module docstring for how per-sample keys derive from it.
      max_new_tokens: T_new, the length of the outputs.
      prompt_lengths_B: real tokens per row, with `padding_side` ('right' or 'left'); without it the
        real tokens are those != pad_id. Every prompt needs at least one real token.
      temperature / top_k / top_p / greedy: the sampling distribution (temperature 0 is greedy).
      eos_id, stop_ids: tokens that end a row (the stop token is kept and counted in the length).
      logprobs: 'policy' (log-prob at temperature 1, the default) or 'sampling'.
      prompt_ids_B: int ids that seed each prompt's samples (default arange(B)).
      pad_prompts_to_multiple: pads the prompt width up to a multiple of this (shape buckets: fewer
        compilations when prompt widths vary between calls).
      prefill_once: False repeats each prompt n times before the prefill instead of tiling the cache;
        the same samples, n times the prefill work (a reference path for tests and benchmarks).

    Returns:
      SampleOutput with tokens_BNT, logprobs_BNT [B, N, T_new] and lengths_BN [B, N].
    """
    prompts_BT = jnp.asarray(prompts_BT, jnp.int32)
    B, T = prompts_BT.shape
    stops = tuple(sorted({int(s) for s in stop_ids} | ({int(eos_id)} if eos_id is not None else set())))
    settings = SamplingSettings(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=top_k,
        top_p=top_p, greedy=bool(greedy), stop_ids=stops, pad_id=int(pad_id), logprobs=logprobs)
    settings.validate(model_cfg.vocab_size)
    if n < 1:
        raise ConfigError("sampling.n", f"must be >= 1, got {n}")
    valid_BT = _prompt_valid(prompts_BT, prompt_lengths_B, pad_id, padding_side)
    try:
        empty = not bool(jnp.all(valid_BT.any(-1)))
    except jax.errors.ConcretizationTypeError:  # called under a trace: cannot check
        empty = False
    if empty:
        raise ValueError("every prompt needs at least one real (non-padding) token")
    width = -(-T // pad_prompts_to_multiple) * pad_prompts_to_multiple
    prompts_BT = jnp.pad(prompts_BT, ((0, 0), (0, width - T)), constant_values=pad_id)
    valid_BT = jnp.pad(valid_BT, ((0, 0), (0, width - T)))
    prompt_ids_B = jnp.arange(B, dtype=jnp.int32) if prompt_ids_B is None else jnp.asarray(
        prompt_ids_B, jnp.int32)

    cache_length = width + settings.max_new_tokens - 1
    if prefill_once:
        logits_RV, cache = _prefill(params, prompts_BT, valid_BT, cfg=model_cfg,
                                    cache_length=cache_length, n=n)
    else:
        logits_RV, cache = _prefill(params, jnp.repeat(prompts_BT, n, axis=0),
                                    jnp.repeat(valid_BT, n, axis=0), cfg=model_cfg,
                                    cache_length=cache_length, n=1)
    (tokens_RT, logprobs_RT, lengths_R), _ = _decode(
        params, cache, logits_RV, valid_BT, rng, prompt_ids_B, cfg=model_cfg, settings=settings,
        n=n)
    return SampleOutput(tokens_BNT=tokens_RT.reshape(B, n, -1),
                        logprobs_BNT=logprobs_RT.reshape(B, n, -1),
                        lengths_BN=lengths_R.reshape(B, n))


def sequence_logprobs(params, model_cfg: ModelConfig, prompts_BT, completions_BNT, *,
                      completion_lengths_BN=None, prompt_lengths_B=None,
                      padding_side: str = "right", pad_id: int = 0, temperature: float = 1.0):
    """Teacher-forced per-token log-probs of completions: float32 [B, N, T_c], 0 past each length.

        logprobs[b, i, j] = log softmax(l / temperature)[c_bij],  l = policy logits after
                            prompt_b, c_bi0 .. c_bi(j-1)

    One full forward of the B * N concatenated (prompt, completion) rows; only the T_c predicting
    positions are unembedded. Pure and differentiable in params (call it inside the trainer's jit).
    Real prompt tokens come from `prompt_lengths_B` / `padding_side` or `!= pad_id`, as in `sample`;
    real completion tokens are the first `completion_lengths_BN` (default: those != pad_id).
    """
    prompts_BT = jnp.asarray(prompts_BT, jnp.int32)
    completions_BNT = jnp.asarray(completions_BNT, jnp.int32)
    B, N, Tc = completions_BNT.shape
    pvalid_BT = _prompt_valid(prompts_BT, prompt_lengths_B, pad_id, padding_side)
    if completion_lengths_BN is None:
        cvalid_BNT = completions_BNT != pad_id
    else:
        cvalid_BNT = jnp.arange(Tc) < jnp.asarray(completion_lengths_BN)[..., None]
    pvalid_RT = jnp.repeat(pvalid_BT, N, axis=0)
    tokens_RT = jnp.concatenate([jnp.repeat(prompts_BT, N, axis=0),
                                 completions_BNT.reshape(B * N, Tc)], axis=1)
    valid_RT = jnp.concatenate([pvalid_RT, cvalid_BNT.reshape(B * N, Tc)], axis=1)

    model = Transformer(model_cfg)
    h_RTD, _ = model.apply({"params": params}, tokens_RT, positions_from_valid(valid_RT),
                           causal_mask(valid_RT), method=Transformer.hidden_states)
    T = prompts_BT.shape[1]
    # Completion token j is predicted by the hidden state one real token earlier: the prompt's last
    # real token for j = 0, completion token j - 1 otherwise.
    h_prev_RTcD = jnp.concatenate([take_last_valid(h_RTD[:, :T], pvalid_RT)[:, None],
                                   h_RTD[:, T:T + Tc - 1]], axis=1)
    logits_RTcV = model.apply({"params": params}, h_prev_RTcD, method=Transformer.logits)
    logprobs_RTcV = jax.nn.log_softmax(logits_RTcV / temperature, axis=-1)
    logprobs_RTc = jnp.take_along_axis(
        logprobs_RTcV, completions_BNT.reshape(B * N, Tc, 1), axis=-1)[..., 0]
    return jnp.where(cvalid_BNT, logprobs_RTc.reshape(B, N, Tc), 0.0)
