"""bon_jax.metrics against brute-force enumeration of all k-subsets (itertools.combinations) and numpy."""

import itertools
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax import metrics

# ---------------------------------------------------------------- references


def brute_pass(m, c, k):
    correct = [1] * c + [0] * (m - c)
    subsets = list(itertools.combinations(range(m), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_bon(scores, rewards, k):
    vals = []
    for s in itertools.combinations(range(len(scores)), k):
        best = max(scores[i] for i in s)
        winners = [i for i in s if scores[i] == best]
        vals.append(sum(rewards[i] for i in winners) / len(winners))  # uniform tie-break
    return float(np.mean(vals))


def brute_maj(answers, rewards, k):
    vals = []
    for s in itertools.combinations(range(len(answers)), k):
        votes = Counter(answers[i] for i in s if answers[i] >= 0)
        if not votes:
            vals.append(np.mean([rewards[i] for i in s]))
            continue
        top = max(votes.values())
        winning = [a for a, v in votes.items() if v == top]
        # uniform over winning answers, then the mean reward of that answer's samples in the subset
        vals.append(np.mean([np.mean([rewards[i] for i in s if answers[i] == a]) for a in winning]))
    return float(np.mean(vals))


# ---------------------------------------------------------------- pass@k


def test_pass_at_k_matches_enumeration():
    rng = np.random.default_rng(0)
    ms, cs, ks, want = [], [], [], []
    for m in [1, 2, 5, 9]:
        for _ in range(6):
            c = int(rng.integers(0, m + 1))
            k = int(rng.integers(1, m + 1))
            ms.append(m), cs.append(c), ks.append(k), want.append(brute_pass(m, c, k))
    ms, cs, ks, want = map(np.asarray, (ms, cs, ks, want))
    # Array k (loop form), batched and jitted.
    got = jax.jit(metrics.pass_at_k)(ms, cs, ks)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Static k (vectorised product) on rows with M >= k; NaN where k > M.
    for k in [1, 3, 9]:
        got = np.asarray(jax.jit(metrics.pass_at_k, static_argnums=2)(ms, cs, k))
        for m, c, g in zip(ms, cs, got):
            if k > m:
                assert np.isnan(g)
            else:
                np.testing.assert_allclose(g, brute_pass(m, c, k), rtol=1e-6, atol=1e-7)


def test_pass_at_k_large_and_degenerate():
    # Large M: product form vs exact integers (no overflowing binomials).
    for m, c, k in [(1000, 3, 100), (1000, 1, 1), (256, 200, 57), (500, 0, 10), (64, 64, 64)]:
        want = 1 - math.comb(m - c, k) / math.comb(m, k)
        np.testing.assert_allclose(metrics.pass_at_k(m, c, k), want, rtol=1e-5, atol=1e-7)
    assert float(metrics.pass_at_k(10, 8, 3)) == 1.0  # k > M - c
    assert float(metrics.pass_at_k(1, 1, 1)) == 1.0 and float(metrics.pass_at_k(1, 0, 1)) == 0.0
    assert np.isnan(metrics.pass_at_k(4, 1, 5)) and np.isnan(metrics.pass_at_k(4, 1, 0))


# ---------------------------------------------------------------- BoN@k


def test_bon_at_k_matches_enumeration_with_ties():
    rng = np.random.default_rng(1)
    for m in [1, 2, 4, 7, 10]:
        for _ in range(3):
            scores = rng.integers(0, max(1, m // 2), size=m).astype(np.float32)  # many ties
            rewards = rng.normal(size=m).astype(np.float32)
            for k in range(1, m + 1):
                want = brute_bon(scores, rewards, k)
                np.testing.assert_allclose(metrics.bon_at_k(scores, rewards, k), want, rtol=1e-5, atol=1e-6)
                w = metrics.bon_at_k_weights(scores, k)
                np.testing.assert_allclose(jnp.sum(w), 1.0, atol=1e-6)
                assert np.all(np.asarray(w) >= 0)


def test_bon_at_k_batched_masked_and_array_k():
    rng = np.random.default_rng(2)
    b, m = 6, 8
    scores = rng.integers(0, 4, size=(b, m)).astype(np.float32)
    rewards = rng.random((b, m)).astype(np.float32)
    mask = rng.random((b, m)) < 0.75
    mask[:, 0] = True
    mask[0] = True  # one full row
    ks = np.minimum(np.array([1, 2, 3, 2, 5, 8]), mask.sum(-1))
    rewards_nan = np.where(mask, rewards, np.nan)  # invalid rewards never leak in
    got = np.asarray(metrics.bon_at_k(scores, rewards_nan, ks, mask))
    for i in range(b):
        want = brute_bon(scores[i][mask[i]], rewards[i][mask[i]], int(ks[i]))
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    # k larger than a row's valid count -> NaN for that row only.
    got = np.asarray(metrics.bon_at_k(scores, rewards, m, mask))
    assert np.isnan(got[mask.sum(-1) < m]).all() and np.isfinite(got[mask.sum(-1) == m]).all()


def test_bon_at_k_degenerate():
    r = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    # All scores equal: every sample equally likely -> mean reward, for any k.
    for k in range(1, 6):
        np.testing.assert_allclose(metrics.bon_at_k(np.zeros(5), r, k), r.mean(), rtol=1e-6)
    # k = M: the best (tied group averaged).
    s = np.array([1.0, 3.0, 3.0, 2.0, 0.0])
    np.testing.assert_allclose(metrics.bon_at_k(s, r, 5), 1.0, rtol=1e-6)
    # M = 1.
    np.testing.assert_allclose(metrics.bon_at_k(np.array([[2.0]]), np.array([[0.7]]), 1), [0.7], rtol=1e-6)
    # k = 1 is the mean reward regardless of scores.
    np.testing.assert_allclose(metrics.bon_at_k(s, r, 1), r.mean(), rtol=1e-6)


def test_bon_at_k_weights_large_m_against_exact_binomials():
    m, k = 300, 32
    scores = np.random.default_rng(3).permutation(m).astype(np.float32)
    w = np.asarray(metrics.bon_at_k_weights(scores, k), np.float64)
    rank = np.argsort(np.argsort(-scores))
    want = np.array([math.comb(m - 1 - r, k - 1) / math.comb(m, k) for r in rank])
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-12)


# ---------------------------------------------------------------- maj@k


def test_maj_at_k_matches_enumeration():
    rng = np.random.default_rng(4)
    for m in [1, 3, 6, 9]:
        for _ in range(3):
            answers = rng.integers(-1, 3, size=m)  # -1 unparsable, 3 answers -> ties
            rewards = (answers == 0).astype(np.float64)
            rewards[answers == -1] = rng.random((answers == -1).sum())  # unparsable rewards arbitrary
            for k in range(1, m + 1):
                got = metrics.maj_at_k(answers, rewards, k)
                assert isinstance(got, float)
                np.testing.assert_allclose(got, brute_maj(answers, rewards, k), rtol=1e-12, atol=1e-12)


def test_maj_at_k_batched_ragged_and_monte_carlo():
    rng = np.random.default_rng(5)
    answers = rng.integers(-1, 4, size=(3, 12))
    rewards = (answers == 1).astype(np.float64)
    exact = metrics.maj_at_k(answers, rewards, 5)
    assert exact.shape == (3,)
    want = [brute_maj(a, r, 5) for a, r in zip(answers, rewards)]
    np.testing.assert_allclose(exact, want, rtol=1e-12)
    # Force Monte Carlo: estimate within 4 standard errors of the exact value.
    mc, se = metrics.maj_at_k(answers, rewards, 5, max_subsets=10, num_draws=20000, rng=7, return_stderr=True)
    assert np.all(se > 0) and np.all(se < 0.01)
    assert np.all(np.abs(mc - np.asarray(want)) < 4 * se + 1e-12), (mc, want, se)
    # Ragged prompts: list of rows of different lengths; k > M gives NaN.
    rows = [answers[0, :4], answers[1, :9]]
    rws = [rewards[0, :4], rewards[1, :9]]
    got = metrics.maj_at_k(rows, rws, 5)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1], brute_maj(rows[1], rws[1], 5), rtol=1e-12)


def test_maj_at_k_unparsable_and_ties():
    # All unparsable: mean reward of the subset.
    assert metrics.maj_at_k(np.array([-1, -1, -1]), np.array([0.0, 1.0, 0.0]), 2) == pytest.approx(1 / 3)
    # A 1-1 tie between a correct and a wrong answer: 1/2.
    assert metrics.maj_at_k(np.array([0, 1]), np.array([1.0, 0.0]), 2) == pytest.approx(0.5)
    # Unparsable never beats a parsable answer, even outnumbering it.
    assert metrics.maj_at_k(np.array([-1, -1, 0]), np.array([0.0, 0.0, 1.0]), 3) == pytest.approx(1.0)


def test_answers_to_ids():
    raw = [["4", "x", None, "4", ""], [" 2", "2", "3", None, "3"]]
    ids = metrics.answers_to_ids(raw, normalize=str.strip)
    np.testing.assert_array_equal(ids, [[0, 1, -1, 0, -1], [0, 0, 1, -1, 1]])
    np.testing.assert_array_equal(metrics.answers_to_ids(["a", "b", "a"]), [0, 1, 0])
    ragged = metrics.answers_to_ids([["a"], ["b", "b"]])
    assert isinstance(ragged, list) and list(ragged[1]) == [0, 0]


# ---------------------------------------------------------------- KL, entropy, diversity


def test_kl_estimators_exact_expectations():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(7))
    q = rng.dirichlet(np.ones(7))
    kl = float(np.sum(p * np.log(p / q)))
    lp, lq = np.log(p), np.log(q)
    # As single-token sequences over all 7 outcomes, weighted by p: both estimators are unbiased.
    k1 = np.asarray(metrics.kl_k1(jnp.asarray(lp), jnp.asarray(lq)), np.float64)
    k3 = np.asarray(metrics.kl_k3(lp[:, None], lq[:, None]), np.float64)
    np.testing.assert_allclose(np.sum(p * k1), kl, rtol=1e-5)
    np.testing.assert_allclose(np.sum(p * k3), kl, rtol=1e-5)
    assert np.all(k3 >= 0)
    # Token-level with a mask: sums over valid tokens only.
    tl = rng.normal(size=(2, 3, 5))
    tr = rng.normal(size=(2, 3, 5))
    mask = rng.random((2, 3, 5)) < 0.6
    d = tl - tr
    want_k3 = np.sum(mask * (np.exp(-d) - 1 + d), -1)
    np.testing.assert_allclose(metrics.kl_k3(tl, tr, mask), want_k3, rtol=1e-5)
    np.testing.assert_allclose(metrics.kl_k1(tl, tr, mask), np.sum(mask * d, -1), rtol=1e-5, atol=1e-6)
    # Tiny d: no cancellation (k3 ~ d^2/2).
    np.testing.assert_allclose(metrics.kl_k3(jnp.array([[1e-4]]), jnp.array([[0.0]])), [5e-9], rtol=1e-3)


def test_entropies():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    logits[0, 0, 0, :3] = -np.inf
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(p), 0), -1)
    got = metrics.entropy_from_logits(logits)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)
    mask = rng.random((2, 3, 4)) < 0.7
    np.testing.assert_allclose(metrics.sequence_token_entropy(logits, mask), np.sum(mask * h, -1), rtol=1e-5,
                               atol=1e-6)
    tok_lp = rng.normal(size=(2, 3, 4))
    np.testing.assert_allclose(metrics.sequence_entropy(tok_lp, mask), -np.sum(mask * tok_lp, -1), rtol=1e-6)
    # E_{y~p}[-log p(y)] = H(p): the single-sample estimator is unbiased (exact expectation).
    p1 = p[1, 1, 1]
    est = np.asarray(metrics.sequence_entropy(np.log(p1)[:, None]))
    np.testing.assert_allclose(np.sum(p1 * est), h[1, 1, 1], rtol=1e-5)


def test_distinct_answers():
    a = np.array([[0, 1, 1, -1, 3], [-1, -1, -1, -1, -1], [2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(jax.jit(metrics.distinct_answers)(a), [3, 0, 1])
    mask = np.array([[True, False, False, True, True], [True] * 5, [False] * 5])
    np.testing.assert_array_equal(metrics.distinct_answers(a, mask), [2, 0, 0])


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci():
    rng = np.random.default_rng(8)
    x = rng.normal(loc=0.3, scale=1.0, size=400)
    ci = metrics.bootstrap_ci(x, rng=0, num_resamples=2000)
    assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(x.mean())
    # Width ~ 2 * 1.96 * sd / sqrt(B); stderr ~ sd / sqrt(B).
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(ci.stderr / se - 1) < 0.1
    assert abs((ci.high - ci.low) / (2 * 1.96 * se) - 1) < 0.1
    assert metrics.bootstrap_ci(x, rng=0, num_resamples=2000) == ci  # deterministic given the seed
    # Constant values: zero width. Columns resampled jointly; NaN rows dropped.
    c = metrics.bootstrap_ci(np.full(50, 0.7), rng=1)
    assert c.low == pytest.approx(0.7) and c.high == pytest.approx(0.7) and c.stderr == pytest.approx(0.0)
    two = np.stack([x, np.where(np.arange(400) % 10 == 0, np.nan, x)], axis=1)
    ci2 = metrics.bootstrap_ci(two, rng=0)
    assert ci2.mean.shape == (2,) and np.all(np.isfinite(ci2.low))
    assert ci2.mean[1] == pytest.approx(np.nanmean(two[:, 1]))
    # Coverage: over 200 datasets the 90% interval contains the true mean about 90% of the time.
    hits = 0
    for t in range(200):
        d = rng.exponential(size=60)
        r = metrics.bootstrap_ci(d, rng=t, num_resamples=300, alpha=0.1)
        hits += r.low <= 1.0 <= r.high
    assert 0.8 <= hits / 200 <= 0.97


# ---------------------------------------------------------------- non-finite scores (issue 13, defect 9)


def test_bon_at_k_with_a_nan_score_is_nan_not_biased():
    # A NaN score held no rank: its sample got weight 0 and the weights summed to 3/4 (BoN@1 = 0.25, not 0.5).
    scores, rewards = jnp.array([jnp.nan, 1.0, 0.0, 0.5]), jnp.array([1.0, 1.0, 0.0, 0.0])
    for k in (1, 2, 4):
        assert np.isnan(metrics.bon_at_k(scores, rewards, k))
        assert np.isnan(metrics.bon_at_k_weights(scores, k)).all()
    # Masked out, the NaN sample is simply not there; other rows of a batch are unaffected.
    mask = jnp.array([False, True, True, True])
    assert float(metrics.bon_at_k(scores, rewards, 1, mask)) == pytest.approx(1 / 3)
    assert float(metrics.bon_at_k(scores, rewards, 2, mask)) == pytest.approx(brute_bon([1.0, 0.0, 0.5], [1, 0, 0], 2))
    batch = metrics.bon_at_k(jnp.stack([scores, jnp.array([0.0, 1.0, 0.0, 0.5])]), rewards, 2)
    assert np.isnan(batch[0]) and float(batch[1]) == pytest.approx(brute_bon([0.0, 1.0, 0.0, 0.5], [1, 1, 0, 0], 2))
    # -inf still ranks (lowest) and ties with itself.
    inf = jnp.array([-jnp.inf, 1.0, -jnp.inf, 0.5])
    assert float(metrics.bon_at_k(inf, rewards, 2)) == pytest.approx(brute_bon(list(np.asarray(inf)), [1, 1, 0, 0], 2))


def test_require_finite_scores_names_the_prompt():
    from bon_jax.errors import BonJaxError

    ok = np.array([[0.0, -np.inf], [np.inf, 1.0]])
    metrics.require_finite_scores(ok, ["a", "b"])
    bad = np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, np.nan]])
    with pytest.raises(BonJaxError, match=r"NaN for prompt 'b' \(row 1\), samples \[0\] of 2 \(and 1 more"):
        metrics.require_finite_scores(bad, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"prompt row 1"):
        metrics.require_finite_scores(bad)
    metrics.require_finite_scores(bad, mask_BM=~np.isnan(bad))


# ---------------------------------------------------------------- the evaluation path, on fixed samples


class _Task:
    """Answers are the completion text itself; reward 1 when it equals the example's answer."""

    def grade_batch(self, examples_B, completions_BM):
        from bon_jax.tasks.base import Grade, stack_grades

        return stack_grades([[Grade(float(c == ex.answer), c or None) for c in row]
                             for ex, row in zip(examples_B, completions_BM)])

    def same_answer(self, a, b):
        return a == b


def _evaluate_fixed(monkeypatch, task, examples, completions_BM, scores_BM, ks):
    """`evaluate_policy` with the sampler replaced by fixed completions and verifier scores per prompt."""
    import dataclasses

    from bon_jax.pipeline import evaluate as ev
    from bon_jax.pipeline.rollouts import GradedSamples

    m = len(completions_BM[0])

    class Tokenizer:
        def encode_batch(self, texts, **kwargs):
            return np.ones((len(texts), 2), np.int32), np.full(len(texts), 2, np.int32)

    def draw_graded(params, model_cfg, tokenizer, task_, scorer, chunk, prompts_BT, plen_B, n, rng, *,
                    prompt_ids_B, **kwargs):
        texts = [list(completions_BM[i]) for i in prompt_ids_B]
        grades = task_.grade_batch(chunk, texts)
        b, t = len(chunk), 3
        fields = dict(
            prompt_tokens_BT=prompts_BT, prompt_lengths_B=plen_B, tokens_BMT=np.ones((b, n, t), np.int32),
            lengths_BM=np.full((b, n), t), logp_BM=np.zeros((b, n)), token_logp_BMT=np.zeros((b, n, t)),
            texts_BM=texts, rewards_BM=grades.rewards_BM, answers_BM=grades.answers_BM,
            scores_BM=np.asarray(scores_BM, np.float32)[prompt_ids_B], finished_BM=np.ones((b, n), bool),
        )
        return GradedSamples(**{f.name: fields[f.name] for f in dataclasses.fields(GradedSamples)})

    def make_sequence_logp(model_cfg, temperature=1.0, *, per_token=False):
        # The evaluated policy is the reference here: every log-prob 0 (KL 0).
        return lambda params, p_BT, pl_B, tokens_BMT, lengths_BM: np.zeros(
            tokens_BMT.shape if per_token else lengths_BM.shape)

    monkeypatch.setattr(ev, "draw_graded", draw_graded)
    monkeypatch.setattr(ev, "make_sequence_logp", make_sequence_logp)
    return ev.evaluate_policy(None, None, None, Tokenizer(), task, None, examples, jax.random.key(0), m=m, ks=ks,
                              max_new_tokens=3, temperature=1.0, max_prompt_len=8, prompts_per_call=2,
                              bootstrap=10)


def test_evaluation_refuses_nan_scores_naming_the_prompt(monkeypatch):
    from bon_jax.errors import BonJaxError
    from bon_jax.tasks.base import Example

    examples = [Example(id=f"q{i}", prompt="?", answer="1") for i in range(3)]
    completions = [["1", "1", "0", "0"]] * 3
    scores = [[0.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5]]
    out = _evaluate_fixed(monkeypatch, _Task(), examples, completions, scores, ks=(1, 2))
    assert out["bon_at_k"]["1"]["mean"] == pytest.approx(0.5)
    scores[2] = [np.nan, 1.0, 0.0, 0.5]  # the example: BoN@1 was reported as 0.25 for this prompt
    with pytest.raises(BonJaxError, match=r"NaN for prompt 'q2' \(row 2\), samples \[0\]"):
        _evaluate_fixed(monkeypatch, _Task(), examples, completions, scores, ks=(1, 2))


# ---------------------------------------------------------------- maj@k by answer equivalence (defect 14)


def test_answers_to_ids_clusters_by_equivalence():
    from bon_jax.tasks.math import answers_equivalent

    raw = ["\\frac{1}{2}", "0.5", "1/2", "\\dfrac{2}{4}", "0.25", "\\frac14", None, "1/4", "3"]
    np.testing.assert_array_equal(metrics.answers_to_ids(raw, equivalent=answers_equivalent),
                                  [0, 0, 0, 0, 1, 1, -1, 1, 2])
    # Plain string ids split the same answer; maj@k then lets a wrong answer with fewer votes tie or win.
    assert len(set(metrics.answers_to_ids(raw).tolist()) - {-1}) == 8
    # Each key is compared with class representatives only: a non-transitive equivalence does not chain.
    close = lambda a, b: abs(a - b) <= 1  # noqa: E731
    np.testing.assert_array_equal(metrics.answers_to_ids([0, 1, 2, 3, 2], equivalent=close), [0, 0, 1, 1, 1])
    calls = []
    metrics.answers_to_ids(["a", "b", "a", "b", "a"], equivalent=lambda a, b: calls.append((a, b)) or False)
    assert calls == [("a", "b")]  # distinct keys only


def test_evaluation_maj_at_k_votes_by_the_tasks_answer_equivalence(monkeypatch):
    from bon_jax.tasks.base import Example
    from bon_jax.tasks.math import MathTask

    task = MathTask(str(__import__("pathlib").Path(__file__).parent / "data" / "math_sample" / "official"))
    assert task.same_answer("1.5", "\\frac{3}{2}") and not task.same_answer("1.5", "2")
    examples = [Example(id="p", prompt="?", answer="\\frac{3}{2}")]
    # Three correct samples written three ways (the grader's normalisation keeps "1.5" apart from the
    # other two) against two identical wrong ones: the correct answer has the majority.
    completions = [["\\boxed{1.5}", "\\boxed{3/2}", "\\boxed{\\dfrac32}", "\\boxed{2}", "\\boxed{2}"]]
    out = _evaluate_fixed(monkeypatch, task, examples, completions, [[0.0] * 5], ks=(5,))
    assert out["mean_reward"]["mean"] == pytest.approx(0.6)
    assert out["maj_at_k"]["5"]["mean"] == pytest.approx(1.0)  # by strings: a 2-2 tie, 0.5
    assert out["distinct_answers"]["mean"] == pytest.approx(2.0)


def _bon_kl_by_enumeration(scores, k):
    """KL(BoN_k || uniform over the M samples): every k-tuple of draws, the winner uniform among the tied best."""
    m = len(scores)
    q = np.zeros(m)
    for draw in itertools.product(range(m), repeat=k):
        best = max(scores[i] for i in draw)
        winners = [i for i in draw if scores[i] == best]
        for i in winners:
            q[i] += 1.0 / len(winners) / m**k
    keep = q > 0
    return float(np.sum(q[keep] * np.log(q[keep] * m)))


@pytest.mark.parametrize("scores", [[0.1, 0.5, 0.3, 0.9], [0.0, 0.0, 0.7, 0.7, 0.2], [1.0, 1.0, 1.0]])
def test_bon_kl_at_k_matches_enumeration_of_the_draws(scores):
    for k in (1, 2, 3):
        got = metrics.bon_kl_at_k(np.asarray([scores]), k)
        assert got.shape == (1,)
        assert got[0] == pytest.approx(_bon_kl_by_enumeration(scores, k), abs=1e-12)
    # Distinct scores, M large: the plug-in approaches the bound log k - (k-1)/k from below.
    many = metrics.bon_kl_at_k(np.random.default_rng(0).permutation(4000)[None], 4)[0]
    assert many <= math.log(4) - 0.75 and many == pytest.approx(math.log(4) - 0.75, abs=2e-3)
