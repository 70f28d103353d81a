"""Deterministic tests of bon_jax.objectives: registry and contract, U-statistic weights against subset
enumeration, masks, degenerate inputs, refusal of bad values, PPO ratios, schedules."""

import functools
import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import exact
from bon_jax import objectives as O
from bon_jax.objectives import weights as W

ALL = {
    "sft", "bon_sft", "bon_rl_v", "bon_rl_s", "bon_rl", "bon_rlb", "bon_rlb_printed", "bon_rlbp", "pkpo", "vbon",
    "vbon_bound", "kl_rl", "bon_distill_sft", "bond", "grpo", "dr_grpo",
}  # fmt: skip
# What each objective needs, from its registration (the facts are checked in test_objective_specs.py).
BINARY = {n for n in ALL if O.spec(n).binary_reward}
EXPERT = {n for n in ALL if O.spec(n).demonstrations}
NEEDS_M_GE_N = {n for n in ALL if O.spec(n).needs_n_samples}


# ---------------------------------------------------------------- registry and contract


def test_registry_names_and_lookup():
    assert set(O.names()) == ALL
    assert list(O.names()) == sorted(O.names())
    with pytest.raises(KeyError, match="registered: bon_distill_sft"):
        O.get("bon_rlx")
    with pytest.raises(ValueError, match="already registered"):
        O.register("bon_rl")(lambda *a, **k: None)
    assert O.register("bon_rl")(O.get("bon_rl")) is O.get("bon_rl")  # re-registering the same fn is fine


@pytest.mark.parametrize("name", sorted(ALL))
def test_signature_and_docstring(name):
    fn = O.get(name)
    params = inspect.signature(fn).parameters
    assert list(params)[:2] == ["logp_BM", "rollout"]
    for kw in ("n", "beta", "expert_logp_B", "anchor_coef"):
        assert params[kw].kind is inspect.Parameter.KEYWORD_ONLY, (name, kw)
    assert params["beta"].default == O.spec(name).default_beta
    doc = fn.__doc__
    assert "J = " in doc and "Inputs" in doc
    assert ("nbiased" in doc) or ("Biased" in doc) or ("biased" in doc)


def test_rollout_is_a_pytree():
    r = O.Rollout(rewards_BM=jnp.ones((2, 3)), mask_BM=jnp.ones((2, 3), bool))
    leaves = jax.tree_util.tree_leaves(r)
    assert len(leaves) == 2
    doubled = jax.jit(lambda r: jax.tree_util.tree_map(lambda x: x * 2, r))(r.replace(mask_BM=None))
    np.testing.assert_array_equal(doubled.rewards_BM, 2 * np.ones((2, 3)))
    assert doubled.scores_BM is None


# ---------------------------------------------------------------- weights vs enumeration


def _value(subset, s, r):
    top = max(s[i] for i in subset)
    return np.mean([r[i] for i in subset if s[i] == top])


def _brute(s, r, mask, n):
    """(w, u) by enumerating all n-subsets (float64): the U-statistic weights and BoN-winner probabilities."""
    idx = [i for i in range(len(s)) if mask[i]]
    m = len(idx)
    w, u = np.zeros(len(s)), np.zeros(len(s))
    if m < n:
        return w, u
    subsets = list(itertools.combinations(idx, n))
    for sub in subsets:
        top = max(s[i] for i in sub)
        tied = [i for i in sub if s[i] == top]
        for i in tied:
            u[i] += 1 / len(tied) / len(subsets)
    for j in idx:
        a = np.mean([_value(sub, s, r) for sub in subsets if j in sub])
        others = [i for i in idx if i != j]
        if m > n:
            b = np.mean([_value(sub, s, r) for sub in itertools.combinations(others, n)])
        else:
            b = np.mean([r[i] for i in others]) if others else 0.0
        w[j] = n / m * (a - b)
    return w, u


@functools.partial(jax.jit, static_argnums=4)
def _weights(s, r, rb, mask, n):
    return (
        W.bon_rl_weights(s, r, mask, n)[0],
        W.bon_winner_weights(s, mask, n),
        W.pass_at_k_weights(rb, mask, n)[0],
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_weights_match_subset_enumeration(n):
    rng = np.random.default_rng(n)
    b, m = 24, 7
    s = rng.integers(0, 3, (b, m)).astype(np.float32)  # heavy ties
    r = rng.normal(size=(b, m)).round(1).astype(np.float32)
    mask = rng.random((b, m)) < 0.85
    mask[0] = True  # one prompt with M = 7 exactly, one with all masked
    mask[1] = False
    rb = (r > 0).astype(np.float32)
    w, u, pk = _weights(s, r, rb, mask, n)
    for i in range(b):
        bw, bu = _brute(s[i], r[i], mask[i], n)
        np.testing.assert_allclose(w[i], bw, atol=2e-6)
        np.testing.assert_allclose(u[i], bu, atol=2e-6)
        np.testing.assert_allclose(pk[i], _brute(rb[i], rb[i], mask[i], n)[0], atol=2e-6)


def test_comb_ratio_large_m_is_accurate():
    """C(a, k)/C(m, k) from a float64 table: no overflow or cancellation for M = 300 (C(300, 150) ~ 1e89)."""
    from math import comb

    a = np.array([150, 280, 290, 299, 300, 10, -1])
    got = np.asarray(W.comb_ratio(a, np.full(len(a), 300), 150, 300), np.float64)
    want = [comb(int(x), 150) / comb(300, 150) if x >= 0 else 0.0 for x in a]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-37)  # 1e-89 is 0 in float32
    assert got[2] > 1e-4


def test_pkpo_equals_bon_rl_with_reward_as_score():
    rng = np.random.default_rng(0)
    rewards = (rng.random((16, 6)) < 0.4).astype(np.float32)
    mask = rng.random((16, 6)) < 0.9
    logp = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
    r1 = O.Rollout(rewards_BM=rewards, mask_BM=mask)
    r2 = O.Rollout(rewards_BM=rewards, scores_BM=rewards, mask_BM=mask)
    for n in (3,):
        g1 = loss_and_grads("pkpo", logp, r1, n=n)[2][0]
        g2 = loss_and_grads("bon_rl", logp, r2, n=n)[2][0]
        np.testing.assert_allclose(g1, g2, atol=1e-6)


def _twist_lambda(n):
    """Chow's lambda_N in float64, independently of `bon.bon_lambda`: the tilt l at which the density
    l e^(l q) / (e^l - 1) on [0, 1] (the twisted uniform) has KL to the uniform equal to the BoN bound
    log N - (N - 1)/N; the KL by Simpson's rule on a fine grid, the root by bisection."""
    q = np.linspace(0.0, 1.0, 20001)
    simpson = np.ones_like(q)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    simpson *= (q[1] - q[0]) / 3.0

    def kl(lam):
        logp = np.log(lam / np.expm1(lam)) + lam * q
        return float(np.sum(simpson * np.exp(logp) * logp))

    target = np.log(n) - (n - 1) / n
    lo, hi = 1e-6, 4.0 * n + 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def test_twist_lambda_reference_matches_the_published_values():
    for n, lam in ((2, 2.2886), (4, 4.9169), (8, 9.0545)):
        assert abs(_twist_lambda(n) - lam) < 1e-4


@pytest.mark.parametrize("n, temperature", [(2, 1.0), (4, 1.0), (3, 0.5)])
def test_bon_sft_weights_match_a_float64_reference(n, temperature):
    """bon_sft's gradient with respect to logp_BM and expert_logp_B against docs/objectives.md in float64:
    weight 1 on the demonstration and, on valid sample i of a prompt with M valid samples,
    (lambda_N / M)[sigma((s_e - s_i)/t) - sum_j u_j sigma((s_j - s_i)/t)] - u_i, u_j = P(j wins a random
    N-subset) by enumeration, lambda_N from `_twist_lambda`; d loss / d logp = -w / B. Deterministic, and
    sensitive to lambda_N's value and sign (the Monte Carlo cosine test is not: lambda_N = 0 passes it)."""
    rng = np.random.default_rng(10 + n)
    b, m = 6, 6
    scores = rng.integers(0, 4, (b, m)).astype(np.float32)  # ties among samples
    scores[0] = rng.normal(size=m).astype(np.float32)  # and a prompt without ties
    expert_scores = rng.integers(0, 4, b).astype(np.float32)  # ties with samples too
    mask = np.ones((b, m), bool)
    mask[1, [0, 3]] = False  # M = 4 valid samples
    mask[2, 5] = False
    logp = jnp.asarray(-rng.random((b, m)) * 5, jnp.float32)
    expert = jnp.asarray(-rng.random(b) * 5, jnp.float32)
    rollout = O.Rollout(
        rewards_BM=np.zeros((b, m), np.float32), scores_BM=scores, expert_scores_B=expert_scores, mask_BM=mask
    )
    fn = O.get("bon_sft")
    loss_of = lambda lp, e: fn(lp, rollout, n=n, expert_logp_B=e, temperature=temperature)
    grad_fn = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)
    (loss, metrics), (g_logp, g_expert) = grad_fn(logp, expert)

    lam = _twist_lambda(n)
    sigma = lambda x: 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64) / temperature))
    s, se = scores.astype(np.float64), expert_scores.astype(np.float64)
    twist, u = np.zeros((b, m)), np.zeros((b, m))  # w = twist - u
    for i in range(b):
        valid = np.flatnonzero(mask[i])
        u[i] = _brute(s[i], np.zeros(m), mask[i], n)[1]
        for k in valid:
            bon = sum(u[i, j] * sigma(s[i, j] - s[i, k]) for j in valid)
            twist[i, k] = lam / len(valid) * (sigma(se[i] - s[i, k]) - bon)
    w = twist - u
    assert np.abs(twist).max() > 0.1  # the lambda_N term is not negligible here
    np.testing.assert_allclose(np.asarray(g_logp, np.float64), -w / b, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_expert, np.float64), np.full(b, -1.0 / b), rtol=1e-6)
    expected_loss = -(np.sum(w * np.asarray(logp, np.float64)) + np.sum(np.asarray(expert, np.float64))) / b
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["lambda"]), lam, rtol=1e-5)


# ---------------------------------------------------------------- a generic rollout for every objective


def make_inputs(name, b=3, m=5, n=2, rewards=None, seed=0, mask=None):
    rng = np.random.default_rng(seed)
    if rewards is None:
        rewards = (rng.random((b, m)) < 0.5) if name in BINARY else rng.integers(0, 3, (b, m)) / 2.0
    rewards = np.asarray(rewards, np.float32)
    b, m = rewards.shape
    mask = (
        np.ones((b, m), bool) if mask is None else np.asarray(mask, bool)
    )  # one pytree structure: one compile
    rollout = O.Rollout(
        rewards_BM=rewards,
        scores_BM=rng.integers(0, 3, (b, m)).astype(np.float32),
        ref_logp_BM=-rng.random((b, m)).astype(np.float32) * 3,
        mask_BM=mask,
        ref_rewards_BK=rng.integers(0, 3, (b, 7)).astype(np.float32) / 2.0,
        expert_scores_B=rng.integers(0, 3, (b,)).astype(np.float32),
        anchor_logp_BM=-rng.random((b, m)).astype(np.float32) * 3,
        lengths_BM=1 + np.arange(b * m).reshape(b, m) % 7,  # not from rng: the other draws stay as they were
    )
    logp = jnp.asarray(-rng.random((b, m)) * 3, jnp.float32)
    kw = {"n": n}
    if name in EXPERT:
        kw["expert_logp_B"] = jnp.asarray(-rng.random(b) * 3, jnp.float32)
    return logp, rollout, kw


@functools.cache
def _value_and_grad(name, static):
    fn = O.get(name)

    def f(lp, ex, rollout, dyn):
        extra = {} if ex is None else {"expert_logp_B": ex}
        return fn(lp, rollout, **dict(static), **dyn, **extra)

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))


def loss_and_grads(name, logp, rollout, dyn=None, **kw):
    """(loss, metrics, (d/d logp_BM, d/d expert_logp_B)), jitted; kw are static options, dyn traced ones."""
    expert = kw.pop("expert_logp_B", None)
    (loss, metrics), grads = _value_and_grad(name, tuple(sorted(kw.items())))(
        logp, expert, rollout, dyn or {}
    )
    return loss, metrics, grads


def call_eagerly(name, logp, rollout, **kw):
    return O.get(name)(logp, rollout, **kw)


def assert_all_finite(loss, metrics, grads):
    assert np.isfinite(float(loss))
    for k, v in metrics.items():
        assert np.all(np.isfinite(np.asarray(v))), k
    for g in grads:
        if g is not None:
            assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------- degenerate inputs, bad values, traced coefficients

# One batch of 12 prompts x 5 samples holding every degenerate case (rows 0-2 all samples equal, 3-5 all
# correct, 6-8 none correct, 9-11 masked: partly, fully, partly), so each objective compiles once.
CASE_ROWS = {
    "all_equal": slice(0, 3),
    "all_correct": slice(3, 6),
    "none_correct": slice(6, 9),
    "masked": slice(9, 12),
}
MASKED_ROWS = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 1]], bool)


def degenerate_batch(name, m=5, n=2):
    logp, rollout, kw = make_inputs(name, b=12, m=m, n=n)
    rewards = np.asarray(rollout.rewards_BM).copy()
    rewards[0:3] = 1.0 if name in BINARY else 0.5
    rewards[3:6] = 1.0
    rewards[6:9] = 0.0
    mask = np.ones((12, m), bool)
    if m == 5:
        mask[9:12] = MASKED_ROWS
    scores = np.asarray(rollout.scores_BM).copy()
    scores[0:3] = 1.0
    ref_logp = np.asarray(rollout.ref_logp_BM).copy()
    ref_logp[0:3] = -1.0
    anchor = np.asarray(rollout.anchor_logp_BM).copy()
    anchor[0:3] = -1.0
    logp = logp.at[0:3].set(-1.0)
    rollout = rollout.replace(
        rewards_BM=rewards, mask_BM=mask, scores_BM=scores, ref_logp_BM=ref_logp, anchor_logp_BM=anchor
    )
    return logp, rollout, kw


def coefficient_options(name, traced_values):
    """beta and anchor_coef as traced values (a schedule inside a jitted step); none for bon_distill_sft."""
    if name == "bon_distill_sft":
        return {}
    beta, anchor = traced_values
    return {"beta": jnp.asarray(beta, jnp.float32), "anchor_coef": jnp.asarray(anchor, jnp.float32)}


@pytest.mark.parametrize("name", sorted(ALL))
def test_degenerate_inputs_are_finite(name):
    logp, rollout, kw = degenerate_batch(name)
    # Traced zero coefficients: the objective alone.
    loss, metrics, grads = loss_and_grads(
        name, logp, rollout, dyn=coefficient_options(name, (0.0, 0.0)), **kw
    )
    assert_all_finite(loss, metrics, grads)
    g = np.asarray(grads[0])
    assert np.all(g[~np.asarray(rollout.mask_BM)] == 0)
    if name in ("bon_rl", "pkpo", "kl_rl", "vbon", "vbon_bound", "grpo", "dr_grpo"):
        np.testing.assert_allclose(g[CASE_ROWS["all_equal"]], 0.0, atol=1e-7)  # nothing to prefer
    if name in ("bon_rl", "pkpo", "grpo", "dr_grpo"):
        np.testing.assert_allclose(g[3:9], 0.0, atol=1e-7)  # all or none correct: every subset ties
    # The annealed anchor coefficient and a KL coefficient, traced (same compiled step).
    coef = O.anchor_kl_coef(jnp.asarray(100))
    loss, metrics, grads = loss_and_grads(
        name, logp, rollout, dyn=coefficient_options(name, (0.05, coef)), **kw
    )
    assert_all_finite(loss, metrics, grads)
    if name != "bon_distill_sft":
        assert "kl_anchor" in metrics and "kl_ref" in metrics
    # M = 1 (with N = 1); a clear error where the objective needs a group (grpo: M >= 2).
    logp, rollout, kw = degenerate_batch(name, m=1, n=1)
    if O.spec(name).min_samples > 1:
        with pytest.raises(ValueError, match="M >= 2"):
            loss_and_grads(name, logp, rollout, dyn=coefficient_options(name, (0.0, 0.0)), **kw)
        return
    assert_all_finite(*loss_and_grads(name, logp, rollout, dyn=coefficient_options(name, (0.0, 0.0)), **kw))


@pytest.mark.parametrize("name", sorted(ALL))
def test_bad_rewards_refused_eagerly_and_poisoned_under_jit(name):
    logp, rollout, kw = degenerate_batch(name)
    field = "rewards_BM" if name not in ("bon_sft", "bon_distill_sft") else "scores_BM"
    for value in (np.nan, -np.inf, np.inf):
        bad = np.asarray(getattr(rollout, field)).copy()
        bad[4, 2] = value
        bad[10, 2] = value  # at a masked sample: ignored
        bad_rollout = rollout.replace(**{field: bad})
        with pytest.raises(O.InvalidRolloutError, match=field):
            call_eagerly(name, logp, bad_rollout, **kw)
        dyn = coefficient_options(name, (0.0, 0.0))
        loss, metrics, grads = loss_and_grads(name, logp, bad_rollout, dyn=dyn, **dict(kw))
        valid = np.asarray(rollout.mask_BM)
        assert np.isnan(float(loss)) and np.all(np.isnan(np.asarray(grads[0])[valid]))  # masked: 0
        assert int(metrics["n_nonfinite"]) == 1


@pytest.mark.parametrize("name", sorted(BINARY - {"pkpo"}))
def test_known_p_at_the_boundary_is_clipped(name):
    logp, rollout, kw = make_inputs(name, n=3)
    for p in (0.0, 1.0):
        loss, metrics, grads = loss_and_grads(name, logp, rollout, dyn={"p_B": np.float32(p)}, **kw)
        assert_all_finite(loss, metrics, grads)
        assert float(metrics["p_mean"]) == pytest.approx(0.01 if p == 0 else 0.99)
    with pytest.raises(ValueError, match="p_clip"):
        call_eagerly(name, logp, rollout, p_B=0.0, p_clip=(0.0, 1.0), **kw)
    # Near the clip bound g- = N p/(1-p) ~ 300: weight_clip bounds each per-sample weight (-B * grad).
    b = logp.shape[0]
    _, _, (g, _) = loss_and_grads(name, logp, rollout, dyn={"p_B": np.float32(0.99)}, **kw)
    _, _, (gc, _) = loss_and_grads(name, logp, rollout, dyn={"p_B": np.float32(0.99)}, weight_clip=2.0, **kw)
    assert np.abs(np.asarray(gc)).max() * b <= 2.0 + 1e-5
    if name != "bon_rlbp":
        assert np.abs(np.asarray(g)).max() * b > 10.0
    with pytest.raises(ValueError, match="weight_clip"):
        call_eagerly(name, logp, rollout, weight_clip=0.0, **kw)


@pytest.mark.parametrize("name", sorted(NEEDS_M_GE_N))
def test_fewer_samples_than_n_is_a_clear_error(name):
    logp, rollout, kw = make_inputs(name, m=2, n=3)
    with pytest.raises(ValueError, match="M >= N"):
        call_eagerly(name, logp, rollout, **kw)


@pytest.mark.parametrize("name", ["kl_rl", "vbon"])
def test_single_sample_objectives_accept_m_1_with_large_n(name):
    logp, rollout, kw = make_inputs(name, m=1, n=4)
    assert_all_finite(*loss_and_grads(name, logp, rollout, **kw))


@pytest.mark.parametrize("name", ["bon_rl", "vbon", "bon_rlb", "bon_sft", "grpo"])
def test_masked_samples_are_as_if_absent(name):
    """The gradient with masked samples (holding NaN garbage) equals the gradient without them."""
    b, m, keep = 4, 7, 5
    rng = np.random.default_rng(1)
    logp, rollout, kw = make_inputs(name, b=b, m=m, n=3, seed=2)
    mask = np.zeros((b, m), bool)
    for i in range(b):
        mask[i, rng.choice(m, keep, replace=False)] = True
    garbage = {
        f: np.where(mask, np.asarray(getattr(rollout, f)), np.nan).astype(np.float32)
        for f in ("rewards_BM", "scores_BM", "ref_logp_BM", "anchor_logp_BM", "lengths_BM")
    }
    masked = rollout.replace(mask_BM=mask, **garbage)
    logp_masked = jnp.where(mask, logp, jnp.nan)
    compact = rollout.replace(
        mask_BM=np.ones((b, keep), bool),
        **{f: np.asarray(getattr(rollout, f))[mask].reshape(b, keep) for f in garbage},
    )
    logp_compact = jnp.asarray(np.asarray(logp)[mask].reshape(b, keep))
    l1, _, g1 = loss_and_grads(name, logp_masked, masked, **dict(kw))
    l2, _, g2 = loss_and_grads(name, logp_compact, compact, **dict(kw))
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g1[0])[mask].reshape(b, keep), g2[0], atol=1e-6)
    assert np.all(np.asarray(g1[0])[~mask] == 0)


def test_validate_rollout_messages():
    r = np.zeros((2, 3), np.float32)
    bad = r.copy()
    bad[1, 2] = np.nan
    with pytest.raises(O.InvalidRolloutError, match=r"rewards_BM has 1 non-finite.*prompt 1, sample 2"):
        O.validate_rollout(O.Rollout(rewards_BM=bad))
    s = r.copy()
    s[0, 1] = -np.inf
    with pytest.raises(O.InvalidRolloutError, match="scores_BM"):
        O.validate_rollout(O.Rollout(rewards_BM=r, scores_BM=s))
    with pytest.raises(O.InvalidRolloutError, match="ref_rewards_BK"):
        O.validate_rollout(O.Rollout(rewards_BM=r, ref_rewards_BK=np.array([[0.0, np.inf], [0.0, 1.0]])))
    with pytest.raises(O.InvalidRolloutError, match="binary"):
        O.validate_rollout(O.Rollout(rewards_BM=r + 0.5), binary=True)
    with pytest.raises(O.InvalidRolloutError, match="shape"):
        O.validate_rollout(O.Rollout(rewards_BM=r, scores_BM=np.zeros((2, 4))))
    with pytest.raises(O.InvalidRolloutError, match="bool"):
        O.validate_rollout(O.Rollout(rewards_BM=r, mask_BM=np.ones((2, 3))))
    with pytest.raises(O.InvalidRolloutError, match="M >= N"):
        O.validate_rollout(O.Rollout(rewards_BM=r), min_samples=4)
    # NaN at a masked sample is fine.
    O.validate_rollout(O.Rollout(rewards_BM=bad, mask_BM=~np.isnan(bad)))
    assert issubclass(O.InvalidRolloutError, ValueError)


def test_non_binary_rewards_refused():
    logp, rollout, kw = make_inputs("pkpo", n=2)
    rollout = rollout.replace(rewards_BM=np.full(rollout.rewards_BM.shape, 0.5, np.float32))
    with pytest.raises(O.InvalidRolloutError, match="binary"):
        O.get("pkpo")(logp, rollout, **kw)
    loss, metrics, _ = loss_and_grads("pkpo", logp, rollout, **kw)
    assert np.isnan(float(loss)) and int(metrics["n_nonfinite"]) == rollout.rewards_BM.size


@pytest.mark.parametrize("name", sorted(EXPERT))
def test_expert_logp_through_the_rollout_equals_the_keyword(name):
    """The documented way is the keyword; a rollout built inside the differentiated function works too."""
    logp, rollout, kw = make_inputs(name, n=2)
    expert = kw.pop("expert_logp_B")
    fn = O.get(name)
    g_kw = jax.grad(lambda e: fn(logp, rollout, expert_logp_B=e, **kw)[0])(expert)
    g_ro = jax.grad(lambda e: fn(logp, rollout.replace(expert_logp_B=e), **kw)[0])(expert)
    np.testing.assert_allclose(g_ro, g_kw, atol=1e-7)
    assert np.all(np.asarray(g_kw) != 0)
    with pytest.raises(ValueError, match="both"):
        fn(logp, rollout.replace(expert_logp_B=expert), expert_logp_B=expert, **kw)


def test_argument_errors_are_raised_before_any_compute():
    logp, rollout, kw = make_inputs("bon_rl")
    with pytest.raises(ValueError, match="does not use expert_logp_B"):
        O.get("bon_rl")(logp, rollout, expert_logp_B=jnp.zeros(3), **kw)
    with pytest.raises(ValueError, match="needs expert_logp_B"):
        O.get("bond")(logp, rollout, **kw)
    with pytest.raises(ValueError, match="ref_logp_BM"):
        O.get("kl_rl")(logp, rollout.replace(ref_logp_BM=None), beta=0.1)
    with pytest.raises(ValueError, match="anchor_logp_BM"):
        O.get("bon_rl")(logp, rollout.replace(anchor_logp_BM=None), anchor_coef=0.5, **kw)
    with pytest.raises(ValueError, match="scores_BM"):
        O.get("bon_rl")(logp, rollout.replace(scores_BM=None), **kw)
    with pytest.raises(ValueError, match="static Python int"):
        O.get("bon_rl")(logp, rollout, n=0)
    with pytest.raises(ValueError, match="ref_rewards_BK"):
        O.get("vbon")(logp, rollout.replace(ref_rewards_BK=None), n=2)
    with pytest.raises(ValueError, match="beta and anchor_coef must be 0"):
        O.get("bon_distill_sft")(logp, rollout, beta=0.1, **kw)
    with pytest.raises(ValueError, match="demonstrations"):
        O.get("sft")(logp, rollout, beta=0.1)
    with pytest.raises(TypeError):
        O.get("bon_rl")(logp, rollout, n=2, no_such_option=1)


def test_anchor_schedule_and_ema():
    f = O.anchor_kl_coef
    assert f(0) == 1.0 and f(10) == 1.0
    assert f(10 + 1250) == pytest.approx(1.0 + (0.075 - 1.0) / 2)
    assert f(2510) == pytest.approx(0.075) and f(10**6) == pytest.approx(0.075)
    for step in (0, 10, 500, 2510, 9999):
        assert float(jax.jit(f)(jnp.asarray(step))) == pytest.approx(f(step), abs=1e-6)
    anchor = {"w": jnp.zeros(3)}
    params = {"w": jnp.ones(3)}
    np.testing.assert_allclose(O.ema_update(anchor, params)["w"], 0.01)
    np.testing.assert_allclose(O.ema_update(anchor, params, rate=0.02)["w"], 0.02)


def test_ppo_ratio_and_clipping():
    logp, rollout, _ = make_inputs("kl_rl", b=4, m=6)
    g_plain = loss_and_grads("kl_rl", logp, rollout, beta=0.1)[2][0]
    on_policy = rollout.replace(old_logp_BM=np.asarray(logp))
    g_ratio = loss_and_grads("kl_rl", logp, on_policy, beta=0.1, clip_eps=0.2)[2][0]
    np.testing.assert_allclose(g_ratio, g_plain, atol=1e-6)  # ratio 1: the RLOO gradient
    # Behaviour policy far below: ratio e^1 > 1.2 -> clipped where the advantage is positive.
    stale = rollout.replace(old_logp_BM=np.asarray(logp) - 1.0)
    _, metrics, (g, _) = loss_and_grads("kl_rl", logp, stale, beta=0.1, clip_eps=0.2)
    w_pos = np.asarray(g_plain) < 0  # -grad = w > 0: positive advantage
    assert w_pos.any() and (~w_pos).any()
    assert np.all(np.asarray(g)[w_pos] == 0)
    np.testing.assert_allclose(np.asarray(g)[~w_pos], np.e * np.asarray(g_plain)[~w_pos], rtol=1e-5)
    assert float(metrics["clip_frac"]) == 1.0
    with pytest.raises(ValueError, match="old_logp_BM"):
        call_eagerly("kl_rl", logp, rollout, clip_eps=0.2)


# ---------------------------------------------------------------- Lemma 3 in exact arithmetic


def test_lemma3_sign_in_exact_arithmetic():
    """E_{pi_bon}[estimator] summed over the K outcomes (float64, true p): the plus sign gives grad(1 - p^N)
    exactly; the printed minus sign gives (1+p)/(1-p) times it; Corollary 4 is exact."""
    rng = np.random.default_rng(0)
    for k, n in ((9, 2), (9, 4), (9, 8)):
        logits = rng.normal(size=k)
        r = (rng.random(k) < 0.5).astype(np.float64)
        r[:2] = (0.0, 1.0)
        pi = np.exp(logits) / np.exp(logits).sum()
        p = float(pi @ (1 - r))
        pi_bon = np.where(r == 1, pi * (1 - p**n) / (1 - p), pi * p ** (n - 1))  # Chow Eq. 8
        assert pi_bon.sum() == pytest.approx(1.0)
        jac = np.eye(k) - pi[None, :]  # grad_logits log pi(y)
        g_pos, g_neg = n * p ** (n - 1) / (1 - p**n), n * p / (1 - p)
        plus = ((pi_bon * np.where(r == 1, g_pos, g_neg))[:, None] * jac).sum(0)
        minus = ((pi_bon * np.where(r == 1, g_pos, -g_neg))[:, None] * jac).sum(0)
        cor4 = ((pi_bon * r * n * p ** (n - 1) * (1 - p) / (1 - p**n))[:, None] * jac).sum(0)
        lg32 = np.float32(logits)
        grad = np.asarray(
            jax.grad(lambda lg: exact.objective("bon_rlb", lg, r, r, lg32, n=n))(lg32), np.float64
        )
        np.testing.assert_allclose(plus, grad, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(cor4, grad, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(minus, (1 + p) / (1 - p) * grad, rtol=2e-4, atol=1e-6)
        assert np.linalg.norm(minus - grad) > 0.5 * np.linalg.norm(grad)
