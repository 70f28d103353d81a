"""Per-sample weights of the Best-of-N U-statistics, exact with ties and masks, O(M^2) per prompt.

All functions take [B, M] arrays (B prompts x M samples), a validity mask and a static Python int n, and
return float32 [B, M] weights that are 0 at masked samples and for prompts with fewer than n valid samples.
They are data (no gradient flows through them). Binomial-coefficient ratios C(a, k) / C(m, k) come from a
float64 table built on the host for the static (M, k) and gathered, so they are accurate to float32 rounding
for any M (no overflow, no cancellation of large log-factorials).

Counting notation, for a valid sample j among the m valid samples of its prompt:
  le_j = #{valid i: s_i <= s_j},  lt_j = #{valid i: s_i < s_j},
  e_j = le_j - lt_j (its tie group, j included).
For a uniformly random n-subset of the m samples, P(top score level is j's level) = [C(le_j, n) - C(lt_j, n)]
/ C(m, n), and given that level the uniform tie-break makes each member equally likely to win.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import gammaln

__all__ = [
    "bon_rl_weights",
    "bon_winner_weights",
    "comb_ratio",
    "pass_at_k",
    "pass_at_k_weights",
]


@functools.lru_cache(maxsize=256)
def _comb_ratio_table(size: int, k: int) -> np.ndarray:
    """T[a, m] = C(a, k) / C(m, k) for 0 <= a, m <= size, float64; 0 where C(a, k) = 0, C(m, k) = 0 or a > m."""
    a = np.arange(size + 1, dtype=np.float64)
    if k < 0:
        return np.zeros((size + 1, size + 1))
    with np.errstate(invalid="ignore"):
        log_c = np.where(a >= k, gammaln(a + 1) - gammaln(k + 1) - gammaln(np.maximum(a - k, 0) + 1), -np.inf)
    pos = np.isfinite(log_c)
    # Only a <= m is ever used (a count among at most m samples); a > m is set to 0 to avoid overflow.
    used = pos[:, None] & pos[None, :] & (a[:, None] <= a[None, :])
    diff = np.where(pos, log_c, 0.0)[:, None] - np.where(pos, log_c, 0.0)[None, :]
    table = np.where(used, np.exp(np.where(used, diff, 0.0)), 0.0)
    # Integers are exact: C(a, k)/C(m, k) with a = m is 1.
    table[np.arange(size + 1), np.arange(size + 1)] = np.where(pos, 1.0, 0.0)
    return table


def comb_ratio(a, m, k: int, size: int):
    """C(a, k) / C(m, k) elementwise for integer arrays a, m in [-1, size] (C(-1, k) := 0, also at k = 0).

    0 where C(m, k) = 0 (m < k) or a > m: callers only use it where a <= m and m >= k.
    """
    table = jnp.asarray(_comb_ratio_table(size, k), jnp.float32)
    a = jnp.asarray(a, jnp.int32)
    m = jnp.asarray(m, jnp.int32)
    ok = (a >= 0) & (m >= 0)
    val = table[jnp.clip(a, 0, size), jnp.clip(m, 0, size)]
    return jnp.where(ok, val, 0.0)


def _counts(scores_BM, mask_BM):
    """le_j, lt_j (counts over valid samples) and the [B, M(j), M(i)] comparison masks."""
    s_j = scores_BM[..., :, None]
    s_i = scores_BM[..., None, :]
    v_i = mask_BM[..., None, :]
    le = jnp.sum(v_i & (s_i <= s_j), axis=-1).astype(jnp.int32)
    lt = jnp.sum(v_i & (s_i < s_j), axis=-1).astype(jnp.int32)
    return le, lt, s_j, s_i, v_i


def bon_winner_weights(scores_BM, mask_BM, n: int):
    """u_j = P(sample j wins a uniformly random n-subset of the valid samples), ties broken uniformly.

    u_j = [C(le_j, n) - C(lt_j, n)] / (e_j C(m, n)). Sum over j is 1 for prompts with m >= n valid samples.
    For any function h, sum_j u_j h(y_j) is an unbiased estimate of E_{y ~ pi_BoN(pi, s, n)}[h(y)] when the
    y_j are iid from pi (it averages the BoN winner of every n-subset). This is also the BoN@n weight of
    docs/maths.md section 2: sum_j u_j R_j is the unbiased BoN@n estimate.

    Args:
      scores_BM: [B, M] selection scores (finite at valid samples).
      mask_BM: [B, M] bool.
      n: Best-of-n size, a Python int >= 1.
    Returns: [B, M] float32.
    """
    n = check_n(n)
    size = scores_BM.shape[-1]
    mask_BM = jnp.asarray(mask_BM, bool)
    le, lt, *_ = _counts(scores_BM, mask_BM)
    m = jnp.sum(mask_BM, axis=-1, keepdims=True).astype(jnp.int32)
    e = jnp.maximum(le - lt, 1)
    u = (comb_ratio(le, m, n, size) - comb_ratio(lt, m, n, size)) / e
    return jnp.where(mask_BM & (m >= n), u, 0.0)


def bon_rl_weights(scores_BM, rewards_BM, mask_BM, n: int, *, baseline: str = "loo"):
    """Per-sample weights of the unbiased U-statistic gradient of J = E_{y ~ pi_BoN(pi, s, n)}[R(y)].

    With V(S) the reward of the BoN winner of a subset S (for tied top scores: the mean reward of the tied
    top, i.e. the expectation over the uniform tie-break),

        w_j = (n/m) * (A_j - b_j),

    A_j = mean of V(S) over the n-subsets S of the m valid samples with j in S,

    b_j = mean of V(S) over the n-subsets of the OTHER m - 1 samples when m > n, the mean reward of the others
    when m = n (0 when m = 1); baseline="none" sets b_j = 0. sum_j w_j grad log pi(y_j) is unbiased for grad J
    (grad J = E[V(y_1..y_n) sum_i grad log pi(y_i)], averaged over all n-subsets; b_j does not depend on y_j).

    A_j in closed form, with c_ji = P(i wins | j in S):
      c_jj = [C(le_j, n) - C(lt_j, n)] / (e_j C(m-1, n-1))              (= (m/n) u_j),
      c_ji = [C(le_i - 1, n-1) - C(lt_i - 1, n-1)] / (e_i C(m-1, n-1))   for s_i > s_j,
      c_ji = [C(le_j - 1, n-1) / C(m-1, n-1) - c_jj] / (e_j - 1)         for i != j tied with j,
      c_ji = 0 for s_i < s_j;   A_j = sum_i c_ji R_i.
    The tied case uses the hypergeometric identity E[1/(1+U)] for the number U of tied others drawn.

    Args:
      scores_BM, rewards_BM: [B, M] (finite at valid samples).
      mask_BM: [B, M] bool.
      n: Python int >= 1.
      baseline: "loo" (the b_j above) or "none".
    Returns: (w_BM, a_BM, b_BM), float32 [B, M]; all 0 at masked samples and where m < n.
    """
    n = check_n(n)
    if baseline not in ("loo", "none"):
        raise ValueError(f"baseline must be 'loo' or 'none', got {baseline!r}")
    size = scores_BM.shape[-1]
    mask_BM = jnp.asarray(mask_BM, bool)
    r = jnp.where(mask_BM, rewards_BM, 0.0).astype(jnp.float32)
    le, lt, s_j, s_i, v_i = _counts(scores_BM, mask_BM)
    m = jnp.sum(mask_BM, axis=-1, keepdims=True).astype(jnp.int32)
    e = le - lt
    eye = jnp.eye(size, dtype=bool)
    not_self = ~eye

    # A_j.
    u = (comb_ratio(le, m, n, size) - comb_ratio(lt, m, n, size)) / jnp.maximum(e, 1)
    c_self = u * (m.astype(jnp.float32) / n)
    c_above_i = (
        comb_ratio(le - 1, m - 1, n - 1, size) - comb_ratio(lt - 1, m - 1, n - 1, size)
    ) / jnp.maximum(e, 1)  # indexed by i: P(i wins | j in S) for any j strictly below i
    c_tied = (comb_ratio(le - 1, m - 1, n - 1, size) - c_self) / jnp.maximum(e - 1, 1)
    above = v_i & (s_i > s_j)
    tied = v_i & (s_i == s_j) & not_self
    a = (
        c_self * r
        + jnp.sum(jnp.where(above, (c_above_i * r)[..., None, :], 0.0), axis=-1)
        + c_tied * jnp.sum(jnp.where(tied, r[..., None, :], 0.0), axis=-1)
    )

    # b_j.
    if baseline == "none":
        b = jnp.zeros_like(a)
    else:
        others = v_i & not_self
        le_i = le[..., None, :] - (s_j <= s_i)
        lt_i = lt[..., None, :] - (s_j < s_i)
        e_i = jnp.maximum(le_i - lt_i, 1)
        mm = (m - 1)[..., None]
        win_i = (comb_ratio(le_i, mm, n, size) - comb_ratio(lt_i, mm, n, size)) / e_i
        b_sub = jnp.sum(jnp.where(others, win_i * r[..., None, :], 0.0), axis=-1)
        sum_others = jnp.sum(r, axis=-1, keepdims=True) - r
        b_mean = sum_others / jnp.maximum(m - 1, 1)
        b = jnp.where(m > n, b_sub, b_mean)

    ok = mask_BM & (m >= n)
    w = (n / jnp.maximum(m, 1)) * (a - b)
    zero = jnp.zeros_like(w)
    return jnp.where(ok, w, zero), jnp.where(ok, a, zero), jnp.where(ok, b, zero)


def pass_at_k(m, c, k: int, size: int):
    """rho(m, c, k) = 1 - C(m - c, k) / C(m, k): the unbiased pass@k from m samples with c correct."""
    return 1.0 - comb_ratio(m - c, m, k, size)


def pass_at_k_weights(rewards_BM, mask_BM, k: int):
    """Walder & Karkhanis (2025) unbiased pass@k policy-gradient weights for binary rewards.

    With m valid samples of which c are correct: w_j = (k/m) (A_j - b_j), A_j = 1 for a correct sample and
    rho(m-1, c, k-1) for an incorrect one (the probability that a random k-subset containing j has a correct
    sample), and the leave-one-out baseline b_j = rho(m-1, c_-j, k) (pass@k of the others) when m > k, the
    mean reward of the others when m = k. This is `bon_rl_weights` with s = R for binary R, in O(M).

    Args:
      rewards_BM: [B, M] in {0, 1} (a value > 0.5 counts as correct).
      mask_BM: [B, M] bool.
      k: Python int >= 1.
    Returns: (w_BM, a_BM, b_BM) float32, 0 at masked samples and where m < k.
    """
    k = check_n(k)
    size = rewards_BM.shape[-1]
    mask_BM = jnp.asarray(mask_BM, bool)
    correct = mask_BM & (rewards_BM > 0.5)
    r = correct.astype(jnp.int32)
    m = jnp.sum(mask_BM, axis=-1, keepdims=True).astype(jnp.int32)
    c = jnp.sum(r, axis=-1, keepdims=True)
    a = jnp.where(correct, 1.0, pass_at_k(m - 1, c, k - 1, size))
    c_others = c - r
    b = jnp.where(
        m > k, pass_at_k(m - 1, c_others, k, size), c_others.astype(jnp.float32) / jnp.maximum(m - 1, 1)
    )
    ok = mask_BM & (m >= k)
    w = (k / jnp.maximum(m, 1)) * (a - b)
    zero = jnp.zeros(w.shape, jnp.float32)
    return jnp.where(ok, w, zero), jnp.where(ok, a, zero), jnp.where(ok, b, zero)


def check_n(n) -> int:
    """n as a Python int; ValueError unless it is a static integer >= 1."""
    if isinstance(n, jax.core.Tracer) or int(n) != n or n < 1:
        raise ValueError(f"n must be a static Python int >= 1, got {n!r}")
    return int(n)
