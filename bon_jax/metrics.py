"""Evaluation metrics from M samples per prompt: pass@k, BoN@k, maj@k, KL, entropy, diversity, bootstrap CIs.

Maths: docs/maths.md, section 2. Every estimator is the exact mean over all k-subsets of the M samples (a
U-statistic), so it is unbiased for the metric at k draws; nothing here resamples with replacement (the
"bootstrap best@k" is biased low).

jax functions (pass_at_k, bon_at_k, bon_at_k_weights, the KL / entropy estimators, distinct_answers) are pure,
jittable and batched over leading axes. maj_at_k, answers_to_ids and bootstrap_ci run on the host in numpy:
answers are strings and the subset enumeration is data-dependent.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.errors import NonFiniteScoreError

__all__ = [
    "BootstrapCI",
    "answers_to_ids",
    "bon_at_k",
    "bon_at_k_weights",
    "bon_kl_at_k",
    "bootstrap_ci",
    "distinct_answers",
    "entropy_from_logits",
    "kl_k1",
    "kl_k3",
    "maj_at_k",
    "pass_at_k",
    "require_finite_scores",
    "sequence_entropy",
    "sequence_token_entropy",
]


def _float_dtype(*xs):
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


# ------------------------------------------------------------------------------------------------ pass@k


def pass_at_k(num_samples, num_correct, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(M - c, k) / C(M, k).

    Product form, no large binomials: C(M-c, k)/C(M, k) = prod_{i<k} (M - c - i)/(M - i); a factor reaches 0
    when k > M - c, so pass@k = 1 there.

    Args:
      num_samples: [...] M, samples per prompt (int or float array, traced OK).
      num_correct: [...] c in [0, M].
      k: a Python int (vectorised product) or an integer array broadcastable to [...] (a loop to max k).
    Returns: [...] float; NaN where k > M or k < 1.
    """
    dtype = _float_dtype(num_samples, num_correct, jnp.float32)
    m = jnp.asarray(num_samples, dtype)
    c = jnp.asarray(num_correct, dtype)
    if isinstance(k, (int, np.integer)):
        i = jnp.arange(int(k), dtype=dtype)
        num = jnp.maximum(m[..., None] - c[..., None] - i, 0)
        den = m[..., None] - i
        factors = jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)
        ratio = jnp.prod(factors, axis=-1)
        kk = jnp.asarray(k, dtype)
    else:
        kk = jnp.asarray(k, dtype)
        shape = jnp.broadcast_shapes(m.shape, c.shape, kk.shape)
        m, c, kk = (jnp.broadcast_to(x, shape) for x in (m, c, kk))

        def body(i, ratio):
            i = jnp.asarray(i, dtype)
            den = m - i
            f = jnp.where(den > 0, jnp.maximum(m - c - i, 0) / jnp.where(den > 0, den, 1), 0)
            return jnp.where(i < kk, ratio * f, ratio)

        ratio = jax.lax.fori_loop(0, jnp.max(kk).astype(jnp.int32), body, jnp.ones(shape, dtype))
    return jnp.where((kk >= 1) & (kk <= m), 1 - ratio, jnp.nan)


# ------------------------------------------------------------------------------------------------ BoN@k


@jax.jit
def bon_at_k_weights(scores_M, k, mask_M=None):
    """Probability that each sample is Best-of-k of a uniformly random k-subset of the M valid samples.

    Sorted by score, descending, the sample at rank r (0-based) is the best of a random k-subset with
    probability w_r = C(M-1-r, k-1) / C(M, k) = (k/M) prod_{j<r} (M - j - k)/(M - 1 - j) (computed by this
    cumulative product). A group of g tied samples occupying ranks a..a+g-1 shares its total weight
    sum_{r=a}^{a+g-1} w_r equally (uniform tie-breaking): each member gets that sum / g.

    Args:
      scores_M: [..., M] verifier scores.
      k: subset size, a Python int or an array broadcastable to the batch shape [...].
      mask_M: optional [..., M] bool, valid samples; M per row = their count. Invalid samples get weight 0.
    Returns: [..., M] weights, each row summing to 1; rows with k > M_valid or k < 1 are NaN, and so are
      rows where a valid sample's score is NaN (a NaN compares false with every score, so it would hold no
      rank: the other weights would sum to less than 1 and BoN@k would be biased low). Evaluation refuses
      such scores before it gets here (`require_finite_scores`).
    """
    scores_M = jnp.asarray(scores_M)
    valid = jnp.ones(scores_M.shape, bool) if mask_M is None else jnp.asarray(mask_M, bool)
    valid = jnp.broadcast_to(valid, scores_M.shape)
    dtype = _float_dtype(scores_M, jnp.float32)
    size = scores_M.shape[-1]
    m = jnp.sum(valid, axis=-1).astype(dtype)[..., None]  # [..., 1]
    kk = jnp.asarray(k, dtype)[..., None]

    # Rank weights w_r, r = 0..size-1, for this row's M.
    j = jnp.arange(size - 1, dtype=dtype)
    den = m - 1 - j
    factors = jnp.where(den > 0, jnp.maximum(m - j - kk, 0) / jnp.where(den > 0, den, 1), 0)
    first = kk / jnp.where(m > 0, m, 1)
    w_r = first * jnp.concatenate([jnp.ones_like(first), jnp.cumprod(factors, axis=-1)], axis=-1)
    r = jnp.arange(size, dtype=dtype)
    w_r = jnp.where(r < m, w_r, 0)

    # Tie groups among valid samples: a_i = #valid strictly better, g_i = #valid tied (incl. i).
    s_i = scores_M[..., :, None]
    s_j = scores_M[..., None, :]
    v_j = valid[..., None, :]
    a = jnp.sum(v_j & (s_j > s_i), axis=-1).astype(dtype)[..., None]  # [..., M, 1]
    g = jnp.sum(v_j & (s_j == s_i), axis=-1).astype(dtype)[..., None]
    in_group = (r >= a) & (r < a + g)  # [..., M(sample), M(rank)]
    group_weight = jnp.sum(jnp.where(in_group, w_r[..., None, :], 0), axis=-1)
    w = jnp.where(valid, group_weight / jnp.maximum(g[..., 0], 1), 0)
    nan_score = jnp.any(valid & jnp.isnan(scores_M), axis=-1, keepdims=True)
    ok = (kk >= 1) & (kk <= m) & ~nan_score
    return jnp.where(ok, w, jnp.nan)


@jax.jit
def bon_at_k(scores_M, rewards_M, k, mask_M=None):
    """Unbiased BoN@k: expected reward of the best-scoring of k samples drawn without replacement.

    BoN@k = sum_i w_i R_i with w from `bon_at_k_weights` (ties in score broken uniformly at random).

    Args:
      scores_M: [..., M] verifier scores (select by these).
      rewards_M: [..., M] rewards (count these).
      k: Python int or array broadcastable to [...].
      mask_M: optional [..., M] bool of valid samples (invalid rewards may be anything, NaN included).
    Returns: [...] float; NaN where k > M_valid or a valid sample's score is NaN.
    """
    w = bon_at_k_weights(scores_M, k, mask_M)
    rewards_M = jnp.asarray(rewards_M, w.dtype)
    return jnp.sum(jnp.where(w > 0, w * rewards_M, jnp.where(jnp.isnan(w), jnp.nan, 0)), axis=-1)


def require_finite_scores(scores_BM, prompt_ids=None, mask_BM=None, *, what: str = "verifier score") -> None:
    """Refuses NaN scores on the host, naming the first prompt that has one (and its sample).

    A NaN score cannot be ranked, so BoN@k (and any Best-of-N selection) has no meaning for its prompt;
    evaluation calls this before computing any metric rather than report a number that silently leaves the
    sample out. +-inf are valid scores (they rank, and tie with each other).

    Args:
      scores_BM: [B, M] scores.
      prompt_ids: optional length-B ids (e.g. `Example.id`) used in the message; default the row index.
      mask_BM: optional [B, M] bool, the samples that count (masked ones may hold anything).
    Raises:
      NonFiniteScoreError (a ValueError) naming the prompt, its row, the sample and how many rows are hit.
    """
    s = np.asarray(scores_BM, np.float64)
    if s.ndim != 2:
        raise ValueError(f"require_finite_scores: scores must be [B, M], got shape {s.shape}")
    bad = np.isnan(s)
    if mask_BM is not None:
        bad &= np.asarray(mask_BM, bool)
    if not bad.any():
        return
    rows = np.flatnonzero(bad.any(axis=1))
    b = int(rows[0])
    samples = np.flatnonzero(bad[b]).tolist()
    name = f"prompt {prompt_ids[b]!r} (row {b})" if prompt_ids is not None else f"prompt row {b}"
    raise NonFiniteScoreError(
        f"{what} is NaN for {name}, samples {samples} of {s.shape[1]}"
        f"{f' (and {len(rows) - 1} more prompts)' if len(rows) > 1 else ''}: a NaN score cannot be ranked, "
        "so Best-of-N metrics would silently drop the sample; fix the scorer (or its inputs) for this prompt"
    )


# ------------------------------------------------------------------------------------------------ maj@k


def answers_to_ids(
    answers,
    normalize: Callable[[Any], Any] | None = None,
    equivalent: Callable[[Any, Any], bool] | None = None,
):
    """Map each prompt's final answers to integer ids: equivalent answers share an id, unparsable ones get -1.

    Answers are first keyed by `normalize` (identity by default); equal keys share an id. With `equivalent`
    (a task's answer equivalence, e.g. `MathTask.same_answer`, where "1.5" and "\\frac{3}{2}" are the same
    answer), each new key is compared with one representative (the first key) of every class found so far,
    in order of first appearance, and joins the first class whose representative it is equivalent to; a key
    equivalent to none starts a class. Comparing with representatives only, never chaining through other
    members, keeps a class from drifting when the equivalence is not transitive (numeric tolerance).
    `equivalent` is called on distinct keys only: at most D (D - 1) / 2 calls for D distinct answers.

    Args:
      answers: [B][M] nested sequences (ragged allowed) or a 1-D sequence of one prompt's answers. None and
        empty strings are unparsable.
      normalize: optional map applied to each answer before comparison (e.g. str.strip).
      equivalent: optional symmetric predicate on two keys; default: equal keys only.
    Returns: an int64 array [B, M] (or [M]); for ragged input a list of int64 arrays. Ids are per prompt, in
      order of first appearance.
    """

    def one(row):
        ids, table, reps = [], {}, []
        for a in row:
            if a is None or (isinstance(a, str) and a == ""):
                ids.append(-1)
                continue
            key = normalize(a) if normalize is not None else a
            if key is None or (isinstance(key, str) and key == ""):
                ids.append(-1)
                continue
            if key not in table:
                match = None
                if equivalent is not None:
                    match = next((i for i, rep in enumerate(reps) if equivalent(rep, key)), None)
                if match is None:
                    match = len(reps)
                    reps.append(key)
                table[key] = match
            ids.append(table[key])
        return np.asarray(ids, np.int64)

    first = answers[0] if len(answers) else None
    if first is None or isinstance(first, (str, bytes)) or np.isscalar(first):
        return one(answers)
    rows = [one(r) for r in answers]
    if len({len(r) for r in rows}) == 1:
        return np.stack(rows)
    return rows


def _maj_values(ans_SK, rew_SK):
    """Majority-vote reward of each k-subset (rows). Unparsable (< 0) answers never win unless all are."""
    parsable = ans_SK >= 0
    same = (ans_SK[:, :, None] == ans_SK[:, None, :]) & parsable[:, :, None] & parsable[:, None, :]
    count = same.sum(-1)  # votes for each position's answer, 0 if unparsable
    win = count == count.max(-1, keepdims=True)
    # Every winning answer has the same number of winning positions, so the uniform mean over winning
    # positions is the uniform tie-break over answers of the mean reward of that answer's samples.
    return (win * rew_SK).sum(-1) / win.sum(-1)


def _combinations_array(m: int, k: int) -> np.ndarray:
    count = math.comb(m, k)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(m), k)), np.int64,
                       count=count * k)
    return flat.reshape(count, k)


def maj_at_k(
    answers,
    rewards,
    k: int,
    *,
    num_draws: int = 20000,
    rng: int | np.random.Generator = 0,
    max_subsets: int = 20000,
    return_stderr: bool = False,
):
    """maj@k: expected reward of the majority answer among k samples drawn without replacement.

    Per k-subset: each parsable answer (id >= 0) gets one vote per sample; the answers with the most votes
    tie-break uniformly; the subset's value is the mean reward of the winning answer's samples in the subset
    (= its reward when the reward is a function of the answer). Unparsable answers (id < 0) never win unless
    every sample of the subset is unparsable; then the value is the subset's mean reward (a uniformly random
    sample's reward, usually 0).

    maj@k is the mean over all C(M, k) subsets: enumerated exactly when C(M, k) <= max_subsets, else
    estimated from `num_draws` uniformly random k-subsets (Monte Carlo; standard error std/sqrt(num_draws)).

    Args:
      answers: int ids [B, M] or [M] (see `answers_to_ids`), or a ragged list of 1-D id arrays. Votes go
        by id, so equivalent answers must share one: build the ids with the task's answer equivalence
        (`answers_to_ids(..., equivalent=task.same_answer)`), not from raw strings.
      rewards: same shape(s), float.
      k: subset size (k > M gives NaN).
      num_draws, rng, max_subsets: Monte Carlo settings (rng: seed or numpy Generator).
      return_stderr: also return the Monte Carlo standard error (0 for exact rows).
    Returns: float64 [B] (a float for 1-D input), or (values, stderr) with return_stderr.
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    single = not isinstance(answers, (list, tuple)) and np.ndim(answers) == 1
    if single:
        answers, rewards = [answers], [rewards]
    values, errors = [], []
    for ans, rew in zip(answers, rewards):
        ans = np.asarray(ans, np.int64)
        rew = np.asarray(rew, np.float64)
        if ans.shape != rew.shape or ans.ndim != 1:
            raise ValueError(f"answers and rewards must be matching 1-D rows: {ans.shape} vs {rew.shape}")
        m = ans.shape[0]
        if k < 1 or k > m:
            values.append(np.nan)
            errors.append(np.nan)
            continue
        if math.comb(m, k) <= max_subsets:
            idx = _combinations_array(m, k)
            chunks = np.array_split(idx, -(-len(idx) // 4096))
            vals = np.concatenate([_maj_values(ans[c], rew[c]) for c in chunks])
            values.append(float(vals.mean()))
            errors.append(0.0)
        else:
            vals = []
            for start in range(0, num_draws, 4096):
                d = min(4096, num_draws - start)
                idx = np.argsort(gen.random((d, m)), axis=-1)[:, :k]
                vals.append(_maj_values(ans[idx], rew[idx]))
            vals = np.concatenate(vals)
            values.append(float(vals.mean()))
            errors.append(float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else np.nan)
    out, err = np.asarray(values), np.asarray(errors)
    if single:
        out, err = out[0], err[0]
    return (out, err) if return_stderr else out


# ------------------------------------------------------------------------------------------------ KL, entropy


def kl_k1(logp_BM, ref_logp_BM, mask=None):
    """k1 estimate of KL(pi || pi_ref) per sequence: log pi(y) - log pi_ref(y) for y ~ pi.

    Args:
      logp_BM, ref_logp_BM: [...] sequence log-probs; or, with mask, [..., T] token log-probs.
      mask: optional [..., T] valid-token mask; the per-token differences are then summed over T.
    Returns: [...] per-sequence k1 (unbiased for the sequence KL; can be negative).
    """
    d = jnp.asarray(logp_BM) - jnp.asarray(ref_logp_BM)
    if mask is None:
        return d
    return jnp.sum(jnp.where(jnp.asarray(mask, bool), d, 0), axis=-1)


def kl_k3(token_logp_BMT, token_ref_logp_BMT, mask_BMT=None):
    """k3 estimate per sequence: sum_t (exp(-d_t) - 1 + d_t), d_t = log pi(y_t|.) - log pi_ref(y_t|.).

    Per token, E_{y_t~pi}[k3] = KL(pi(.|prefix) || pi_ref(.|prefix)) exactly and k3 >= 0; the sum over the
    tokens of y ~ pi is unbiased for the sequence KL (chain rule), with lower variance than k1.
    Evaluated as expm1(-d) + d (no cancellation for small d).

    Args: token log-probs [..., T] and an optional [..., T] mask. Returns: [...] per sequence.
    """
    d = jnp.asarray(token_logp_BMT) - jnp.asarray(token_ref_logp_BMT)
    k3 = jnp.expm1(-d) + d
    if mask_BMT is not None:
        k3 = jnp.where(jnp.asarray(mask_BMT, bool), k3, 0)
    return jnp.sum(k3, axis=-1)


def entropy_from_logits(logits_V):
    """Entropy H = -sum_v p_v log p_v of softmax(logits) over the last axis, [..., V] -> [...].

    -inf logits (masked tokens) contribute 0.
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits_V), axis=-1)
    p = jnp.exp(logp)
    return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, logp, 0), 0), axis=-1)


def sequence_entropy(token_logp_BMT, mask_BMT=None):
    """Single-sample entropy estimate per sequence: -log pi(y) = -sum_t log pi(y_t|.), [..., T] -> [...].

    Unbiased for H(pi(.|x)) when y ~ pi (temperature 1).
    """
    lp = jnp.asarray(token_logp_BMT)
    if mask_BMT is not None:
        lp = jnp.where(jnp.asarray(mask_BMT, bool), lp, 0)
    return -jnp.sum(lp, axis=-1)


def sequence_token_entropy(logits_BMTV, mask_BMT=None):
    """Rao-Blackwellised entropy estimate per sequence: sum_t H(pi(.| x, y_<t)), [..., T, V] -> [...].

    Unbiased for H(pi(.|x)) when y ~ pi (chain rule of entropy), lower variance than `sequence_entropy`.
    """
    h = entropy_from_logits(logits_BMTV)
    if mask_BMT is not None:
        h = jnp.where(jnp.asarray(mask_BMT, bool), h, 0)
    return jnp.sum(h, axis=-1)


def distinct_answers(answers_BM, mask_BM=None):
    """Number of distinct answer ids per row, ignoring negative (unparsable) ids and masked entries.

    Args: answers_BM [..., M] integer ids; mask_BM optional [..., M] bool. Returns: [...] int32.
    """
    a = jnp.asarray(answers_BM)
    if mask_BM is not None:
        a = jnp.where(jnp.asarray(mask_BM, bool), a, -1)
    s = jnp.sort(a, axis=-1)
    first = jnp.concatenate([jnp.ones(s.shape[:-1] + (1,), bool), s[..., 1:] != s[..., :-1]], axis=-1)
    return jnp.sum(first & (s >= 0), axis=-1).astype(jnp.int32)


def bon_kl_at_k(scores_BM, k: int) -> np.ndarray:
    """Plug-in KL(pi_BoN_k || pi) per row, pi the empirical distribution of the row's M samples (host, float64).

    Best-of-k reweights a sample only through its score's level (docs/maths.md, section 1): with q_l the
    share of samples at level l, F_l the share at or below it and F_(l-1) below it, BoN puts mass
    P_l = F_l^k - F_(l-1)^k on level l, so KL(pi_BoN || pi) = sum_l P_l log(P_l / q_l). Without ties it
    is sum_j P_j log(M P_j) <= log k - (k-1)/k (the bound of `bon.kl_bon_upper_bound`, reached as M grows);
    ties (many equal scores) lower it. k = 1 gives 0. Biased low when k is not small next to M.

    Args: scores_BM [..., M] finite scores; k >= 1. Returns: [...] float64.
    """
    s = np.asarray(scores_BM, np.float64)
    if k < 1:
        raise ValueError(f"bon_kl_at_k: k must be >= 1, got {k}")
    flat = s.reshape(-1, s.shape[-1])
    m = flat.shape[-1]
    out = np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        _, counts = np.unique(row, return_counts=True)  # levels in increasing order
        q = counts / m
        f = np.cumsum(counts) / m
        f_below = np.concatenate([[0.0], f[:-1]])
        p = f**k - f_below**k
        keep = p > 0
        out[i] = float(np.sum(p[keep] * np.log(p[keep] / q[keep])))
    return out.reshape(s.shape[:-1])


# ------------------------------------------------------------------------------------------------ bootstrap


class BootstrapCI(NamedTuple):
    """Mean over prompts with a percentile-bootstrap interval [low, high] and the bootstrap standard error."""

    mean: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float
    stderr: np.ndarray | float


def bootstrap_ci(
    per_prompt_values_B,
    rng: int | np.random.Generator = 0,
    num_resamples: int = 1000,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Percentile bootstrap over prompts for the mean of a per-prompt metric.

    Prompts (axis 0) are resampled with replacement `num_resamples` times; [low, high] are the alpha/2 and
    1 - alpha/2 quantiles of the resampled means, stderr their standard deviation. Extra axes ([B, C], e.g.
    several metrics or a paired difference) are resampled jointly. NaN rows (e.g. k > M) are dropped
    (per column). Host numpy, float64.
    """
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    x = np.asarray(per_prompt_values_B, np.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1)
    b = x.shape[0]
    if b == 0:
        raise ValueError("bootstrap_ci needs at least one prompt")
    idx = gen.integers(0, b, size=(num_resamples, b))
    finite = ~np.isnan(x)
    xs = np.where(finite, x, 0.0)
    sums = xs[idx].sum(axis=1)  # [R, C]
    counts = finite[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
        mean = xs.sum(0) / finite.sum(0)
    low = np.nanquantile(means, alpha / 2, axis=0)
    high = np.nanquantile(means, 1 - alpha / 2, axis=0)
    stderr = np.nanstd(means, axis=0, ddof=1)
    out = (mean, low, high, stderr)
    if squeeze:
        out = tuple(float(v[0]) for v in out)
    return BootstrapCI(*out)
