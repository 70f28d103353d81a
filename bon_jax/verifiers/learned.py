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
  -> z_BM`, jitted, straight from a sampler's outputs (`pack_prompt_completion`), for the RL loop.
`LearnedVerifier` wraps both behind the `Verifier` interface, for text or `Samples`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.models import (
    ModelConfig,
    causal_mask,
    init_params,
    make_model,
    positions_from_valid,
    take_last_valid,
)
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


def sequence_logits(params, cfg: ModelConfig, tokens_BT, valid_BT, completion_BT=None,
                    pooling: str = "last", newlines_V=None, aggregate: str = "product",
                    outcome_weight: float = 1.0) -> jax.Array:
    """z_B float32 of `[B, T]` sequences (un-jitted; differentiable). `completion_BT` marks the completion
    tokens (eos included); every pooling but `'last'` needs it. `'process'` also needs the tokenizer's
    `newlines_V` (`bon_jax.verifiers.steps.newline_table`) and reads `aggregate` and `outcome_weight`."""
    model = make_model(cfg, scalar_head=True)
    inputs = (tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT))
    if check_pooling(pooling) == "last":
        values_BT, _ = model.apply({"params": params}, *inputs)
        return take_last_valid(values_BT, valid_BT)
    if completion_BT is None:
        raise ValueError(f"pooling={pooling!r} needs the completion mask (completion_BT)")
    if pooling == "process":
        if newlines_V is None:
            raise ValueError("pooling='process' needs the tokenizer's newline table (newlines_V)")
        values_BT, ends_BT, last_BT = step_values(params, cfg, tokens_BT, valid_BT, completion_BT, newlines_V)
        return process_logit(values_BT, ends_BT, last_BT, aggregate, outcome_weight)
    completion_BT = jnp.asarray(completion_BT, bool) & valid_BT
    if pooling == "noisy_or":
        return noisy_or_logit(model.apply({"params": params}, *inputs)[0] + HAZARD_OFFSET, completion_BT)
    values_BT, surprisal_BT = model.apply({"params": params}, *inputs, method="values_and_surprisal")
    if pooling == "likelihood":
        return -jnp.sum(jnp.where(completion_BT, surprisal_BT + values_BT, 0.0), axis=-1)
    return noisy_or_logit(values_BT + HAZARD_OFFSET + surprisal_BT, completion_BT)


def _in_row_chunks(fn, row_chunk: int | None, *arrays_RT):
    """fn(*arrays) over rows in chunks of `row_chunk` (a `lax.map`, bounding activation memory); rows are
    padded with zero (all-invalid) rows to a multiple of the chunk, and their outputs dropped."""
    R = arrays_RT[0].shape[0]
    if row_chunk is None or row_chunk >= R:
        return fn(*arrays_RT)
    I = -(-R // row_chunk)
    pad = I * row_chunk - R
    chunked = tuple(jnp.pad(a, ((0, pad), (0, 0))).reshape(I, row_chunk, -1) for a in arrays_RT)
    out_IC = jax.lax.map(lambda xs: fn(*xs), chunked)
    return out_IC.reshape(I * row_chunk)[:R]


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
                                             "outcome_weight"))
def score_completion_tokens(params, cfg: ModelConfig, prompt_tokens_BT, completion_tokens_BMT,
                            completion_lengths_BM, pad_id: int = 0, row_chunk: int | None = None,
                            pooling: str = "last", newlines_V=None, aggregate: str = "product",
                            outcome_weight: float = 1.0) -> jax.Array:
    """z_BM float32 from a sampler's outputs: prompts [B, Tp] (left-padded, bos first), completions
    [B, M, Tc] with lengths [B, M]. Packs to [B*M, Tp+Tc] (`pack_prompt_completion`) and scores
    (`'process'` options as in `score_tokens`)."""
    tokens_RT, valid_RT = pack_prompt_completion(prompt_tokens_BT, completion_tokens_BMT, completion_lengths_BM,
                                                 pad_id)
    B, M = jnp.shape(completion_lengths_BM)
    Tp = jnp.shape(prompt_tokens_BT)[1]
    completion_RT = valid_RT & (jnp.arange(valid_RT.shape[1]) >= Tp)[None, :]
    fn = lambda t, v, c: sequence_logits(params, cfg, t, v, c, pooling, newlines_V, aggregate, outcome_weight)
    z_R = _in_row_chunks(fn, row_chunk, tokens_RT, valid_RT, completion_RT)
    return z_R.reshape(B, M)


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
        verifier was trained on), else their tokens."""
        B, M = group_shape(examples_B, samples)
        if B == 0 or M == 0:
            return np.zeros((B, M), np.float32)
        if isinstance(samples, Samples) and samples.texts_BM is None:
            prompt_BT = samples.prompt_tokens_BT
            if prompt_BT is None:
                prompt_BT, _ = self.tokenizer.encode_batch([ex.prompt for ex in examples_B], add_bos=True,
                                                           pad_side="left", buckets=self.buckets)
            z_BM = score_completion_tokens(self.params, self.cfg, prompt_BT, samples.tokens_BMT,
                                           samples.lengths_BM, self.tokenizer.pad_id, self.row_chunk,
                                           self.pooling, **self._process_args())
            return np.asarray(z_BM, np.float32)
        texts_BM = completion_texts(samples)
        prompts = [ex.prompt for ex, row in zip(examples_B, texts_BM) for _ in row]
        flat = [c for row in texts_BM for c in row]
        return self.score_pairs(prompts, flat).reshape(B, M)

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
