"""Each objective's registration declares what it needs (`objectives.spec`), and the config validation reads
it: KL terms, K reference samples (with the bias of log G-hat that sets the minimum K), value baselines."""

import inspect

import numpy as np
import pytest

from bon_jax import bon, exact
from bon_jax import config as cfg
from bon_jax import objectives as O
from bon_jax.errors import ConfigError
from bon_jax.objectives import ObjectiveSpec
from bon_jax.objectives.variational import MAX_LOG_G_BIAS, log_g_bias, min_ref_samples

# The papers' facts, written out once here as the reference the registrations are checked against.
FACTS = {  # name: (samples from, selects by, reference samples, demonstrations, value baseline, default beta)
    "sft": ("policy", None, False, "dataset", False, 0.0),
    "bon_sft": ("policy", "score", False, "dataset", False, 0.0),
    "bon_rl_v": ("policy", "score", False, None, True, 0.0),
    "bon_rl_s": ("policy", "reward", False, None, True, 0.0),
    "bon_rl": ("policy", "score", False, None, False, 0.0),
    "bon_rlb": ("policy", "reward", False, None, False, 0.0),
    "bon_rlb_printed": ("policy", "reward", False, None, False, 0.0),
    "bon_rlbp": ("policy", "reward", False, None, False, 0.0),
    "pkpo": ("policy", "reward", False, None, False, 0.0),
    "vbon": ("policy", "reward", True, None, False, 1.0),
    "vbon_bound": ("policy", "reward", True, None, False, 1.0),
    "bond": ("policy", "reward", True, "bon_of_reference", False, 1.0),
    "kl_rl": ("policy", None, False, None, False, 0.0),
    "grpo": ("policy", None, False, None, False, 0.0),  # Shao et al. 2024; M >= 2 (spec.min_samples)
    "dr_grpo": ("policy", None, False, None, False, 0.0),  # Liu et al. 2025
    "bon_distill_sft": ("reference", "score", False, None, False, 0.0),  # Amini et al.: BoN samples of pi_ref
}


def test_every_registered_objective_declares_the_papers_facts():
    assert set(O.names()) == set(FACTS)
    for name, facts in FACTS.items():
        s = O.spec(name)
        assert (s.samples, s.selects_by, s.reference_samples, s.demonstrations, s.value_baseline,
                s.default_beta) == facts, name
        assert s.name == name and O.get(name).spec is s
        params = inspect.signature(O.get(name)).parameters
        assert params["beta"].default == s.default_beta
        assert ("values_B" in params) == s.value_baseline and ("select_by" in params) == s.select_option
        assert s.kl_terms == (s.samples == "policy")


def test_selection_follows_the_select_by_option_where_there_is_one():
    assert O.spec("vbon").selection({"select_by": "score"}) == "score"
    assert O.spec("vbon").selection({}) == "reward"
    assert O.spec("bon_rl_v").selection({"select_by": "reward"}) == "score"  # no such option: ignored
    with pytest.raises(ValueError, match="select_by"):
        O.spec("bond").selection({"select_by": "votes"})


def test_registration_needs_a_spec_consistent_with_the_signature():
    def fn(logp_BM, rollout, *, n, beta=1.0, expert_logp_B=None, anchor_coef=0.0):
        return None

    with pytest.raises(TypeError, match="ObjectiveSpec"):
        O.register("spec_test_missing")(fn)
    with pytest.raises(ValueError, match="default_beta"):
        O.register("spec_test_beta", ObjectiveSpec())(fn)
    with pytest.raises(ValueError, match="values_B"):
        O.register("spec_test_values", ObjectiveSpec(default_beta=1.0, value_baseline=True))(fn)
    with pytest.raises(ValueError, match="reference"):
        ObjectiveSpec(samples="reference", default_beta=1.0)
    with pytest.raises(ValueError, match="samples"):
        ObjectiveSpec(samples="pi")
    assert "spec_test_missing" not in O.names() and "spec_test_beta" not in O.names()


def test_exact_objective_reads_the_spec():
    logits, ref = np.array([0.3, -0.2, 0.5]), np.zeros(3)
    rewards, scores = np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.2])
    # bon_rl_s selects by the reward (its spec), bon_rl_v by the score: exact J differs accordingly.
    j_s = float(exact.objective("bon_rl_s", logits, rewards, scores, ref, n=2))
    pi = np.exp(logits) / np.exp(logits).sum()
    assert j_s == pytest.approx(float(np.sum(bon.bon_distribution(pi, rewards, 2) * rewards)), rel=1e-5)
    with pytest.raises(TypeError, match="no select_by option"):
        exact.objective("bon_rl_v", logits, rewards, scores, ref, n=2, select_by="reward")


# ---------------------------------------------------------------- config validation from the spec


def _config(objective, **rl):
    c = cfg.base_config()
    c.rl.objective = objective
    for k, v in rl.items():
        c.rl[k] = v
    return c


def test_too_few_reference_samples_are_refused_before_compute():
    with pytest.raises(ConfigError, match=r"rl\.ref_samples: vbon .* K = 32 biases log G-hat by 0\.20 nats at N = 8"):
        cfg.validate(_config("vbon", n=8, m=8, ref_samples=32, beta=1.0))
    with pytest.raises(ConfigError, match=r"rl\.ref_samples: bond .* no CDF at all"):
        cfg.validate(_config("bond", n=2, m=2, ref_samples=0))
    cfg.validate(_config("vbon", n=8, m=8, ref_samples=min_ref_samples(8), beta=1.0))
    cfg.validate(_config("kl_rl", ref_samples=0))  # objectives without CDFs need none


def test_value_baseline_only_where_the_objective_takes_one():
    cfg.validate(_config("bon_rl_v", value_baseline=True))
    with pytest.raises(ConfigError, match=r"rl\.value_baseline: bon_rlbp takes no value baseline"):
        cfg.validate(_config("bon_rlbp", value_baseline=True))
    with pytest.raises(ConfigError, match=r"rl\.value_lr"):
        cfg.validate(_config("bon_rl_v", value_baseline=True, value_lr=float("nan")))


def test_unknown_objective_is_refused_with_the_registered_names():
    with pytest.raises(ConfigError, match=r"rl\.objective: .*registered: bon_distill_sft"):
        cfg.validate(_config("bon_rlx"))


def test_math_bo32_uses_chows_value_model_lr_for_the_value_baseline():
    c = cfg.load_experiment("math_bo32").get_config()
    assert c.rl.objective == "bon_rl_v" and c.rl.value_baseline and c.rl.value_lr == 1e-5


# ---------------------------------------------------------------- the bias of log G-hat


@pytest.mark.parametrize("k, n", [(8, 4), (32, 8), (20, 2)])
def test_log_g_bias_matches_a_monte_carlo_of_the_smoothed_estimate(k, n):
    """Continuous reward, y ~ pi_ref: its reward's quantile U ~ Uniform(0, 1) and K reference rewards; the
    estimate is the library's empirical CDFs (add-one smoothing) and BoN weight, the truth log N + (N-1) log U."""
    rng = np.random.default_rng(k * 100 + n)
    P = 100_000
    u = rng.random(P)
    ref = rng.random((P, k))
    f, f_lt = bon.empirical_cdfs(ref, u[:, None], smoothing=1.0)
    diff = np.asarray(bon.log_bon_weight(np.asarray(f, np.float64), np.asarray(f_lt, np.float64), n))[:, 0] - (
        np.log(n) + (n - 1) * np.log(u)
    )
    se = diff.std() / np.sqrt(P)
    assert abs(diff.mean() - log_g_bias(k, n)) < 4 * se


def test_min_ref_samples_is_the_smallest_k_within_the_bias_bound():
    for n in (2, 4, 8, 16):
        k = min_ref_samples(n)
        assert log_g_bias(k, n) <= MAX_LOG_G_BIAS < log_g_bias(k - 1, n)
    assert min_ref_samples(1) == 1 and log_g_bias(300, 16) < MAX_LOG_G_BIAS < log_g_bias(32, 16)
