"""Best-of-N sampling: prefill each prompt once; its M samples share its keys and values while they decode.

    sample(params, cfg, prompts_BT, m, rng, max_new_tokens=...) -> SampleOutput(tokens_BMT,
                                                                            logprobs_BMT, lengths_BM)

Pipeline (two jitted functions, compiled once per shape bucket and static settings):
1. `_prefill` runs the B prompts [B, T] through the model once (cost independent of M), unembeds only
   each row's last real token, and returns the prompts' keys/values (`DecodeKV` [B * G, T, E]).
2. `_decode` samples token 0 of every row r = b * M + i (sample i of prompt b; R = B * M rows) from its
   prompt's logits, then a `lax.while_loop` feeds each sampled token back and samples the next, until
   every row has stopped or max_new_tokens tokens exist. Each step (`transformer.decode_step`) attends
   over the prompt's keys, shared by its M rows (a [M * Q, E] x [E, T] matmul per prompt and kv head,
   `attention.shared_prefix_attention`; local layers read only each prompt's last `window` slots,
   `transformer.prefix_window`), and over the row's own generated keys, a cache of
   max_new_tokens - 1 slots created inside the jit and updated in place by the loop. The weights are
   re-laid out for the step once per call, outside the loop; nothing leaves the device between steps.

Sampling distribution at each step, from the policy logits l (float32, after the final soft-cap):
temperature l / tau, then top-k (the k largest, `lax.top_k`, no full sort), then top-p (the smallest
prefix of the sorted candidates whose mass reaches p; ties at the cut-off are kept; without top-k the
cut-off is found by bisection, `nucleus_threshold`, not a sort), then a categorical draw by inverting the CDF at one uniform per row
(`inverse_cdf_sample`: O(V), no sort, no per-token noise). `greedy` (or temperature 0) takes argmax l.

Log-probs: by default `log softmax(l)[token]`, the policy at temperature 1 whatever the sampling settings
(what the objectives need); `logprobs='sampling'` gives the log-prob under the distribution actually
sampled from (0 for greedy). Positions after a row has stopped hold `pad_id` and log-prob 0.
Teacher-forced log-probs of given completions are `bon_jax.logprobs.sequence_logprobs` (re-exported
here).

RNG: the uniform of sample i of prompt b at step t is `uniform(key)` with
    key = fold_in(fold_in(fold_in(rng, prompt_id_b), i), t)
with `prompt_ids_B` defaulting to arange(B): a prompt's samples do not depend on its batch position or
neighbours, and sharing the prompt draws exactly what decoding M copies of the prompt would
(`prefill_once=False`, the reference path).
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
from bon_jax.logprobs import prompt_valid as _prompt_valid
from bon_jax.logprobs import sequence_logprobs  # noqa: F401  (moved there; re-exported for old imports)
from bon_jax.models.cache import DecodeKV, init_cache
from bon_jax.models.config import ModelConfig
from bon_jax.models.masks import causal_mask, positions_from_valid, take_last_valid
from bon_jax.models.transformer import (
    Transformer,
    decode_step,
    decode_weights,
    prefill,
    prefix_window,
)

# How often each jitted function was traced (a Python side effect that runs only while tracing): tests
# and benchmarks read it to check that a second call with the same shapes does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class SampleOutput:
    """tokens_BMT int32 (pad_id after a stop), logprobs_BMT float32 (0 after a stop), lengths_BM int32
    (generated tokens, counting the stop token)."""

    tokens_BMT: jax.Array
    logprobs_BMT: jax.Array
    lengths_BM: jax.Array


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


def _nucleus_keep(sorted_logits_RU, top_p: float):
    """Keep-mask over logits sorted in descending order: the prefix whose mass first reaches top_p."""
    probs_RU = jax.nn.softmax(sorted_logits_RU, axis=-1)
    mass_before_RU = jnp.cumsum(probs_RU, axis=-1) - probs_RU
    return mass_before_RU < top_p


def nucleus_threshold(probs_RV, top_p: float):
    """[R, 1]: the probability t* of the top-p cut-off token, found by bisection instead of a sort.

    t* = max {t : sum of the probabilities >= t is >= top_p}; keeping the tokens with p >= t* is the
    smallest sorted prefix whose mass reaches top_p, ties at the cut-off kept. Non-negative float32 values
    order like their bit patterns, so 31 halvings of the int32 range [0, bits(max p) + 1) find t* exactly:
    31 fused passes over the vocabulary, no O(V log V) sort.
    """
    bits = lambda x: lax.bitcast_convert_type(x, jnp.int32)
    lo_R1 = jnp.zeros((probs_RV.shape[0], 1), jnp.int32)  # mass(lo) >= top_p always (mass(0) = 1)
    hi_R1 = bits(jnp.max(probs_RV, axis=-1, keepdims=True)) + 1  # mass(hi) < top_p or hi is past max

    def halve(_, lo_hi):
        lo_R1, hi_R1 = lo_hi
        mid_R1 = lo_R1 + (hi_R1 - lo_R1) // 2
        t_R1 = lax.bitcast_convert_type(mid_R1, jnp.float32)
        ok_R1 = jnp.sum(jnp.where(probs_RV >= t_R1, probs_RV, 0.0), axis=-1, keepdims=True) >= top_p
        return jnp.where(ok_R1, mid_R1, lo_R1), jnp.where(ok_R1, hi_R1, mid_R1)

    lo_R1, _ = lax.fori_loop(0, 31, halve, (lo_R1, hi_R1))
    return lax.bitcast_convert_type(lo_R1, jnp.float32)


def _block_size(V: int) -> int:
    return 1 << max(0, (V - 1).bit_length() + 1) // 2  # ~sqrt(V), a power of two


def inverse_cdf_sample(logits_RV, u_R):
    """A draw from softmax(logits_RV) (rows; -inf excluded) by inverting its CDF at u_R in [0, 1).

    Exact in distribution like Gumbel-max, but needs ONE uniform per row instead of V noise values
    (threefry noise over the whole vocabulary was 17% of a decode step). Two levels, O(V) work, no sort:
    the block of ~sqrt(V) tokens whose cumulative mass crosses u * total, then the token inside it. A
    token of zero mass is never returned (it covers an empty interval; rounding is clamped to the last
    token of positive mass). Returns (token index [R] int32, its logit minus log-normaliser [R]).
    """
    R, V = logits_RV.shape
    m_R1 = jnp.max(logits_RV, axis=-1, keepdims=True)
    e_RV = jnp.exp(logits_RV - m_R1)
    bs = _block_size(V)
    nb = -(-V // bs)
    e_RBS = jnp.pad(e_RV, ((0, 0), (0, nb * bs - V))).reshape(R, nb, bs)
    cum_RB = jnp.cumsum(e_RBS.sum(-1), axis=-1)
    total_R = cum_RB[:, -1]
    target_R = u_R * total_R

    def first_above(cum_RX, mass_RX, target_R):
        idx_X = jnp.arange(cum_RX.shape[1])
        count_R = jnp.sum(cum_RX <= target_R[:, None], axis=-1)
        last_positive_R = jnp.max(jnp.where(mass_RX > 0, idx_X, 0), axis=-1)
        return jnp.minimum(count_R, last_positive_R)

    block_R = first_above(cum_RB, e_RBS.sum(-1), target_R)
    before_R = jnp.where(block_R > 0, jnp.take_along_axis(cum_RB, (block_R - 1)[:, None], 1)[:, 0], 0.0)
    e_RS = jnp.take_along_axis(e_RBS, block_R[:, None, None], axis=1)[:, 0]
    within_R = first_above(before_R[:, None] + jnp.cumsum(e_RS, axis=-1), e_RS, target_R)
    token_R = (block_R * bs + within_R).astype(jnp.int32)
    logp_R = jnp.take_along_axis(logits_RV, token_R[:, None], axis=-1)[:, 0] - m_R1[:, 0] - jnp.log(
        total_R)
    return token_R, logp_R


def sample_from_uniform(logits_RV, u_R, settings: SamplingSettings):
    """One token per row from float32 logits, driven by one uniform u_R in [0, 1) per row.

    Returns (tokens_R int32, logprobs_R float32; see the module docstring for which log-prob).
    """
    if settings.greedy or settings.temperature == 0:
        tokens_R = jnp.argmax(logits_RV, axis=-1).astype(jnp.int32)
        sampling_logprobs_R = jnp.zeros(tokens_R.shape, jnp.float32)
    else:
        scaled_RV = logits_RV / settings.temperature if settings.temperature != 1 else logits_RV
        nucleus = settings.top_p is not None and settings.top_p < 1  # top_p = 1 keeps every token
        if settings.top_k is not None:
            candidates_RU, token_ids_RU = lax.top_k(scaled_RV, settings.top_k)  # sorted, descending
            if nucleus:
                keep_RU = _nucleus_keep(candidates_RU, settings.top_p)
                candidates_RU = jnp.where(keep_RU, candidates_RU, -jnp.inf)
        else:
            candidates_RU, token_ids_RU = scaled_RV, None
            if nucleus:
                probs_RV = jax.nn.softmax(scaled_RV, axis=-1)
                candidates_RU = jnp.where(probs_RV >= nucleus_threshold(probs_RV, settings.top_p),
                                          scaled_RV, -jnp.inf)
        choice_R, sampling_logprobs_R = inverse_cdf_sample(candidates_RU, u_R)
        tokens_R = choice_R if token_ids_RU is None else jnp.take_along_axis(
            token_ids_RU, choice_R[:, None], axis=-1)[:, 0].astype(jnp.int32)
    if settings.logprobs == "sampling":
        return tokens_R, sampling_logprobs_R
    lse_R = jax.nn.logsumexp(logits_RV, axis=-1)
    return tokens_R, jnp.take_along_axis(logits_RV, tokens_R[:, None], axis=-1)[:, 0] - lse_R


def _uniform(key):
    return jax.random.uniform(key, (), jnp.float32)


def sample_step(logits_RV, keys_R, settings: SamplingSettings):
    """Draws one token per row from float32 logits with one PRNG key per row (the key gives the row's
    uniform; see `sample_from_uniform`). Returns (tokens_R int32, logprobs_R float32)."""
    return sample_from_uniform(logits_RV, jax.vmap(_uniform)(keys_R), settings)


# ----------------------------------------------------------------------------- prefill


@functools.partial(jax.jit, static_argnames=("cfg", "fast"))
def _prefill(params, tokens_BT, valid_BT, *, cfg: ModelConfig, fast: bool = True):
    """Prompts -> (next-token logits_BV float32, the prompts' keys/values `DecodeKV` [B * G, T, E]).

    Once per prompt, whatever M: the M samples of a prompt share its keys and values in the decode
    step instead of each reading a tiled copy.
    """
    TRACE_COUNTS["prefill"] += 1
    if fast:  # 2-D weights, causal attention chunked (`transformer.prefill`); False: the modules
        return prefill(decode_weights(params, cfg), cfg, tokens_BT, valid_BT)
    model = Transformer(cfg)
    cache = init_cache(cfg, tokens_BT.shape[0], tokens_BT.shape[1])
    h_BTD, cache = model.apply(
        {"params": params}, tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT), cache,
        method=Transformer.hidden_states)
    logits_BV = model.apply({"params": params}, take_last_valid(h_BTD, valid_BT),
                            method=Transformer.logits)
    return logits_BV, DecodeKV.from_cache(cache)


# ----------------------------------------------------------------------------- decode


@flax.struct.dataclass
class _DecodeState:
    step: jax.Array  # index of the next token to sample
    last_tokens_R: jax.Array
    done_R: jax.Array
    tokens_RT: jax.Array
    logprobs_RT: jax.Array
    lengths_R: jax.Array


def row_uniforms(rng, prompt_ids_R, sample_ids_R, steps: int):
    """u[r, t] = uniform(fold_in(fold_in(fold_in(rng, prompt_id_r), sample_id_r), t)): [R, steps]."""
    keys_R = jax.vmap(lambda p, i: jax.random.fold_in(jax.random.fold_in(rng, p), i))(
        prompt_ids_R, sample_ids_R)
    step_keys = lambda k: jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k, jnp.arange(steps))
    return jax.vmap(lambda k: jax.vmap(_uniform)(step_keys(k)))(keys_R)


@functools.partial(jax.jit, static_argnames=("cfg", "settings", "n", "use_window"))
def _decode(params, prefix: DecodeKV, logits_BV, prompt_valid_BT, rng, prompt_ids_R, sample_ids_R, *,
            cfg: ModelConfig, settings: SamplingSettings, n: int, use_window: bool = True):
    """Samples max_new_tokens (or until every row stopped) for each of the n rows of each prompt.

    Rows r = b * n + i read prompt b's keys/values (`prefix`, read-only) and their own generated
    keys/values, one slot per step. The generated cache is created inside this jit and carried by a
    `lax.while_loop`, so XLA updates it in place (no donation needed, no copy per step) and there is no
    host round trip between steps. Row r's uniforms come from
    (prompt_ids_R[r], sample_ids_R[r]) (see `row_uniforms`). `use_window=False` makes local layers read
    every prompt slot (masked) instead of the last `window` ones: the same result, a reference for tests
    and benchmarks. Returns (tokens_RT, logprobs_RT, lengths_R).
    """
    TRACE_COUNTS["decode"] += 1
    B, T_prompt = prompt_valid_BT.shape
    R, T_new = B * n, settings.max_new_tokens
    w = decode_weights(params, cfg)  # once per call, outside the loop
    u_RT = row_uniforms(rng, prompt_ids_R, sample_ids_R, T_new)
    prompt_lengths_R = jnp.repeat(prompt_valid_BT.sum(-1), n).astype(jnp.int32)
    prompt_positions_BT = positions_from_valid(prompt_valid_BT)
    # Local layers read only each prompt's last `window` slots, gathered once here, outside the loop.
    window = prefix_window(cfg, prefix, prompt_valid_BT, prompt_positions_BT) if use_window else None
    stop_ids = jnp.asarray(settings.stop_ids, jnp.int32)
    # Token t (0 <= t < T_new - 1) is fed at step t + 1 into own slot t; the last token is never fed.
    own = DecodeKV.zeros(cfg, R, max(T_new - 1, 1))

    def emit(state: _DecodeState, logits_RV) -> _DecodeState:
        u_R = lax.dynamic_index_in_dim(u_RT, state.step, axis=1, keepdims=False)
        tokens_R, logprobs_R = sample_from_uniform(logits_RV, u_R, settings)
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
        state, own = carry
        slot = state.step - 1  # token `slot` sits at position prompt_length + slot
        logits_RV, own = decode_step(w, cfg, state.last_tokens_R, prompt_lengths_R + slot, prefix,
                                     prompt_valid_BT, prompt_positions_BT, own, slot, window)
        return emit(state, logits_RV), own

    init = _DecodeState(
        step=jnp.zeros((), jnp.int32),
        last_tokens_R=jnp.zeros((R,), jnp.int32),
        done_R=jnp.zeros((R,), bool),
        tokens_RT=jnp.full((R, T_new), settings.pad_id, jnp.int32),
        logprobs_RT=jnp.zeros((R, T_new), jnp.float32),
        lengths_R=jnp.zeros((R,), jnp.int32))
    state, _ = lax.while_loop(cond, body, (emit(init, jnp.repeat(logits_BV, n, axis=0)), own))
    return state.tokens_RT, state.logprobs_RT, state.lengths_R


# ----------------------------------------------------------------------------- public API


def sample(params, model_cfg: ModelConfig, prompts_BT, m: int, rng, *, max_new_tokens: int,
           prompt_lengths_B=None, padding_side: str = "right", pad_id: int = 0,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           greedy: bool = False, eos_id: int | None = None, stop_ids=(),
           logprobs: str = "policy", prompt_ids_B=None, pad_prompts_to_multiple: int = 1,
           prefill_once: bool = True) -> SampleOutput:
    """Draws m completions of each of the B prompts.

    Args:
      params: the policy's params (the 'params' collection of `models.Transformer`).
      model_cfg: its config.
      prompts_BT: int prompts, padded on either side (or both) with pad_id.
      m: samples per prompt (M).
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
      prefill_once: False repeats each prompt m times before the prefill instead of sharing its keys
        and values; the same samples, m times the prefill and prompt-attention work (a reference path
        for tests and benchmarks).

    Returns:
      SampleOutput with tokens_BMT, logprobs_BMT [B, M, T_new] and lengths_BM [B, M].
    """
    prompts_BT = jnp.asarray(prompts_BT, jnp.int32)
    B, T = prompts_BT.shape
    stops = tuple(sorted({int(s) for s in stop_ids} | ({int(eos_id)} if eos_id is not None else set())))
    settings = SamplingSettings(
        max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=top_k,
        top_p=top_p, greedy=bool(greedy), stop_ids=stops, pad_id=int(pad_id), logprobs=logprobs)
    settings.validate(model_cfg.vocab_size)
    if m < 1:
        raise ConfigError("sampling.m", f"must be >= 1, got {m}")
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

    if prefill_once:  # B prompts, m rows each
        logits_BV, prefix = _prefill(params, prompts_BT, valid_BT, cfg=model_cfg)
        rows = m
    else:  # reference path: each prompt repeated m times, one row each
        logits_BV, prefix = _prefill(params, jnp.repeat(prompts_BT, m, axis=0),
                                     jnp.repeat(valid_BT, m, axis=0), cfg=model_cfg)
        valid_BT, rows = jnp.repeat(valid_BT, m, axis=0), 1
    tokens_RT, logprobs_RT, lengths_R = _decode(
        params, prefix, logits_BV, valid_BT, rng, jnp.repeat(prompt_ids_B, m),
        jnp.tile(jnp.arange(m, dtype=jnp.int32), B), cfg=model_cfg, settings=settings, n=rows)
    return SampleOutput(tokens_BMT=tokens_RT.reshape(B, m, -1),
                        logprobs_BMT=logprobs_RT.reshape(B, m, -1),
                        lengths_BM=lengths_R.reshape(B, m))
