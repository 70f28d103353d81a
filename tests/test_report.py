"""The run report's paired comparison of policies evaluated on the same prompts."""

import numpy as np
import pytest

from bon_jax.pipeline import report


def _evals(base_B, tuned_B):
    def ev(v):
        return {"per_prompt": {"bon_at_1": list(v), "pass_at_4": list(v), "mean_reward": list(v)}}

    return {"base": ev(base_B), "tuned": ev(tuned_B)}


def test_constant_shift_has_a_degenerate_ci():
    base = np.random.default_rng(0).uniform(size=50)
    diffs = report.paired_differences(_evals(base, base + 0.1))["tuned"]
    for e in (diffs["bon_at_k"]["1"], diffs["pass_at_k"]["4"], diffs["mean_reward"]):
        assert e["mean"] == pytest.approx(0.1)
        assert e["low"] == pytest.approx(0.1) and e["high"] == pytest.approx(0.1)


def test_paired_ci_matches_a_numpy_bootstrap_and_is_narrower_than_the_marginals():
    gen = np.random.default_rng(1)
    difficulty = gen.uniform(size=200)  # shared by both policies: cancels in the paired difference
    base = difficulty + 0.05 * gen.normal(size=200)
    tuned = difficulty + 0.03 + 0.05 * gen.normal(size=200)
    e = report.paired_differences(_evals(base, tuned), bootstrap=2000)["tuned"]["bon_at_k"]["1"]
    d = tuned - base
    idx = np.random.default_rng(0).integers(0, 200, size=(2000, 200))
    means = d[idx].mean(1)
    assert e["mean"] == pytest.approx(d.mean())
    assert e["low"] == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
    assert e["high"] == pytest.approx(np.quantile(means, 0.975), abs=1e-12)
    assert e["low"] > 0  # a 0.03 shift is resolved by the paired test ...
    marginal = [np.quantile(v[idx].mean(1), q) for v, q in ((tuned, 0.025), (base, 0.975))]
    assert marginal[0] < marginal[1]  # ... and not by comparing the two marginal CIs
    text = report.difference_table({"tuned": report.paired_differences(_evals(base, tuned))["tuned"]})
    assert "tuned - base" in text and "BoN@1" in text and "*" in text


def test_no_baseline_or_no_per_prompt_values_gives_no_comparison():
    assert report.paired_differences({"tuned": {"per_prompt": {"bon_at_1": [1.0]}}}) == {}
    assert report.paired_differences({"base": {"per_prompt": {"bon_at_1": [1.0]}}, "tuned": {}}) == {}
