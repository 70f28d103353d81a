"""grpo / dr_grpo (bon_jax/objectives/grpo.py) against what they estimate (docs/maths.md section 4).

Expected gradients by exact enumeration of all M-tuples of a 3-outcome softmax bandit, in float64 numpy:
the per-prompt weights come from the objective (one prompt per row), E[grad] = sum over tuples of
P(tuple) sum_j w_j (onehot(y_j) - pi). Batch-level normalisations (token, skipped groups) and PPO clipping
against float64 numpy references written out per token.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import config as cfg
from bon_jax import exact
from bon_jax import objectives as O
from bon_jax.errors import ConfigError

LOGITS = np.array([0.4, -0.3, 0.1])
REWARDS = np.array([1.0, 0.0, 0.4])  # three levels: a group can be informative with any two outcomes
PI = np.exp(LOGITS) / np.exp(LOGITS).sum()


def grad_expected_reward():
    """grad_logits E_pi[R] = pi * (R - E_pi R), float64."""
    return PI * (REWARDS - PI @ REWARDS)


def tuples(m):
    """All 3^m outcome tuples [T, m] and their probabilities under pi."""
    idx = np.array(list(itertools.product(range(3), repeat=m)))
    return idx, np.prod(PI[idx], axis=1)


def per_prompt_weights(name, rewards_BM, lengths_BM=None, **options):
    """w [B, M] = -d loss / d logp of each row taken as a batch of one prompt (float64 copy)."""
    fn = O.get(name)
    rewards_BM = np.asarray(rewards_BM, np.float32)
    lengths_BM = np.ones(rewards_BM.shape, np.int32) if lengths_BM is None else np.asarray(lengths_BM)

    def one(logp_M, r_M, len_M):
        rollout = O.Rollout(rewards_BM=r_M[None], lengths_BM=len_M[None])
        return fn(logp_M[None], rollout, **options)[0]

    logp = jnp.full(rewards_BM.shape, -1.0)  # on-policy weights do not depend on the log-probs' values
    return -np.asarray(
        jax.jit(jax.vmap(jax.grad(one)))(logp, jnp.asarray(rewards_BM), jnp.asarray(lengths_BM)), np.float64
    )


def expectation(idx, probs, w_TM):
    """E[sum_j w_j grad_logits log pi(y_j)] over the enumerated tuples."""
    jac = np.eye(3)[idx] - PI  # [T, M, 3]
    return np.einsum("t,tm,tmk->k", probs, w_TM, jac)


def reference_advantages(r_BM, mask_BM, scale_by_std, eps=1e-4):
    """Float64 numpy: (R - mean)/(std + eps) over each row's valid samples, 0 for all-equal rows."""
    adv = np.zeros(r_BM.shape)
    informative = np.zeros(r_BM.shape[0], bool)
    for b in range(r_BM.shape[0]):
        r = r_BM[b][mask_BM[b]].astype(np.float64)
        if len(r) < 2 or r.max() == r.min():
            continue
        informative[b] = True
        a = r - r.mean()
        adv[b, mask_BM[b]] = a / (r.std() + eps) if scale_by_std else a
    return adv, informative


# ---------------------------------------------------------------- what it estimates, by enumeration


@pytest.mark.parametrize("m", [2, 3, 4])
def test_unscaled_sequence_sums_are_exactly_m_minus_1_over_m_times_the_policy_gradient(m):
    idx, probs = tuples(m)
    target = (m - 1) / m * grad_expected_reward()
    r = REWARDS[idx]
    cases = {
        "dr_grpo defaults": per_prompt_weights("dr_grpo", r),
        "grpo constant, no std, no skip": per_prompt_weights(
            "grpo", r, scale_by_std=False, loss_norm="constant", skip_equal_groups=False
        ),
        # One prompt per batch: skipping an all-equal group (whose advantages are 0 anyway) changes nothing.
        "grpo sequence, unit lengths, skip": per_prompt_weights("grpo", r, scale_by_std=False),
    }
    for label, w in cases.items():
        np.testing.assert_allclose(expectation(idx, probs, w), target, rtol=1e-5, atol=1e-8, err_msg=label)
    # max_len divides by a constant.
    w = per_prompt_weights("dr_grpo", r, max_len=8)
    np.testing.assert_allclose(expectation(idx, probs, w), target / 8, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_std_scaled_expectation_equals_the_float64_reference_and_is_not_the_policy_gradient(m):
    idx, probs = tuples(m)
    r = REWARDS[idx]
    adv, _ = reference_advantages(r, np.ones(r.shape, bool), scale_by_std=True)
    expected = expectation(idx, probs, adv / m)
    got = expectation(idx, probs, per_prompt_weights("grpo", r))  # defaults: std-scaled, sequence, skip
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    # It is not a multiple of grad E_pi[R]: std scaling reweights the tuples.
    g = grad_expected_reward()
    residual = got - (got @ g) / (g @ g) * g
    assert np.linalg.norm(residual) > 0.01 * np.linalg.norm(got)


def test_sequence_length_normalisation_weights_samples_by_one_over_length():
    """E = (M-1)/M E_pi[(R - E_pi R) grad log pi / L] when the length L(y) depends on the outcome."""
    m, length = 3, np.array([1, 3, 2])
    idx, probs = tuples(m)
    w = per_prompt_weights("grpo", REWARDS[idx], lengths_BM=length[idx], scale_by_std=False)
    jac = np.eye(3) - PI
    expected = (m - 1) / m * np.einsum("y,yk->k", PI * (REWARDS - PI @ REWARDS) / length, jac)
    np.testing.assert_allclose(expectation(idx, probs, w), expected, rtol=1e-5, atol=1e-8)
    assert not np.allclose(expected, (m - 1) / m * grad_expected_reward() / length.mean(), rtol=0.05)


def test_skipping_multiplies_the_expected_batch_estimate_by_the_informative_rate_factor():
    """B iid groups of one prompt, informative with probability r: skipping the others multiplies the
    expected batch estimate by (1 - (1 - r)^B) / r (docs/maths.md section 4). Enumerated: B = 2, M = 2."""
    b, m = 2, 2
    idx, probs = tuples(b * m)
    idx = idx.reshape(-1, b, m)
    fn = O.get("grpo")

    def loss(logp_BM, r_BM):
        return fn(logp_BM, O.Rollout(rewards_BM=r_BM), scale_by_std=False, loss_norm="constant")[0]

    r = jnp.asarray(REWARDS[idx], jnp.float32)
    w = -b * np.asarray(jax.vmap(jax.grad(loss))(jnp.full(r.shape, -1.0), r), np.float64)  # per prompt
    jac = np.eye(3)[idx] - PI  # [T, b, m, 3]
    got = np.einsum("t,tbm,tbmk->k", probs, w, jac) / b
    rate = 1 - np.sum(PI**m)  # the rewards are distinct: informative unless both draws are the same outcome
    factor = (1 - (1 - rate) ** b) / rate
    np.testing.assert_allclose(got, factor * (m - 1) / m * grad_expected_reward(), rtol=1e-5, atol=1e-8)
    assert factor > 1.1  # the test can tell skipping from not skipping


def test_std_scaling_tends_to_the_arcsin_gradient_for_binary_rewards():
    """Binary R, P(R = 1) = q: E[grad] / (grad q / sqrt(q (1 - q))) -> 1 as M grows (grad 2 arcsin sqrt q);
    the figures docs/maths.md quotes (0.70 and 0.93 at M = 8; 0.99 at M = 128). Exact over the count c of
    correct samples (the weights depend on the group only through c)."""
    from scipy.stats import binom

    for m, q, ratio in ((8, 0.1, 0.698), (8, 0.5, 0.928), (128, 0.1, 0.988), (128, 0.5, 0.996)):
        c = np.arange(m + 1)
        rows = (np.arange(m)[None, :] < c[:, None]).astype(np.float32)  # c ones first: exchangeable
        w = per_prompt_weights("grpo", rows)
        # d log pi(y) / d logit_1 = 1[y = 1] - q for a two-outcome softmax
        per_c = np.sum(w * (rows - q), axis=1)
        got = binom.pmf(c, m, q) @ per_c
        assert got / np.sqrt(q * (1 - q)) == pytest.approx(ratio, abs=2e-3), (m, q)


# ---------------------------------------------------------------- batch normalisations, per-token reference


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    b, m, t = 5, 4, 7
    rewards = rng.integers(0, 3, (b, m)).astype(np.float32) / 2
    rewards[1] = 0.5  # an all-equal group
    rewards[3, :3] = 1.0  # all equal among its valid samples (the last is masked)
    rewards[3, 3] = 0.0
    mask = np.ones((b, m), bool)
    mask[3, 3] = False
    mask[0, 2] = False
    lengths = rng.integers(1, t + 1, (b, m))
    lengths[2, 1] = 0  # an empty completion: no tokens, no gradient, no division by zero
    tok_logp = np.where(np.arange(t) < lengths[..., None], -rng.random((b, m, t)), 0.0)
    return rewards, mask, lengths, tok_logp


def reference_loss(rewards, mask, lengths, tok_logp, *, scale_by_std, loss_norm, skip, max_len=None):
    """Float64 numpy, written per token as in the papers: the loss and its gradient per token [B, M, T]."""
    adv, informative = reference_advantages(rewards, mask, scale_by_std)
    b, m, t = tok_logp.shape
    counted = [i for i in range(b) if informative[i] or not skip]
    valid_tok = (np.arange(t) < lengths[..., None]) & mask[..., None]
    grad = np.zeros(tok_logp.shape)
    if loss_norm == "token":
        total = sum(valid_tok[i].sum() for i in counted)
        for i in counted:
            grad[i] = -adv[i][:, None] * valid_tok[i] / total
    else:
        for i in counted:
            mi = mask[i].sum()
            for j in range(m):
                if not mask[i, j]:
                    continue
                denom = max(lengths[i, j], 1) if loss_norm == "sequence" else (max_len or 1)
                grad[i, j] = -adv[i, j] * valid_tok[i, j] / (mi * denom)
        grad /= len(counted)
    return float(np.sum(grad * tok_logp)), grad


@pytest.mark.parametrize("loss_norm", ["sequence", "token", "constant"])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("scale_by_std", [True, False])
def test_loss_and_gradient_match_the_per_token_reference(loss_norm, skip, scale_by_std):
    rewards, mask, lengths, tok_logp = _batch()
    max_len = 16 if loss_norm == "constant" else None
    ref_loss, ref_grad = reference_loss(
        rewards,
        mask,
        lengths,
        tok_logp,
        scale_by_std=scale_by_std,
        loss_norm=loss_norm,
        skip=skip,
        max_len=max_len,
    )
    rollout = O.Rollout(rewards_BM=rewards, mask_BM=mask, lengths_BM=lengths.astype(np.int32))
    options = dict(scale_by_std=scale_by_std, loss_norm=loss_norm, skip_equal_groups=skip, max_len=max_len)

    def loss(tok):  # the objective sees the token sums; the chain rule gives the per-token gradient
        return O.get("grpo")(jnp.sum(tok, -1), rollout, **options)[0]

    value, grad = jax.value_and_grad(loss)(jnp.asarray(tok_logp, jnp.float32))
    assert float(value) == pytest.approx(ref_loss, rel=1e-5, abs=1e-7)
    valid_tok = (np.arange(tok_logp.shape[-1]) < lengths[..., None]) & mask[..., None]
    np.testing.assert_allclose(np.where(valid_tok, grad, 0.0), ref_grad, rtol=1e-5, atol=1e-7)


def test_skip_equal_groups_zeroes_them_and_renormalises_over_the_others():
    rewards, mask, lengths, _ = _batch()
    informative = np.array([True, False, True, False, True])
    rollout = O.Rollout(rewards_BM=rewards, mask_BM=mask, lengths_BM=lengths)
    logp = jnp.full(rewards.shape, -2.0)

    def grad(**kw):
        return np.asarray(
            jax.grad(lambda lp: O.get("grpo")(lp, rollout, loss_norm="constant", **kw)[0])(logp)
        )

    skipped, kept = grad(), grad(skip_equal_groups=False)
    assert np.all(skipped[~informative] == 0) and np.all(kept[~informative] == 0)
    assert np.abs(skipped[informative]).max() > 0
    np.testing.assert_allclose(skipped[informative], 5 / 3 * kept[informative], rtol=1e-6)  # B / B' = 5 / 3
    _, metrics = O.get("grpo")(logp, rollout)
    assert float(metrics["frac_informative"]) == pytest.approx(3 / 5)
    # Equal rewards whose float32 mean differs from them by rounding (0.9 x 3): still exactly no gradient,
    # even with std scaling (rounding / (rounding std + adv_eps) would not be 0) and without skipping.
    nines = jnp.asarray([[0.9, 0.9, 0.9], [0.0, 1.0, 0.0]], jnp.float32)
    assert float(nines[0, 0] - jnp.sum(nines[0]) / 3) != 0
    g = jax.grad(
        lambda lp: O.get("grpo")(
            lp, O.Rollout(rewards_BM=nines), loss_norm="constant", skip_equal_groups=False
        )[0]
    )(jnp.full((2, 3), -1.0))
    assert np.all(np.asarray(g)[0] == 0) and np.all(np.asarray(g)[1] != 0)
    # A batch with no informative group: loss 0, gradient 0, nothing non-finite.
    flat = rollout.replace(rewards_BM=np.ones_like(rewards))
    for norm in ("sequence", "token", "constant"):
        value, g = jax.value_and_grad(lambda lp: O.get("grpo")(lp, flat, loss_norm=norm)[0])(logp)
        assert float(value) == 0 and np.all(np.asarray(g) == 0)


# ---------------------------------------------------------------- PPO clip-higher, KL terms


def test_clip_higher_clips_the_upper_ratio_bound_asymmetrically():
    eps, eps_high = 0.2, 0.28
    rewards = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]], np.float32)  # A > 0 for the first three
    ratio = np.array([1.25, 1.35, 0.75, 0.75, 1.35, 1.1])
    old = np.full(rewards.shape, -3.0, np.float32)
    logp = jnp.asarray(old + np.log(ratio)[None], jnp.float32)
    rollout = O.Rollout(rewards_BM=rewards, old_logp_BM=old)

    def grad(**kw):
        f = lambda lp: O.get("dr_grpo")(lp, rollout, **kw)[0]
        return np.asarray(jax.grad(f)(logp))[0], O.get("dr_grpo")(logp, rollout, **kw)[1]

    g, metrics = grad(clip_eps=eps, clip_eps_high=eps_high)
    adv = np.array([0.5, 0.5, 0.5, -0.5, -0.5, -0.5])
    # d/d logp of -min(rho A, clip(rho) A) / M: -rho A / M where the unclipped term is the minimum, else 0.
    clipped = ((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps))
    expected = np.where(clipped, 0.0, -ratio * adv / 6)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-8)
    assert g[0] != 0 and g[1] == 0 and g[3] == 0 and g[4] != 0  # 1.25: kept by clip-higher; 1.35: clipped
    assert float(metrics["clip_frac"]) == pytest.approx(4 / 6)  # ratios outside [0.8, 1.28], either sign
    g_sym, _ = grad(clip_eps=eps)  # symmetric: the 1.25 ratio with A > 0 is clipped too
    assert g_sym[0] == 0 and g_sym[1] == 0


def test_kl_terms_are_the_unbiased_rloo_weights_of_kl_rl():
    rng = np.random.default_rng(3)
    shape = (4, 5)
    rewards = rng.integers(0, 2, shape).astype(np.float32)
    rollout = O.Rollout(
        rewards_BM=rewards,
        ref_logp_BM=-rng.random(shape).astype(np.float32) * 5,
        anchor_logp_BM=-rng.random(shape).astype(np.float32) * 5,
        lengths_BM=rng.integers(1, 9, shape),
    )
    logp = jnp.asarray(-rng.random(shape) * 5, jnp.float32)
    kw = dict(beta=0.3, anchor_coef=0.7)
    grad = lambda name, r, **k: np.asarray(jax.grad(lambda lp: O.get(name)(lp, r, **k)[0])(logp))
    kl_only = grad("kl_rl", rollout.replace(rewards_BM=np.zeros(shape, np.float32)), **kw)
    assert np.abs(kl_only).max() > 0
    for name in ("grpo", "dr_grpo"):
        np.testing.assert_allclose(
            grad(name, rollout, **kw) - grad(name, rollout), kl_only, rtol=1e-5, atol=1e-7
        )


# ---------------------------------------------------------------- refusals, registration, config


def test_bad_inputs_are_refused_with_a_clear_error():
    rollout = O.Rollout(rewards_BM=np.array([[1.0, 0.0]], np.float32), lengths_BM=np.array([[2, 3]]))
    logp = jnp.zeros((1, 2))
    grpo = O.get("grpo")
    with pytest.raises(ValueError, match="M >= 2"):
        grpo(logp[:, :1], O.Rollout(rewards_BM=np.ones((1, 1), np.float32)))
    with pytest.raises(ValueError, match="loss_norm must be one of"):
        grpo(logp, rollout, loss_norm="tokens")
    with pytest.raises(ValueError, match="max_len is the divisor"):
        grpo(logp, rollout, max_len=64)
    with pytest.raises(ValueError, match="clip_eps_high .* needs clip_eps"):
        grpo(logp, rollout, clip_eps_high=0.28)
    with pytest.raises(ValueError, match="clip_eps needs rollout.old_logp_BM"):
        grpo(logp, rollout, clip_eps=0.2)
    with pytest.raises(ValueError, match="needs rollout.lengths_BM"):
        grpo(logp, rollout.replace(lengths_BM=None))
    with pytest.raises(ValueError, match="scale_by_std must be True or False"):
        grpo(logp, rollout, scale_by_std="no")
    with pytest.raises(O.InvalidRolloutError, match="lengths_BM has 1 negative"):
        grpo(logp, rollout.replace(lengths_BM=np.array([[2, -1]])))
    with pytest.raises(ValueError, match="does not use expert_logp_B"):
        grpo(logp, rollout, expert_logp_B=jnp.zeros(1))
    grpo(logp, rollout.replace(lengths_BM=None), loss_norm="constant")  # sequence sums need no lengths
    # Under jit a bad length poisons the loss and the gradient and is counted.
    bad = rollout.replace(lengths_BM=np.array([[2, -1]]))
    value, metrics = jax.jit(lambda lp, r: grpo(lp, r))(logp, bad)
    assert np.isnan(float(value)) and int(metrics["n_nonfinite"]) == 1


def test_registration_and_exact_objective():
    for name in ("grpo", "dr_grpo"):
        s = O.spec(name)
        assert (s.samples, s.selects_by, s.min_samples, s.default_beta, s.reference_samples) == (
            "policy",
            None,
            2,
            0.0,
            False,
        )
        # The J it ascends: E_pi[R] - beta KL; estimator-only options are accepted and ignored.
        j = exact.objective(
            name, LOGITS, REWARDS, REWARDS, np.zeros(3), n=1, loss_norm="token", clip_eps_high=0.3
        )
        assert float(j) == pytest.approx(PI @ REWARDS, rel=1e-6)


def _config(objective, m=4, **options):
    c = cfg.base_config()
    c.rl.objective, c.rl.n, c.rl.m = objective, 1, m
    for k, v in options.items():
        c.rl.options[k] = v
    return c


def test_config_accepts_grpo_options_and_refuses_bad_ones_before_compute():
    cfg.validate(_config("grpo", scale_by_std=False, loss_norm="token", clip_eps=0.2, clip_eps_high=0.28))
    cfg.validate(_config("dr_grpo", max_len=96))
    with pytest.raises(ConfigError, match=r"config\.rl\.m: grpo needs rl\.m >= 2"):
        cfg.validate(_config("grpo", m=1))
    with pytest.raises(ConfigError, match=r"config\.rl\.options: grpo: loss_norm must be one of"):
        cfg.validate(_config("grpo", loss_norm="tokens"))
    with pytest.raises(ConfigError, match=r"config\.rl\.options: grpo: max_len is the divisor"):
        cfg.validate(_config("grpo", max_len=96))  # grpo's default loss_norm is "sequence"
    with pytest.raises(
        ConfigError, match=r"config\.rl\.options: dr_grpo: unknown option\(s\) \['scale_std'\]"
    ):
        cfg.validate(_config("dr_grpo", scale_std=False))
