"""bon_jax.bon against independent references: enumeration of all draw tuples, closed forms, float64 numpy."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import bon

# ---------------------------------------------------------------- references


def brute_force_bon(probs, scores, n):
    """Enumerate all K^n draw tuples; the winner is uniform among the draws achieving the max score."""
    probs = np.asarray(probs, np.float64)
    scores = np.asarray(scores, np.float64)
    k = len(probs)
    out = np.zeros(k)
    for draws in itertools.product(range(k), repeat=n):
        p = np.prod(probs[list(draws)])
        if p == 0:
            continue
        s = scores[list(draws)]
        winners = [d for d, sd in zip(draws, s) if sd == s.max()]
        for d in winners:
            out[d] += p / len(winners)
    return out


def reference_bon_f64(probs, scores, n):
    """float64 pi (F^n - F_^n)/q in the cancellation-free form pi * sum_{j<n} F^j F_^(n-1-j)."""
    probs = np.asarray(probs, np.float64)
    scores = np.asarray(scores, np.float64)
    lt = scores[None, :] < scores[:, None]
    eq = scores[None, :] == scores[:, None]
    f_lt = (lt * probs[None, :]).sum(-1)
    f = f_lt + (eq * probs[None, :]).sum(-1)
    j = np.arange(n)
    g = (f[:, None] ** j * f_lt[:, None] ** (n - 1 - j)).sum(-1)
    return probs * g


def random_case(rng, k, num_levels, zero_frac=0.2):
    probs = rng.dirichlet(np.ones(k))
    probs[rng.random(k) < zero_frac] = 0.0
    if probs.sum() == 0:
        probs[0] = 1.0
    probs /= probs.sum()
    scores = rng.integers(0, num_levels, size=k).astype(np.float64)
    return probs, scores


# ---------------------------------------------------------------- bon_distribution


@pytest.mark.parametrize("k,n", [(3, 1), (3, 2), (4, 3), (5, 4), (3, 6)])
def test_bon_distribution_matches_enumeration(k, n):
    rng = np.random.default_rng(100 * k + n)
    for _ in range(4):
        probs, scores = random_case(rng, k, num_levels=max(2, k - 1))  # ties and zeros
        got = np.asarray(bon.bon_distribution(jnp.asarray(probs, jnp.float32), scores, n))
        want = brute_force_bon(probs, scores, n)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(got.sum(), 1.0, atol=1e-5)


def test_bon_distribution_explicit_ties_and_zero_outcomes():
    # outcome 3 has zero probability alone at the top level; outcome 4 has zero probability inside a tie.
    probs = np.array([0.1, 0.2, 0.3, 0.0, 0.0, 0.4])
    scores = np.array([1.0, 2.0, 2.0, 9.0, 1.0, 0.0])
    for n in [1, 2, 3, 5]:
        got = np.asarray(bon.bon_distribution(probs, scores, n))
        np.testing.assert_allclose(got, brute_force_bon(probs, scores, n), rtol=1e-5, atol=1e-8)
        assert got[3] == 0 and got[4] == 0
        assert np.all(np.isfinite(got))


def test_n1_is_pi_and_sums_to_one_batched():
    rng = np.random.default_rng(0)
    cases = [random_case(rng, 7, 4) for _ in range(6)]
    probs = np.stack([c[0] for c in cases]).reshape(2, 3, 7)
    scores = np.stack([c[1] for c in cases]).reshape(2, 3, 7)
    np.testing.assert_allclose(bon.bon_distribution(probs, scores, 1), probs, rtol=1e-6, atol=1e-8)
    for n in [2, 8, 100]:
        out = np.asarray(bon.bon_distribution(probs, scores, n))
        assert out.shape == (2, 3, 7)
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
        for b in range(6):
            np.testing.assert_allclose(
                out.reshape(6, 7)[b], reference_bon_f64(probs.reshape(6, 7)[b], scores.reshape(6, 7)[b], n),
                rtol=1e-4, atol=1e-8)


def test_no_ties_binomial_form():
    rng = np.random.default_rng(1)
    k = 12
    probs = rng.dirichlet(np.ones(k))
    scores = rng.permutation(k).astype(np.float64)
    f_lt = np.array([probs[scores < s].sum() for s in scores])
    for n in [2, 5, 17]:
        want = (f_lt + probs) ** n - f_lt ** n
        np.testing.assert_allclose(bon.bon_distribution(probs, scores, n), want, rtol=2e-5, atol=1e-8)


def test_binary_reward_closed_form_chow_eq8():
    rng = np.random.default_rng(2)
    k = 9
    probs = rng.dirichlet(np.ones(k))
    reward = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0], np.float64)
    p = probs[reward == 0].sum()
    for n in [1, 2, 4, 32]:
        want = np.where(reward == 0, probs * p ** (n - 1), probs * (1 - p ** n) / (1 - p))
        got = np.asarray(bon.bon_distribution(probs, reward, n))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-9)
        # pass@n = 1 - p^n
        np.testing.assert_allclose(got[reward == 1].sum(), 1 - p ** n, rtol=1e-5)


def test_bounds():
    rng = np.random.default_rng(3)
    for _ in range(5):
        probs, scores = random_case(rng, 15, 6)
        f_lt = np.array([probs[scores < s].sum() for s in scores])
        f = np.array([probs[scores <= s].sum() for s in scores])
        for n in [2, 3, 10]:
            got = np.asarray(bon.bon_distribution(probs, scores, n), np.float64)
            lower = n * probs * f_lt ** (n - 1)
            upper = n * probs * f ** (n - 1)
            assert np.all(got >= lower * (1 - 1e-5) - 1e-9)
            assert np.all(got <= upper * (1 + 1e-5) + 1e-9)


def kl_bon(probs, scores, n, method="auto"):
    pb = bon.bon_distribution(probs, scores, n, method=method)
    lg = bon.log_bon_weight(*bon.bon_cdfs(probs, scores, method=method), n)
    return float(jnp.sum(jnp.where(pb > 0, pb * lg, 0.0)))


def test_kl_bound_and_continuous_limit():
    rng = np.random.default_rng(4)
    # Any case: KL <= log n - (n-1)/n.
    for _ in range(5):
        probs, scores = random_case(rng, 20, 5, zero_frac=0.0)
        for n in [2, 4, 16]:
            assert kl_bon(probs, scores, n) <= bon.kl_bon_upper_bound(n) + 1e-6
    # Continuous limit: uniform pi over many distinct scores approaches the bound (the discrete gap is tiny,
    # ~1e-6 at K = 1000; a coarse K = 10 is visibly below it).
    gaps = {}
    for k, method in [(10, "pairwise"), (1000, "pairwise"), (5000, "sort")]:
        probs = np.full(k, 1.0 / k)
        scores = rng.permutation(k)
        for n in [2, 4, 16]:
            kl = kl_bon(probs, scores, n, method=method)
            gaps[k, n] = bon.kl_bon_upper_bound(n) - kl
            assert gaps[k, n] > -5e-6, (k, n, kl)
    for n in [2, 4, 16]:
        assert gaps[10, n] > 1e-3
        assert gaps[1000, n] < 2e-5 and gaps[5000, n] < 2e-5


def test_float32_accuracy_against_float64_in_hard_regimes():
    rng = np.random.default_rng(5)
    # Many tiny-probability outcomes (F_ close to F), large n (F^n far from 1), mass near the top level.
    k = 400
    probs = rng.dirichlet(np.full(k, 0.05))
    probs = np.maximum(probs, 0)
    probs /= probs.sum()
    scores = rng.integers(0, 150, size=k).astype(np.float64)
    for n in [2, 64, 1000, 100000]:
        want = reference_bon_f64(probs, scores, n) if n <= 1000 else None
        got = np.asarray(bon.bon_distribution(jnp.asarray(probs, jnp.float32), scores, n), np.float64)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got.sum(), 1.0, atol=2e-5)
        if want is not None:
            sig = want > 1e-30
            np.testing.assert_allclose(got[sig], want[sig], rtol=5e-5)  # the naive form is off by 100%
    # F close to 1: one outcome with nearly all mass at the top, tiny mass above a second one.
    probs = np.array([1e-7, 1e-6, 1 - 1e-6 - 1e-7], np.float64)
    scores = np.array([0.0, 2.0, 1.0])
    n = 10000
    got = np.asarray(bon.bon_distribution(jnp.asarray(probs, jnp.float32), scores, n), np.float64)
    want = reference_bon_f64(probs, scores, n)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-300)


def test_sort_method_matches_pairwise():
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(50), size=(3,))
    probs[:, ::7] = 0
    probs /= probs.sum(-1, keepdims=True)
    scores = rng.integers(0, 12, size=(3, 50)).astype(np.float32)
    for a, b in zip(bon.bon_level_masses(probs, scores, method="sort"),
                    bon.bon_level_masses(probs, scores, method="pairwise")):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(bon.bon_distribution(probs, scores, 7, method="sort"),
                               bon.bon_distribution(probs, scores, 7, method="pairwise"),
                               rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError):
        bon.bon_level_masses(probs, scores, method="bogus")


def test_jit_traced_n_and_finite_gradients():
    probs = jnp.array([0.1, 0.2, 0.3, 0.0, 0.4])
    scores = jnp.array([1.0, 2.0, 2.0, 3.0, 0.0])
    f = jax.jit(bon.bon_distribution)
    for n in [1, 2, 5]:
        want = brute_force_bon(probs, scores, n)
        np.testing.assert_allclose(f(probs, scores, n), want, rtol=1e-5, atol=1e-8)
    # Non-integer n is allowed by the formula (e.g. a relaxed n); it still sums to 1.
    np.testing.assert_allclose(jnp.sum(f(probs, scores, 2.5)), 1.0, atol=1e-6)

    reward = jnp.array([0.0, 1.0, 0.5, 2.0, -1.0])

    def expected_reward(logits, n):
        return jnp.sum(bon.bon_distribution(jax.nn.softmax(logits), scores, n) * reward)

    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 1e-30, 0.4]))
    g = jax.jit(jax.grad(expected_reward))(logits, 4)
    assert np.all(np.isfinite(g))

    # Gradient with exact zeros (zero-prob outcome at the top and at the bottom) stays finite.
    def expected_reward_p(p, n):
        return jnp.sum(bon.bon_distribution(p, scores, n) * reward)

    gp = jax.jit(jax.grad(expected_reward_p))(jnp.array([0.0, 0.2, 0.3, 0.0, 0.5]), 3.0)
    assert np.all(np.isfinite(gp))

    # Gradient wrt logits vs central differences of the float64 reference.
    lg = np.log(np.array([0.15, 0.2, 0.25, 0.1, 0.3]))

    def ref(lgv):
        p = np.exp(lgv - lgv.max())
        p /= p.sum()
        return float(np.sum(reference_bon_f64(p, np.asarray(scores), 4) * np.asarray(reward)))

    fd = np.array([(ref(lg + 1e-5 * e) - ref(lg - 1e-5 * e)) / 2e-5 for e in np.eye(5)])
    np.testing.assert_allclose(jax.jit(jax.grad(expected_reward))(jnp.asarray(lg, jnp.float32), 4), fd,
                               atol=2e-5)


def test_float64_under_x64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        probs, scores = random_case(rng, 30, 8)
        got = bon.bon_distribution(jnp.asarray(probs), scores, 9)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, reference_bon_f64(probs, scores, 9), rtol=1e-12, atol=1e-300)


def test_log_bon_weight_edge_cases():
    n = 4
    # generic
    np.testing.assert_allclose(bon.bon_weight(0.7, 0.5, n), (0.7 ** 4 - 0.5 ** 4) / 0.2, rtol=1e-5)
    # lowest level: F_ = 0 -> F^(n-1)
    np.testing.assert_allclose(bon.bon_weight(0.3, 0.0, n), 0.3 ** 3, rtol=1e-5)
    # q = 0 -> n F^(n-1)
    np.testing.assert_allclose(bon.bon_weight(0.6, 0.6, n), 4 * 0.6 ** 3, rtol=1e-5)
    # F = 0 -> 0 for n > 1, 1 for n = 1
    assert float(bon.bon_weight(0.0, 0.0, n)) == 0.0
    assert float(bon.bon_weight(0.0, 0.0, 1)) == 1.0
    # top level, tiny q: G ~ n (1 - stuff), no cancellation
    q = 1e-6
    want = (1 - (1 - q) ** 1000) / q
    np.testing.assert_allclose(bon.bon_weight(1.0, 1.0 - q, 1000), want, rtol=1e-3)


# ---------------------------------------------------------------- lambda, twisting


def test_bon_lambda_table_and_equation():
    table = {2: 2.2886, 4: 4.9169, 8: 9.0545, 16: 17.0319, 32: 33.0158}
    for n, want in table.items():
        lam = bon.bon_lambda(n)
        assert abs(lam - want) <= 5e-5, (n, lam, want)
        # The equation in its printed form (float64; no overflow for these l).
        lhs = ((lam - 1) * math.exp(lam) + 1) / (math.exp(lam) - 1) - math.log((math.exp(lam) - 1) / lam)
        assert abs(lhs - (math.log(n) - (n - 1) / n)) < 1e-10
    assert bon.bon_lambda(1) == 0.0
    # Large n: the printed form overflows, the log-space form does not; lambda ~ n e^(1/n).
    for n in [1000, 10 ** 6]:
        lam = bon.bon_lambda(n)
        assert abs(bon._twist_kl(lam) - bon.kl_bon_upper_bound(n)) < 1e-10
        assert abs(lam - n * math.exp(1 / n)) < 1e-3 * n
    lams = [bon.bon_lambda(n) for n in range(1, 40)]
    assert all(b > a for a, b in zip(lams, lams[1:]))
    with pytest.raises(ValueError):
        bon.bon_lambda(0)


def test_kl_bon_upper_bound():
    assert bon.kl_bon_upper_bound(1) == 0.0
    assert abs(bon.kl_bon_upper_bound(4) - (math.log(4) - 0.75)) < 1e-15
    np.testing.assert_allclose(bon.kl_bon_upper_bound(jnp.array([2.0, 8.0])),
                               [math.log(2) - 0.5, math.log(8) - 7 / 8], rtol=1e-6)


def test_twisted_bon_distribution():
    rng = np.random.default_rng(8)
    probs, scores = random_case(rng, 10, 5)
    f = np.array([probs[scores <= s].sum() for s in scores])
    for n in [1, 4, 16]:
        lam = bon.bon_lambda(n)
        want = probs * np.exp(lam * f)
        want /= want.sum()
        np.testing.assert_allclose(bon.twisted_bon_distribution(probs, scores, n), want, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(bon.twisted_bon_distribution(probs, scores, 4, lam=0.0), probs, rtol=1e-5,
                               atol=1e-9)
    # lambda_n is defined so that, in the continuous limit, KL(twisted || pi) = log n - (n-1)/n.
    k = 2000
    probs = np.full(k, 1.0 / k)
    scores = rng.permutation(k)
    for n in [2, 8, 32]:
        tw = np.asarray(bon.twisted_bon_distribution(probs, scores, n), np.float64)
        kl = float(np.sum(tw * np.log(tw * k)))
        assert abs(kl - bon.kl_bon_upper_bound(n)) < 0.01, (n, kl)


# ---------------------------------------------------------------- select_best


def test_select_best_uniform_ties_and_mask():
    b = 6000
    scores = jnp.tile(jnp.array([0.0, 3.0, 1.0, 3.0, 3.0, 2.0]), (b, 1))
    idx = np.asarray(bon.select_best(scores, jax.random.PRNGKey(0)))  # jitted itself
    assert idx.dtype == np.int32 and idx.shape == (b,)
    counts = np.bincount(idx, minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    expected = b / 3
    chi2 = float(np.sum((counts[[1, 3, 4]] - expected) ** 2 / expected))
    assert chi2 < 13.8  # chi-square, 2 d.o.f., p = 0.001

    mask = jnp.tile(jnp.array([True, True, True, False, True, True]), (b, 1))
    idx = np.asarray(bon.select_best(scores, jax.random.PRNGKey(1), mask))
    counts = np.bincount(idx, minlength=6)
    assert counts[3] == 0 and counts[[0, 2, 5]].sum() == 0
    assert abs(counts[1] / b - 0.5) < 4 * math.sqrt(0.25 / b)

    # Masking the unique max moves the choice to the next best; -inf scores are valid and tie.
    s = jnp.array([[1.0, 5.0, 2.0], [-jnp.inf, -jnp.inf, -jnp.inf], [4.0, 4.0, 4.0]])
    m = jnp.array([[True, False, True], [True, True, False], [False, False, False]])
    idx = np.asarray(bon.select_best(s, jax.random.PRNGKey(2), m))
    assert idx[0] == 2 and idx[1] in (0, 1) and idx[2] == 0  # fully masked row -> 0 (documented)

    # Integer scores, extra batch axes.
    s = jnp.array([[[1, 7, 7, 3]]])
    idx = np.asarray(bon.select_best(s, jax.random.PRNGKey(3)))
    assert idx.shape == (1, 1) and idx[0, 0] in (1, 2)


# ---------------------------------------------------------------- empirical CDFs


def test_empirical_cdfs():
    rng = np.random.default_rng(9)
    ref = rng.integers(0, 5, size=(3, 11)).astype(np.float32)
    s = rng.integers(-1, 6, size=(3, 4)).astype(np.float32)
    mask = rng.random((3, 11)) < 0.7
    for smoothing in [0.0, 1.0]:
        f, f_lt = bon.empirical_cdfs(ref, s, smoothing=smoothing, ref_mask_BK=mask)
        for b in range(3):
            r = ref[b][mask[b]]
            for m in range(4):
                k_le = (r <= s[b, m]).sum()
                k_lt = (r < s[b, m]).sum()
                np.testing.assert_allclose(f[b, m], (k_le + smoothing) / (len(r) + smoothing), rtol=1e-6)
                np.testing.assert_allclose(f_lt[b, m], k_lt / (len(r) + smoothing), rtol=1e-6)
    # Add-one smoothing keeps log G finite even below every reference.
    f, f_lt = bon.empirical_cdfs(ref, s - 100.0)
    assert np.all(np.isfinite(bon.log_bon_weight(f, f_lt, 8)))
    np.testing.assert_allclose(f, 1 / 12, rtol=1e-6)
