"""bon_jax.exact against independent references: enumeration of draw tuples, closed forms, float64 numpy."""

import itertools

import jax
import numpy as np
import pytest

from bon_jax import exact
from bon_jax import objectives as O


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - np.max(x))
    return e / e.sum()


def brute_bon(probs, scores, n):
    """pi_BoN by enumerating the A^n draw tuples; ties broken uniformly among the drawn maxima."""
    out = np.zeros(len(probs))
    for draws in itertools.product(range(len(probs)), repeat=n):
        p = np.prod(probs[list(draws)])
        top = max(scores[d] for d in draws)
        winners = [d for d in draws if scores[d] == top]
        for d in winners:
            out[d] += p / len(winners)
    return out


def kl(p, q):
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


A = 6
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=A).astype(np.float32)
REF = RNG.normal(size=A).astype(np.float32)
REWARDS = np.array([0.0, 1.0, 0.5, 0.5, 1.0, 0.0], np.float32)  # ties
SCORES = np.array([2.0, 0.0, 1.0, 2.0, 1.0, 0.0], np.float32)  # ties, != rewards
BINARY = np.array([0.0, 1.0, 0.0, 1.0, 1.0, 0.0], np.float32)
EXPERT = RNG.dirichlet(np.ones(A)).astype(np.float32)
ANCHOR = RNG.normal(size=A).astype(np.float32)


def j(name, rewards=REWARDS, scores=SCORES, logits=LOGITS, **kw):
    return float(exact.objective(name, logits, rewards, scores, REF, expert_probs_A=EXPERT, **kw))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_bon_rl_matches_enumeration(n):
    pi = softmax(LOGITS)
    want = brute_bon(pi, SCORES, n) @ REWARDS
    assert j("bon_rl", n=n) == pytest.approx(want, rel=1e-5)
    assert j("bon_rl_v", n=n) == pytest.approx(want, rel=1e-5)
    assert j("bon_rl_s", n=n) == pytest.approx(brute_bon(pi, REWARDS, n) @ REWARDS, rel=1e-5)


@pytest.mark.parametrize("name", [n for n in O.names() if O.spec(n).binary_reward])
def test_binary_objectives_are_pass_at_n(name):
    pi = softmax(LOGITS)
    p = pi @ (1 - BINARY)
    for n in (1, 2, 4):
        assert j(name, rewards=BINARY, n=n) == pytest.approx(1 - p**n, rel=1e-5)
        assert j(name, rewards=BINARY, n=n) == pytest.approx(j("bon_rl_s", rewards=BINARY, n=n), rel=1e-5)
    with pytest.raises(ValueError, match="binary"):
        j(name, n=2)


def test_vbon_family_closed_forms():
    pi, ref = softmax(LOGITS), softmax(REF)
    for n in (1, 2, 4):
        bon_ref = brute_bon(ref, REWARDS, n)
        # beta = 1 (default): J = -KL(pi || pi_BoN(pi_ref)).
        assert j("vbon", n=n) == pytest.approx(-kl(pi, bon_ref), rel=1e-4, abs=1e-5)
        f = np.array([ref[REWARDS <= r].sum() for r in REWARDS])
        bound = np.log(n) + (n - 1) * pi @ np.log(f) - kl(pi, ref)
        assert j("vbon_bound", n=n) == pytest.approx(bound, rel=1e-4, abs=1e-5)
        for b in (0.0, 0.5, 1.0):
            jeffreys = (1 - b) * kl(bon_ref, pi) + b * kl(pi, bon_ref)
            assert j("bond", n=n, b=b) == pytest.approx(-jeffreys, rel=1e-4, abs=1e-5)
        # Selecting by score instead.
        bon_s = brute_bon(ref, SCORES, n)
        assert j("vbon", n=n, select_by="score") == pytest.approx(-kl(pi, bon_s), rel=1e-4, abs=1e-5)
        assert j("bon_distill_sft", n=n) == pytest.approx(bon_s @ np.log(pi), rel=1e-5)
        assert j("bon_distill_sft", n=n, select_by="reward") == pytest.approx(bon_ref @ np.log(pi), rel=1e-5)


def test_vbon_is_maximised_at_the_bon_distribution():
    """J = -KL(pi || pi_BoN(pi_ref)) is 0 with zero gradient at pi = pi_BoN, negative elsewhere."""
    bon_ref = brute_bon(softmax(REF), REWARDS, 3)
    at = np.log(bon_ref).astype(np.float32)
    assert j("vbon", n=3, logits=at) == pytest.approx(0.0, abs=1e-5)
    grad = jax.grad(lambda lg: exact.objective("vbon", lg, REWARDS, SCORES, REF, n=3))(at)
    np.testing.assert_allclose(grad, 0.0, atol=1e-5)
    assert j("vbon", n=3) < -1e-3


def test_kl_rl_sft_bon_sft():
    pi, ref = softmax(LOGITS), softmax(REF)
    for beta in (0.0, 0.3):
        assert j("kl_rl", n=1, beta=beta) == pytest.approx(pi @ REWARDS - beta * kl(pi, ref), rel=1e-5)
    assert j("sft", n=1) == pytest.approx(EXPERT @ np.log(pi), rel=1e-5)
    # bon_sft: E_D log of the twisted pi_bon, with Q(y) = P_pi(s(y') <= s(y)).
    q = np.array([pi[SCORES <= s].sum() for s in SCORES])
    for n in (2, 4):
        lam = 1.7
        tw = pi * np.exp(lam * q)
        tw /= tw.sum()
        assert j("bon_sft", n=n, lam=lam) == pytest.approx(EXPERT @ np.log(tw), rel=1e-5)
    assert j("bon_sft", n=4, lam=0.0) == pytest.approx(j("sft", n=4), rel=1e-6)
    with pytest.raises(ValueError, match="expert_probs_A"):
        exact.objective("sft", LOGITS, REWARDS, SCORES, REF, n=1)


@pytest.mark.parametrize("name", sorted(set(O.names()) - {"bon_distill_sft"}))
def test_kl_terms_and_default_beta(name):
    rewards = BINARY if O.spec(name).binary_reward else REWARDS
    pi, ref, anchor = softmax(LOGITS), softmax(REF), softmax(ANCHOR)
    default = O.spec(name).default_beta  # the facts themselves: test_objective_specs.py
    scale = 0.5 if name == "bond" else 1.0  # bond's beta sits inside the b-weighted backward part (b = 0.5)
    base = j(name, rewards=rewards, n=2, beta=0.0)
    assert j(name, rewards=rewards, n=2) == pytest.approx(base - default * scale * kl(pi, ref), rel=1e-5)
    assert j(name, rewards=rewards, n=2, beta=0.2) == pytest.approx(
        base - 0.2 * scale * kl(pi, ref), rel=1e-5
    )
    with_anchor = j(name, rewards=rewards, n=2, beta=0.0, anchor_coef=0.7, anchor_logits_A=ANCHOR)
    assert with_anchor == pytest.approx(base - 0.7 * kl(pi, anchor), rel=1e-5, abs=1e-6)


def test_options_and_errors():
    # Estimator-only options are accepted and ignored.
    assert j("bon_rlb", rewards=BINARY, n=2, p_B=0.3, p_clip=(0.01, 0.99), clip_eps=0.2) == pytest.approx(
        j("bon_rlb", rewards=BINARY, n=2)
    )
    with pytest.raises(TypeError, match="unknown option"):
        j("bon_rl", n=2, no_such_option=1)
    with pytest.raises(KeyError):
        j("nope", n=2)
    with pytest.raises(ValueError, match="anchor_logits_A"):
        j("bon_rl", n=2, anchor_coef=0.5)
    with pytest.raises(ValueError, match="no KL terms"):
        j("bon_distill_sft", n=2, beta=0.1)


@pytest.mark.parametrize("name", sorted(O.names()))
def test_gradients_finite_and_match_finite_differences(name):
    rewards = BINARY if O.spec(name).binary_reward else REWARDS

    def f(lg):
        return exact.objective(name, lg, rewards, SCORES, REF, n=3, expert_probs_A=EXPERT)

    g = np.asarray(jax.grad(f)(LOGITS), np.float64)
    assert np.all(np.isfinite(g))
    eps = 1e-2
    for k in (0, 3):
        e = np.zeros(A, np.float32)
        e[k] = eps
        fd = (float(f(LOGITS + e)) - float(f(LOGITS - e))) / (2 * eps)
        assert g[k] == pytest.approx(fd, rel=2e-2, abs=2e-3)
