"""The Best-of-N distribution over finite outcomes, its exponential-twisting approximation, and selection.

Maths: docs/maths.md, section 1. BoN draws y_1..y_n iid from pi and returns the draw with the highest score,
ties broken uniformly at random. With, at the score level s = s(y),

    F_(s) = P_pi(s(Y) < s)     q(s) = P_pi(s(Y) = s)     F(s) = F_(s) + q(s)     A(s) = P_pi(s(Y) > s)

the probability that BoN returns y is

    pi_BoN(y) = pi(y) * G(y),    G(y) = (F^n - F_^n) / q      (limit n F^(n-1) as q -> 0).

P(max score = s) = F^n - F_^n and, given the level of the maximum, the winner is pi restricted to that level.

Numerics. G is evaluated in log space without cancellation: with u = q / F in (0, 1] and r = F_/F = 1 - u,

    log G = (n - 1) log F + log(-expm1(n log r)) - log u,

log r = log1p(-u) when u < 1/2 (F_ close to F, where F^n - F_^n would cancel) and log F_ - log F otherwise;
log F = log1p(-A) when A < 1/2 (F close to 1, where F^n would round to 1) and log F otherwise. F_, q, A are
each summed directly from pi, never obtained as differences. The edge cases q = 0 (a zero-probability outcome
alone at its level: G = n F^(n-1)) and F_ = 0 (the lowest level: G = F^(n-1)) are selected with the
double-where pattern, so values and gradients stay finite. n may be a Python number or a traced scalar
(any real n >= 1). Works in float32; float64 when jax x64 is enabled and the inputs are float64.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "bon_cdfs",
    "bon_distribution",
    "bon_lambda",
    "bon_level_masses",
    "bon_weight",
    "empirical_cdfs",
    "kl_bon_upper_bound",
    "log_bon_weight",
    "select_best",
    "twisted_bon_distribution",
]

# Above this many outcomes the O(A^2) pairwise comparison gives way to an O(A log A) sort.
_PAIRWISE_MAX_K = 2048


def _float_dtype(*xs):
    dtype = jnp.result_type(*xs)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _level_masses_pairwise(probs_A, scores_A):
    # [..., A(outcome y), A(other y')]
    s_y = scores_A[..., :, None]
    s_o = scores_A[..., None, :]
    p_o = jnp.broadcast_to(probs_A[..., None, :], jnp.broadcast_shapes(s_y.shape, s_o.shape))
    zero = jnp.zeros((), p_o.dtype)
    below = jnp.sum(jnp.where(s_o < s_y, p_o, zero), axis=-1)
    at = jnp.sum(jnp.where(s_o == s_y, p_o, zero), axis=-1)
    above = jnp.sum(jnp.where(s_o > s_y, p_o, zero), axis=-1)
    return below, at, above


def _level_masses_sorted_1d(probs_A, scores_A):
    (k,) = scores_A.shape
    order = jnp.argsort(scores_A)
    s = scores_A[order]
    p = probs_A[order]
    new_group = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    gid = jnp.cumsum(new_group) - 1
    q_g = jax.ops.segment_sum(p, gid, num_segments=k)
    below_g = jnp.cumsum(q_g) - q_g
    above_g = jnp.cumsum(q_g[::-1])[::-1] - q_g
    inv = jnp.zeros((k,), order.dtype).at[order].set(jnp.arange(k, dtype=order.dtype))
    g = gid[inv]
    return below_g[g], q_g[g], above_g[g]


@functools.partial(jax.jit, static_argnames=("method",))
def bon_level_masses(probs_A, scores_A, *, method: str = "auto"):
    """Masses of pi below, at and above each outcome's score level.

    Args:
      probs_A: [..., A] probabilities pi(y) (summing to 1 over A; zeros allowed).
      scores_A: [..., A] scores s(y) (any real, ties allowed); broadcast against probs_A.
      method: "pairwise" ([..., A, A] comparisons; exact sums, best for moderate A), "sort" (O(A log A),
        cumulative sums) or "auto" (pairwise for A <= 2048).

    Returns:
      (below_A, at_A, above_A): F_(s_y) = P(s < s_y), q(s_y) = P(s = s_y), A(s_y) = P(s > s_y), each [..., A].
    """
    dtype = _float_dtype(probs_A)
    probs_A = jnp.asarray(probs_A, dtype)
    scores_A = jnp.asarray(scores_A)
    shape = jnp.broadcast_shapes(probs_A.shape, scores_A.shape)
    probs_A = jnp.broadcast_to(probs_A, shape)
    scores_A = jnp.broadcast_to(scores_A, shape)
    k = shape[-1]
    if method == "auto":
        method = "pairwise" if k <= _PAIRWISE_MAX_K else "sort"
    if method == "pairwise":
        return _level_masses_pairwise(probs_A, scores_A)
    if method == "sort":
        fn = _level_masses_sorted_1d
        for _ in range(len(shape) - 1):
            fn = jax.vmap(fn)
        return fn(probs_A, scores_A)
    raise ValueError(f"method must be 'auto', 'pairwise' or 'sort', got {method!r}")


def bon_cdfs(probs_A, scores_A, *, method: str = "auto"):
    """CDFs of the score under pi at each outcome's own score.

    Returns (cdf_A, cdf_lt_A) = (F(s_y), F_(s_y)) = (P_pi(s(Y) <= s_y), P_pi(s(Y) < s_y)), each [..., A].
    F(s_y) is also the win rate Q_pi(y) = P_{y'~pi}(s(y) >= s(y')) of the twisting approximation.
    """
    below, at, _ = bon_level_masses(probs_A, scores_A, method=method)
    return below + at, below


def _log_bon_weight_from_masses(below, at, above, n):
    """log G from the three level masses (see the module docstring for the maths)."""
    dtype = below.dtype
    n = jnp.asarray(n, dtype)
    zero = jnp.zeros((), dtype)
    one = jnp.ones((), dtype)
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    cdf = below + at

    # log F, accurate both for F near 0 (direct) and F near 1 (log1p of the mass above).
    f_pos = cdf > 0
    cdf_safe = jnp.where(f_pos, cdf, one)
    above_small = above < 0.5
    log_cdf_direct = jnp.log(cdf_safe)
    log_cdf_upper = jnp.log1p(-jnp.where(above_small, above, zero))
    log_cdf = jnp.where(f_pos, jnp.where(above_small, log_cdf_upper, log_cdf_direct), neg_inf)
    # (n - 1) log F, with 0 * (-inf) := 0 at n = 1.
    n_minus_1 = n - 1
    pow_term = jnp.where(
        f_pos, n_minus_1 * jnp.where(f_pos, log_cdf, zero), jnp.where(n_minus_1 > 0, neg_inf, zero)
    )

    # log g, g = (1 - r^n) / u with u = q/F, r = F_/F: in (0, 1) generic; u = 1 (F_ = 0): g = 1;
    # q = 0: g = n (the limit).
    generic = (at > 0) & (below > 0)
    u = jnp.where(generic, at / jnp.where(generic, cdf, one), jnp.asarray(0.25, dtype))
    below_safe = jnp.where(generic, below, one)
    u_small = u < 0.5
    log_r = jnp.where(
        u_small,
        jnp.log1p(-jnp.where(u_small, u, zero)),
        jnp.log(below_safe) - jnp.log(jnp.where(generic, cdf, one)),
    )
    log_g_generic = jnp.log(-jnp.expm1(n * log_r)) - jnp.log(u)
    log_g = jnp.where(generic, log_g_generic, jnp.where(at > 0, zero, jnp.log(n)))
    return pow_term + log_g


@jax.jit
def log_bon_weight(cdf, cdf_lt, n):
    """log G = log((F^n - F_^n) / (F - F_)), the log-ratio log(pi_BoN(y) / pi(y)).

    For CDF values that are given rather than summed from pi (e.g. empirical CDFs of reference samples, vbon's
    reward log G). q = F - F_ is a difference here, exact for the rationals of empirical CDFs; from probs,
    `bon_distribution` avoids even that. Equal F and F_ give the limit log(n F^(n-1)).

    Args:
      cdf: [...] F = P(s <= s_y), in [0, 1].
      cdf_lt: [...] F_ = P(s < s_y) <= F.
      n: BoN size (Python number or traced scalar, >= 1).
    Returns: [...] log G (-inf only where F = 0 and n > 1).
    """
    dtype = _float_dtype(cdf, cdf_lt)
    cdf = jnp.asarray(cdf, dtype)
    cdf_lt = jnp.asarray(cdf_lt, dtype)
    at = jnp.maximum(cdf - cdf_lt, 0)
    return _log_bon_weight_from_masses(cdf_lt, at, 1 - cdf, n)


def bon_weight(cdf, cdf_lt, n):
    """G = (F^n - F_^n) / (F - F_) = pi_BoN(y) / pi(y); see `log_bon_weight`."""
    return jnp.exp(log_bon_weight(cdf, cdf_lt, n))


@functools.partial(jax.jit, static_argnames=("method",))
def bon_distribution(probs_A, scores_A, n, *, method: str = "auto"):
    """Exact Best-of-n distribution over A outcomes, ties broken uniformly at random.

    pi_BoN(y) = pi(y) (F(s_y)^n - F_(s_y)^n) / q(s_y), evaluated stably (module docstring).

    Args:
      probs_A: [..., A] pi over A outcomes; rows sum to 1; zero-probability outcomes allowed (they get 0).
      scores_A: [..., A] scores, broadcast against probs_A; equal scores are ties.
      n: number of draws, a Python number or a traced scalar (n = 1 returns pi).
      method: see `bon_level_masses`.
    Returns: [..., A] pi_BoN, same float dtype as probs (float32 unless x64 inputs).
    """
    below, at, above = bon_level_masses(probs_A, scores_A, method=method)
    log_g = _log_bon_weight_from_masses(below, at, above, n)
    probs_A = jnp.broadcast_to(jnp.asarray(probs_A, below.dtype), below.shape)
    return probs_A * jnp.exp(log_g)


def kl_bon_upper_bound(n):
    """KL(pi_BoN || pi) <= log n - (n-1)/n (Beirami et al. 2024); equality in the continuous limit.

    Python float for a Python number n, else a jax array of n's shape.
    """
    if isinstance(n, (int, float, np.integer, np.floating)):
        return math.log(n) - (n - 1) / n
    n = jnp.asarray(n, _float_dtype(n))
    return jnp.log(n) - (n - 1) / n


def _twist_kl(lam: float) -> float:
    """KL(twisted uniform || uniform) on [0, 1] at tilt lam, in float64, overflow-free.

    ((l-1) e^l + 1) / (e^l - 1) - log((e^l - 1)/l) = l - 1 + l/expm1(l) - log(expm1(l)/l), and for large l
    log(expm1(l)) = l + log1p(-e^-l).
    """
    if lam == 0.0:
        return 0.0
    if lam < 1.0:
        em1 = math.expm1(lam)
        return lam - 1.0 + lam / em1 - math.log(em1 / lam)
    ratio = lam / math.expm1(lam) if lam < 700.0 else 0.0
    return -1.0 + ratio - math.log1p(-math.exp(-lam)) + math.log(lam)


@functools.cache
def bon_lambda(n: int) -> float:
    """lambda_n of Chow's exponential twisting: the root l >= 0 of

        ((l - 1) e^l + 1) / (e^l - 1) - log((e^l - 1) / l) = log n - (n - 1)/n,

    i.e. the tilt at which the twisted uniform on [0, 1] has KL to the uniform equal to the BoN bound.
    Host float64 (bisection bracket then Brent's method), n a Python int >= 1; n = 1 gives 0.
    lambda_2 = 2.2886, lambda_4 = 4.9169, lambda_8 = 9.0545, lambda_16 = 17.0319, lambda_32 = 33.0158.
    """
    from scipy.optimize import brentq

    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return 0.0
    target = math.log(n) - (n - 1) / n
    # The left side is increasing in l, ~ l^2/24 near 0 and ~ log l - 1 for large l; the root is ~ n e^(1/n).
    lo, hi = 1e-300, 2.0 * n + 10.0
    while _twist_kl(hi) < target:
        hi *= 2.0
    return float(brentq(lambda l: _twist_kl(l) - target, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps,
                        maxiter=500))


def twisted_bon_distribution(probs_A, scores_A, n: int, *, lam=None, method: str = "auto"):
    """Chow's exponential-twisting approximation of pi_BoN (Eqs. 3, 10, 11; BoNBoN Thm 2).

    pi_bon(y) = pi(y) exp(lambda_n Q(y)) / Z,  Q(y) = P_{y'~pi}(s(y) >= s(y')) = F(s_y).

    Args:
      probs_A: [..., A] pi; scores_A: [..., A] scores.
      n: BoN size, a Python int (lambda_n from `bon_lambda` on the host) unless `lam` is given.
      lam: optional tilt overriding lambda_n (a number or traced scalar).
    Returns: [..., A] the twisted distribution (0 where pi = 0).
    """
    lam = bon_lambda(n) if lam is None else lam
    return _twisted(probs_A, scores_A, lam, method=method)


@functools.partial(jax.jit, static_argnames=("method",))
def _twisted(probs_A, scores_A, lam, *, method):
    cdf, _ = bon_cdfs(probs_A, scores_A, method=method)
    dtype = cdf.dtype
    probs_A = jnp.broadcast_to(jnp.asarray(probs_A, dtype), cdf.shape)
    pos = probs_A > 0
    logits = jnp.where(pos, jnp.log(jnp.where(pos, probs_A, 1)) + jnp.asarray(lam, dtype) * cdf, -jnp.inf)
    return jax.nn.softmax(logits, axis=-1)


@jax.jit
def select_best(scores_BM, rng, mask_BM=None):
    """Index of the highest-scoring sample per row, ties broken uniformly at random.

    Every unmasked sample whose score equals the row maximum gets an independent uniform 31-bit key; the
    argmax of the keys (non-maxima get -1) picks one of them. Masked samples are never chosen; a row with
    no unmasked sample returns 0. Scores of -inf are valid (and tie with each other).

    Args:
      scores_BM: [..., M] scores.
      rng: a jax PRNG key.
      mask_BM: optional [..., M] bool, True where the sample may be chosen.
    Returns: [...] int32 indices into the last axis.
    """
    scores_BM = jnp.asarray(scores_BM)
    valid = jnp.ones(scores_BM.shape, bool) if mask_BM is None else jnp.asarray(mask_BM, bool)
    valid = jnp.broadcast_to(valid, scores_BM.shape)
    lowest = jnp.asarray(-jnp.inf if jnp.issubdtype(scores_BM.dtype, jnp.floating)
                         else jnp.iinfo(scores_BM.dtype).min, scores_BM.dtype)
    masked = jnp.where(valid, scores_BM, lowest)
    best = jnp.max(masked, axis=-1, keepdims=True)
    is_best = valid & (masked == best)
    bits = jax.random.bits(rng, scores_BM.shape, jnp.uint32)
    keys = jnp.where(is_best, (bits >> 1).astype(jnp.int32), -1)
    return jnp.argmax(keys, axis=-1).astype(jnp.int32)


@jax.jit
def empirical_cdfs(ref_scores_BK, scores_BM, *, smoothing: float = 1.0, ref_mask_BK=None):
    """F and F_ of each sample's score under K reference samples (vbon; docs/maths.md, section 1).

    With k_le = #{refs <= s}, k_lt = #{refs < s} among the K (unmasked) references and a = smoothing:

        F(s) = (k_le + a) / (K + a),    F_(s) = k_lt / (K + a).

    a = 1 is add-one smoothing (k+1)/(K+1): the sample is counted as one more draw at its own score, so F > 0
    and F - F_ >= 1/(K+1), keeping log G finite. a = 0 is the plain empirical CDF.

    Args:
      ref_scores_BK: [..., K] reference scores (rewards of pi_ref samples) per prompt.
      scores_BM: [..., M] scores to place.
      smoothing: a >= 0.
      ref_mask_BK: optional [..., K] bool, valid references (K per row = their count).
    Returns: (cdf_BM, cdf_lt_BM), each [..., M], float.
    """
    ref = jnp.asarray(ref_scores_BK)
    s = jnp.asarray(scores_BM)
    dtype = _float_dtype(ref, s)
    valid = jnp.ones(ref.shape, bool) if ref_mask_BK is None else jnp.asarray(ref_mask_BK, bool)
    r = ref[..., None, :]
    v = valid[..., None, :]
    k_le = jnp.sum(v & (r <= s[..., :, None]), axis=-1).astype(dtype)
    k_lt = jnp.sum(v & (r < s[..., :, None]), axis=-1).astype(dtype)
    k = jnp.sum(valid, axis=-1, keepdims=True).astype(dtype)
    a = jnp.asarray(smoothing, dtype)
    return (k_le + a) / (k + a), k_lt / (k + a)
