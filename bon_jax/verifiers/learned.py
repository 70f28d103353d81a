"""The learned verifier: the policy's backbone with a scalar head, pooled into one logit per sequence.

On the sequence `[bos] prompt completion [eos]` (the layout of `bon_jax.train.lm.sequence_batch`) the head
gives one value per token, values_BT = ScalarHeadTransformer(params)(tokens_BT). Five poolings (`POOLINGS`):

- `'last'` (Chow et al.): the value at the last real token t_last (the eos of a finished completion),

      z(x, y) = values_BT[b, t_last],      P(correct | x, y) = sigmoid(z).

- `'noisy_or'`: each completion token t (eos included) carries an error hazard h_t = sigmoid(v_t) with
  v_t = values_BT[b, t] + HAZARD_OFFSET, and the completion is correct when no token is an error:

      P(correct | x, y) = prod_t (1 - h_t) = exp(-S),      S = sum_{t in completion} softplus(v_t)
      z = log P(correct) - log P(error) = -S - log(-expm1(-S)).

  It is still trained with outcome labels only, but the gradient of an incorrect completion's loss goes to
  the tokens that already look wrong (d/dv_t of -log(1 - e^{-S}) is proportional to h_t: multiple-instance
  learning), so the head learns to flag the step where an error is made, which a last-token head must
  carry through every later position. Arithmetic slips are local, which is why it is offered.

- `'noisy_or_surprisal'`: the same, with the token's surprisal under the backbone's own language-model
  head added to its hazard logit,

      v_t = values_BT[b, t] + HAZARD_OFFSET - log p_verifier(y_t | x, y_<t).

  A verifier initialised from the policy starts as the policy's own likelihood check (a token the policy
  found unlikely is a likely error; with a fresh head of values ~0) and BCE fine-tunes from there, instead
  of from chance. On the arith default's held-out samples the untrained start already ranks a prompt's
  correct sample above an incorrect one 69% of the time (docs/lab_notes/verifier.md).

- `'likelihood'`: the completion's log-likelihood under the backbone's own language-model head, corrected
  by the head's per-token values,

      z = -sum_{t in completion} (surprisal_t + values_BT[b, t]) = log p_verifier(y | x) - sum_t values_BT[b, t].

  Initialised from the policy (values ~0), it selects the sample the policy itself finds most likely.

- `'process'`: a process verifier. The value at each step end t (the token closing a line, and the last
  token; `bon_jax.verifiers.steps`) is the logit of P(that step is right), trained on per-step targets
  from the task's line oracle (`Task.line_labels`) and the outcome at the last token, and

      z = log P - log(1 - P),      log P = sum_{step ends t} log sigmoid(values_BT[b, t])

  (or the weakest step, `aggregate='min'`; the last token's term weighted by `outcome_weight`).

All but `'process'` are trained with binary cross-entropy on z, `'process'` with it on every step end
(`bon_jax.verifiers.train`).

Scores are the logit z, not sigmoid(z). Both order completions identically, so Best-of-N picks the same
sample, but the logit keeps that order where float32 sigmoid saturates (every z > ~17 maps to 1.0 and would
tie), and it is the natural input of Chow et al.'s sigma(s(y) - s(y')) win-rate term. `probabilities` gives
sigmoid(z) where a probability is wanted (calibration, thresholds).

Two paths:
- `score_tokens(params, cfg, tokens_BT, valid_BT) -> z_B`, jitted, for any padding (positions and the
  attention mask come from valid_BT);
- `score_completion_tokens(params, cfg, prompt_tokens_BTp, completion_tokens_BMTc, completion_lengths_BM)
  -> z_BM`, jitted, straight from a sampler's outputs, for the RL loop: each prompt runs through the
  backbone once and its M completions read its keys/values (`shared_prompt_values`), the same values as
  the forward of the packed rows (`pack_prompt_completion`) at 1/M of the prompt's cost.
`LearnedVerifier` wraps both behind the `Verifier` interface: groups of samples (text or `Samples`) by the
second, lists of pairs (`score_pairs`) by the first.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.distinct import distinct_columns, token_keys
from bon_jax.models import (
    ModelConfig,
    causal_mask,
    init_cache,
    init_params,
    make_model,
    positions_from_valid,
    take_last_valid,
    tile_cache,
)
from bon_jax.models.unembed import taken_logprobs
from bon_jax.tasks.base import Example
from bon_jax.tokenizer import DEFAULT_BUCKETS, sequence_batch
from bon_jax.verifiers.base import Completions, Samples, completion_texts, group_shape
from bon_jax.verifiers.io import load_verifier, save_verifier
from bon_jax.verifiers.packing import pack_prompt_completion
from bon_jax.verifiers.steps import check_aggregate, last_token, newline_table, process_logit, step_ends

POOLINGS = ("last", "noisy_or", "noisy_or_surprisal", "likelihood", "process")
# An untrained head gives values near 0; hazards of sigmoid(0 - 4) = 0.018 per token keep the starting
# P(correct) of a 30-token completion near 0.6 instead of 2^-30, so the first steps' loss is not dominated
# by driving every hazard down.
HAZARD_OFFSET = -4.0


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"verifier pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def noisy_or_logit(hazard_logits_BT, completion_BT) -> jax.Array:
    """z_B = log P(correct) - log P(error) with P(correct) = exp(-S), S = sum softplus(v_t) over the
    completion tokens (module docstring). float32; S is clamped at 1e-30 so z stays finite (z <= 69)."""
    S_B = jnp.sum(jnp.where(completion_BT, jax.nn.softplus(hazard_logits_BT.astype(jnp.float32)), 0.0), axis=-1)
    S_B = jnp.maximum(S_B, 1e-30)
    return -S_B - jnp.log(-jnp.expm1(-S_B))


def step_values(params, cfg: ModelConfig, tokens_BT, valid_BT, completion_BT, newlines_V):
    """(values_BT, ends_BT, last_BT) of the `'process'` pooling: the head's per-token values, the
    completion's step ends and its last token (`bon_jax.verifiers.steps`). Un-jitted; differentiable."""
    model = make_model(cfg, scalar_head=True)
    valid_BT = jnp.asarray(valid_BT, bool)
    values_BT, _ = model.apply({"params": params}, tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT))
    completion_BT = jnp.asarray(completion_BT, bool) & valid_BT
    return values_BT, step_ends(tokens_BT, completion_BT, newlines_V), last_token(completion_BT)


# The poolings that read the backbone's own surprisal as well as the head's values.
READS_SURPRISAL = ("noisy_or_surprisal", "likelihood")


def _check_pooling_inputs(pooling: str, completion_BT, newlines_V) -> None:
    if check_pooling(pooling) != "last" and completion_BT is None:
        raise ValueError(f"pooling={pooling!r} needs the completion mask (completion_BT)")
    if pooling == "process" and newlines_V is None:
        raise ValueError("pooling='process' needs the tokenizer's newline table (newlines_V)")


def pool_values(values_BT, surprisal_BT, tokens_BT, valid_BT, completion_BT, pooling: str = "last",
                newlines_V=None, aggregate: str = "product", outcome_weight: float = 1.0) -> jax.Array:
    """z_B float32 from the head's per-token `values_BT` (and, for `READS_SURPRISAL`, the backbone's
    `surprisal_BT`; None otherwise) of `[B, T]` sequences: the poolings of the module docstring.
    Every pooling but `'last'` reads only the completion tokens (`completion_BT & valid_BT`)."""
    _check_pooling_inputs(pooling, completion_BT, newlines_V)
    if pooling == "last":
        return take_last_valid(values_BT, valid_BT)
    completion_BT = jnp.asarray(completion_BT, bool) & jnp.asarray(valid_BT, bool)
    if pooling == "process":
        return process_logit(values_BT, step_ends(tokens_BT, completion_BT, newlines_V), last_token(completion_BT),
                             aggregate, outcome_weight)
    if pooling == "noisy_or":
        return noisy_or_logit(values_BT + HAZARD_OFFSET, completion_BT)
    if pooling == "likelihood":
        return -jnp.sum(jnp.where(completion_BT, surprisal_BT + values_BT, 0.0), axis=-1)
    return noisy_or_logit(values_BT + HAZARD_OFFSET + surprisal_BT, completion_BT)


def sequence_logits(params, cfg: ModelConfig, tokens_BT, valid_BT, completion_BT=None,
                    pooling: str = "last", newlines_V=None, aggregate: str = "product",
                    outcome_weight: float = 1.0) -> jax.Array:
    """z_B float32 of `[B, T]` sequences (un-jitted; differentiable): one forward of the rows, then
    `pool_values`. `completion_BT` marks the completion tokens (eos included); every pooling but `'last'`
    needs it. `'process'` also needs the tokenizer's `newlines_V` (`bon_jax.verifiers.steps.newline_table`)
    and reads `aggregate` and `outcome_weight`."""
    _check_pooling_inputs(pooling, completion_BT, newlines_V)
    model = make_model(cfg, scalar_head=True)
    valid_BT = jnp.asarray(valid_BT, bool)
    inputs = (tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT))
    if pooling in READS_SURPRISAL:
        values_BT, surprisal_BT = model.apply({"params": params}, *inputs, method="values_and_surprisal")
    else:
        (values_BT, _), surprisal_BT = model.apply({"params": params}, *inputs), None
    return pool_values(values_BT, surprisal_BT, tokens_BT, valid_BT, completion_BT, pooling, newlines_V,
                       aggregate, outcome_weight)


def shared_prompt_values(params, cfg: ModelConfig, prompt_tokens_BT, prompt_valid_BT, completion_tokens_BMT,
                         completion_valid_BMT, surprisal: bool = False):
    """(values_RS, surprisal_RS or None) float32 of the R = B * M rows r = b * M + i of
    `pack_prompt_completion`'s layout (S = Tp + Tc: prompt slots, then completion slots), with each prompt
    run through the backbone once instead of M times (un-jitted; differentiable).

    The prompts [B, Tp] write their keys/values into a cache of S slots (`init_cache`); the cache is tiled
    M times (`tile_cache`) and the completions [B * M, Tc] read it. A real completion token sits at RoPE
    position (real prompt tokens) + (real completion tokens before it) and attends to the prompt's real
    slots and its own real slots up to itself: the positions and masks `positions_from_valid` and
    `causal_mask` give the packed row, so the values are those of the packed row's forward. The prompt
    part of values_RS is the prompt's own (tiled); surprisal_RS (with `surprisal`) is that of
    `values_and_surprisal` on the completion slots, completion token j predicted by the prompt's last real
    token for j = 0 and by completion token j - 1 after, and 0 on the prompt slots (no pooling reads them).
    """
    prompt_BT = jnp.asarray(prompt_tokens_BT, jnp.int32)
    pvalid_BT = jnp.asarray(prompt_valid_BT, bool)
    comp_BMT = jnp.asarray(completion_tokens_BMT, jnp.int32)
    cvalid_BMT = jnp.asarray(completion_valid_BMT, bool)
    (B, Tp), (_, M, Tc) = prompt_BT.shape, comp_BMT.shape
    R, S = B * M, Tp + Tc
    model = make_model(cfg, scalar_head=True)
    apply = functools.partial(model.apply, {"params": params})
    h_BTD, cache = apply(prompt_BT, positions_from_valid(pvalid_BT), causal_mask(pvalid_BT, S),
                         init_cache(cfg, B, S), method="hidden_states")
    cvalid_RT = cvalid_BMT.reshape(R, Tc)
    plen_R = jnp.repeat(pvalid_BT.sum(-1, dtype=jnp.int32), M)
    positions_RT = jnp.where(cvalid_RT, plen_R[:, None] + positions_from_valid(cvalid_RT), 0)
    prompt_part_RTT = jnp.broadcast_to(jnp.repeat(pvalid_BT, M, axis=0)[:, None, :], (R, Tc, Tp))
    mask_RTS = jnp.concatenate([prompt_part_RTT, causal_mask(cvalid_RT)], axis=-1)
    h_RTD, _ = apply(comp_BMT.reshape(R, Tc), positions_RT, mask_RTS, tile_cache(cache, M),
                     method="hidden_states")
    head = lambda h: apply(h, method="head_values")
    values_RS = jnp.concatenate([jnp.repeat(head(h_BTD), M, axis=0), head(h_RTD)], axis=1)
    if not surprisal:
        return values_RS, None
    h_last_RD = jnp.repeat(take_last_valid(h_BTD, pvalid_BT), M, axis=0)
    h_prev_RTD = jnp.concatenate([h_last_RD[:, None], h_RTD[:, :Tc - 1]], axis=1)
    logp_R = taken_logprobs(h_prev_RTD.reshape(R * Tc, -1), params["embedder"]["input_embedding"],
                            comp_BMT.reshape(-1), final_logit_soft_cap=cfg.final_logit_soft_cap,
                            compute_dtype=cfg.compute_dtype)
    surprisal_RS = jnp.concatenate([jnp.zeros((R, Tp), jnp.float32), -logp_R.reshape(R, Tc)], axis=1)
    return values_RS, surprisal_RS


def _in_row_chunks(fn, row_chunk: int | None, *arrays_R):
    """fn(*arrays) over the leading axis in chunks of `row_chunk` (a `lax.map`, bounding activation
    memory); rows are padded with zero (all-invalid) rows to a multiple of the chunk, and their outputs
    dropped. Trailing axes are kept, of the inputs and of fn's output."""
    R = arrays_R[0].shape[0]
    if row_chunk is None or row_chunk >= R:
        return fn(*arrays_R)
    I = -(-R // row_chunk)
    pad = I * row_chunk - R
    chunked = tuple(jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(I, row_chunk, *a.shape[1:])
                    for a in arrays_R)
    out_IC = jax.lax.map(lambda xs: fn(*xs), chunked)
    return out_IC.reshape(I * row_chunk, *out_IC.shape[2:])[:R]


@functools.partial(jax.jit, static_argnames=("cfg", "row_chunk", "pooling", "aggregate", "outcome_weight"))
def score_tokens(params, cfg: ModelConfig, tokens_BT, valid_BT, row_chunk: int | None = None,
                 completion_BT=None, pooling: str = "last", newlines_V=None, aggregate: str = "product",
                 outcome_weight: float = 1.0) -> jax.Array:
    """z_B float32 for `[B, T]` sequences (any padding). `row_chunk` bounds rows per forward;
    `completion_BT` (the completion tokens) is needed by every pooling but `'last'`, `newlines_V`,
    `aggregate` and `outcome_weight` by `'process'` (`sequence_logits`)."""
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    valid_BT = jnp.asarray(valid_BT, bool)
    if completion_BT is None:
        if pooling != "last":
            raise ValueError(f"pooling={pooling!r} needs the completion mask (completion_BT)")
        completion_BT = valid_BT
    fn = lambda t, v, c: sequence_logits(params, cfg, t, v, c, pooling, newlines_V, aggregate, outcome_weight)
    return _in_row_chunks(fn, row_chunk, tokens_BT, valid_BT, jnp.asarray(completion_BT, bool))


@functools.partial(jax.jit, static_argnames=("cfg", "pad_id", "row_chunk", "pooling", "aggregate",
                                             "outcome_weight", "share_prompt"))
def score_completion_tokens(params, cfg: ModelConfig, prompt_tokens_BT, completion_tokens_BMT,
                            completion_lengths_BM, pad_id: int = 0, row_chunk: int | None = None,
                            pooling: str = "last", newlines_V=None, aggregate: str = "product",
                            outcome_weight: float = 1.0, share_prompt: bool = True) -> jax.Array:
    """z_BM float32 from a sampler's outputs: prompts [B, Tp] (left-padded, bos first), completions
    [B, M, Tc] with lengths [B, M] (`'process'` options as in `score_tokens`).

    `share_prompt` (default): each prompt runs through the backbone once and its M completions read its
    tiled keys/values (`shared_prompt_values`), in chunks of max(1, row_chunk // M) prompts; the values
    are laid out as `pack_prompt_completion`'s [B*M, Tp+Tc] rows and pooled (`pool_values`).
    `share_prompt=False`: the packed rows' full forward (`sequence_logits`), the prompt repeated M times,
    in chunks of `row_chunk` rows; the reference the tests hold the shared forward to."""
    tokens_RT, valid_RT = pack_prompt_completion(prompt_tokens_BT, completion_tokens_BMT, completion_lengths_BM,
                                                 pad_id)
    B, M = jnp.shape(completion_lengths_BM)
    Tp = jnp.shape(prompt_tokens_BT)[1]
    completion_RT = valid_RT & (jnp.arange(valid_RT.shape[1]) >= Tp)[None, :]
    pool = dict(pooling=pooling, newlines_V=newlines_V, aggregate=aggregate, outcome_weight=outcome_weight)
    if not share_prompt:
        fn = lambda t, v, c: sequence_logits(params, cfg, t, v, c, **pool)
        return _in_row_chunks(fn, row_chunk, tokens_RT, valid_RT, completion_RT).reshape(B, M)
    _check_pooling_inputs(pooling, completion_RT, newlines_V)
    S = valid_RT.shape[1]
    # Per prompt b: its packed rows (the shared forward's inputs are slices of them), so a chunk of
    # prompts carries everything its rows need.
    tokens_BMS, valid_BMS = tokens_RT.reshape(B, M, S), valid_RT.reshape(B, M, S)

    def prompts_z(tokens_CMS, valid_CMS):
        C = tokens_CMS.shape[0]
        values_RS, surprisal_RS = shared_prompt_values(
            params, cfg, tokens_CMS[:, 0, :Tp], valid_CMS[:, 0, :Tp], tokens_CMS[:, :, Tp:], valid_CMS[:, :, Tp:],
            surprisal=pooling in READS_SURPRISAL)
        tokens_RS, valid_RS = tokens_CMS.reshape(C * M, S), valid_CMS.reshape(C * M, S)
        completion_RS = valid_RS & (jnp.arange(S) >= Tp)[None, :]
        return pool_values(values_RS, surprisal_RS, tokens_RS, valid_RS, completion_RS, **pool).reshape(C, M)

    chunk = None if row_chunk is None else max(1, row_chunk // M)
    return _in_row_chunks(prompts_z, chunk, tokens_BMS, valid_BMS)


def init_verifier_params(cfg: ModelConfig, rng: jax.Array, init_params_from=None,
                         zero_head: bool = False) -> tuple[dict, list[str]]:
    """Fresh scalar-head params, with every leaf that `init_params_from` also has copied from it.

    Pass a policy's params to start from its backbone (embedder, layers, final norm copied; the value head
    stays fresh), or a verifier's params to continue training it. A leaf present in both with a different
    shape is an error. `zero_head` makes a fresh value head all zeros, so the likelihood poolings start
    exactly at the backbone's likelihood instead of with a random per-token term. Returns (params, copied
    leaf paths).
    """
    fresh = init_params(cfg, rng, scalar_head=True)
    if zero_head:
        fresh = dict(fresh, value_head=jax.tree.map(jnp.zeros_like, fresh["value_head"]))
    if init_params_from is None:
        return fresh, []
    copied: list[str] = []

    def merge(target, source, path):
        if isinstance(target, dict):
            if not hasattr(source, "keys"):
                raise ValueError(f"init params: {path or 'root'} is a {type(source).__name__}, expected a dict")
            return {k: (merge(v, source[k], f"{path}/{k}") if k in source else v) for k, v in target.items()}
        if np.shape(source) != np.shape(target):
            raise ValueError(f"init params: {path} has shape {np.shape(source)}, the verifier expects "
                             f"{np.shape(target)}")
        copied.append(path)
        return jnp.array(source, dtype=target.dtype, copy=True)  # never alias: training donates its params

    return merge(fresh, init_params_from, ""), copied


def _bucket(length: int, buckets: Sequence[int] | None) -> int:
    if buckets:
        for w in sorted(buckets):
            if w >= length:
                return int(w)
    return int(length)


def encode_pairs(tokenizer, prompts: Sequence[str], completions: Sequence[str], width: int | None = None,
                 buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> dict:
    """`sequence_batch`'s `[bos] prompt completion [eos]` rows, right-padded to `width` (default: the
    smallest bucket that holds the longest row, so nothing is truncated)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if width is None:
        longest = max((len(tokenizer.encode(p)) + len(tokenizer.encode(c)) + 2
                       for p, c in zip(prompts, completions)), default=1)
        width = _bucket(longest, buckets)
    return sequence_batch(tokenizer, prompts, completions, width)


def encode_groups(tokenizer, prompts_B: Sequence[str], completions_BM: Sequence[Sequence[str]],
                  buckets: Sequence[int] | None = DEFAULT_BUCKETS):
    """(prompt_tokens_BT, completion_tokens_BMT, completion_lengths_BM), int32 numpy: B prompts, each with
    its M completions, in a sampler's layout (`pack_prompt_completion`): `[bos] prompt` left-padded, each
    `completion [eos]` right-padded, each to the smallest bucket that holds its longest. A packed row's
    real tokens are `sequence_batch`'s `[bos] prompt completion [eos]`, the text the verifier trained on."""
    if len(prompts_B) != len(completions_BM) or len({len(row) for row in completions_BM}) > 1:
        raise ValueError(f"encode_groups wants B prompts and B rows of M completions, got {len(prompts_B)} "
                         f"prompts and rows of {sorted({len(row) for row in completions_BM})}")
    B, M = len(prompts_B), len(completions_BM[0]) if completions_BM else 0
    prompt_ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts_B]
    comp_ids = [[tokenizer.encode(c) + [tokenizer.eos_id] for c in row] for row in completions_BM]
    Tp = _bucket(max((len(x) for x in prompt_ids), default=1), buckets)
    Tc = _bucket(max((len(x) for row in comp_ids for x in row), default=1), buckets)
    prompt_BT = np.full((B, Tp), tokenizer.pad_id, np.int32)
    comp_BMT = np.full((B, M, Tc), tokenizer.pad_id, np.int32)
    lengths_BM = np.zeros((B, M), np.int32)
    for b in range(B):
        prompt_BT[b, Tp - len(prompt_ids[b]):] = prompt_ids[b]
        for i, ids in enumerate(comp_ids[b]):
            comp_BMT[b, i, :len(ids)] = ids
            lengths_BM[b, i] = len(ids)
    return prompt_BT, comp_BMT, lengths_BM


def _take_columns(x_BM, cols_BK) -> np.ndarray:
    """x[b, cols_BK[b, k], ...]: `[B, M, ...] -> [B, K, ...]` (numpy)."""
    return np.take_along_axis(x_BM, cols_BK.reshape(cols_BK.shape + (1,) * (x_BM.ndim - 2)), axis=1)


class LearnedVerifier:
    """`Verifier` from scalar-head params: scores are logits z (module docstring).

    Args:
      params: `ScalarHeadTransformer` params.
      cfg: its `ModelConfig`.
      tokenizer: the tokenizer it was trained with.
      row_chunk: rows per forward pass (None: all B*M at once).
      buckets: static widths text inputs are padded to (few shapes, few compilations).
      pooling: how per-token values become a sequence logit, one of `POOLINGS` (module docstring);
        it must be the pooling the params were trained with.
      aggregate, outcome_weight: how `'process'` combines its step probabilities
        (`bon_jax.verifiers.steps.process_logit`); ignored by the other poolings.
    """

    def __init__(self, params, cfg: ModelConfig, tokenizer, *, row_chunk: int | None = None,
                 buckets: Sequence[int] | None = DEFAULT_BUCKETS, pooling: str = "last",
                 aggregate: str = "product", outcome_weight: float = 1.0):
        self.params = params
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.row_chunk = row_chunk
        self.buckets = buckets
        self.pooling = check_pooling(pooling)
        self.aggregate = check_aggregate(aggregate)
        if outcome_weight < 0:
            raise ValueError(f"outcome_weight must be >= 0, got {outcome_weight}")
        self.outcome_weight = float(outcome_weight)
        self.newlines_V = newline_table(tokenizer) if pooling == "process" else None

    def _process_args(self) -> dict:
        return dict(newlines_V=self.newlines_V, aggregate=self.aggregate, outcome_weight=self.outcome_weight)

    def score_pairs(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """z [R] float32 of R (prompt, completion) text pairs."""
        if not prompts:
            return np.zeros((0,), np.float32)
        batch = encode_pairs(self.tokenizer, prompts, completions, buckets=self.buckets)
        z = score_tokens(self.params, self.cfg, batch["tokens_BT"], batch["valid_BT"], self.row_chunk,
                         batch["target_BT"], self.pooling, **self._process_args())
        return np.asarray(z, np.float32)

    def score(self, examples_B: Sequence[Example], samples: Completions) -> np.ndarray:
        """z_BM float32 of text (`list[list[str]]`) or `Samples`: their texts when they have them (what the
        verifier was trained on), else their tokens. Each prompt's distinct completions are scored once
        (`bon_jax.distinct`: a score depends on the prompt and the completion only) and every sample takes
        its completion's score."""
        B, M = group_shape(examples_B, samples)
        if B == 0 or M == 0:
            return np.zeros((B, M), np.float32)
        if isinstance(samples, Samples) and samples.texts_BM is None:
            prompt_BT = samples.prompt_tokens_BT
            if prompt_BT is None:
                prompt_BT, _ = self.tokenizer.encode_batch([ex.prompt for ex in examples_B], add_bos=True,
                                                           pad_side="left", buckets=self.buckets)
            tokens_BMT, lengths_BM = np.asarray(samples.tokens_BMT), np.asarray(samples.lengths_BM)
            columns = distinct_columns(token_keys(tokens_BMT, lengths_BM))
            if columns is not None:
                tokens_BMT, lengths_BM = _take_columns(tokens_BMT, columns[0]), _take_columns(lengths_BM, columns[0])
            z_BK = score_completion_tokens(self.params, self.cfg, prompt_BT, tokens_BMT, lengths_BM,
                                           self.tokenizer.pad_id, self.row_chunk, self.pooling, **self._process_args())
        else:
            texts_BM = completion_texts(samples)
            columns = distinct_columns(texts_BM)
            if columns is not None:
                texts_BM = [[row[k] for k in cols] for row, cols in zip(texts_BM, columns[0].tolist())]
            prompt_BT, comp_BKT, lengths_BK = encode_groups(self.tokenizer, [ex.prompt for ex in examples_B],
                                                            texts_BM, self.buckets)
            z_BK = score_completion_tokens(self.params, self.cfg, prompt_BT, comp_BKT, lengths_BK,
                                           self.tokenizer.pad_id, self.row_chunk, self.pooling, **self._process_args())
        z_BK = np.asarray(z_BK, np.float32)
        return z_BK if columns is None else np.take_along_axis(z_BK, columns[1], axis=1)

    def probabilities(self, examples_B: Sequence[Example], samples: Completions) -> np.ndarray:
        """sigmoid(z_BM): the verifier's P(correct), float32 [B, M]."""
        return np.asarray(jax.nn.sigmoid(self.score(examples_B, samples)), np.float32)

    def save(self, directory, meta: dict | None = None) -> None:
        """Writes params, config and tokenizer to `directory` (`bon_jax.verifiers.io.save_verifier`)."""
        save_verifier(directory, self.params, self.cfg, tokenizer=self.tokenizer,
                      meta=dict(meta or {}, pooling=self.pooling, aggregate=self.aggregate,
                                outcome_weight=self.outcome_weight))

    @classmethod
    def load(cls, directory, **kwargs) -> LearnedVerifier:
        """The verifier `save` wrote; its pooling (and `'process'` options) come from meta.json (`'last'`
        when absent)."""
        params, cfg, tokenizer, meta = load_verifier(directory)
        if tokenizer is None:
            raise ValueError(f"{directory}: saved without a tokenizer; use load_verifier and pass one")
        kwargs.setdefault("pooling", meta.get("pooling", "last"))
        kwargs.setdefault("aggregate", meta.get("aggregate", "product"))
        kwargs.setdefault("outcome_weight", meta.get("outcome_weight", 1.0))
        return cls(params, cfg, tokenizer, **kwargs)
