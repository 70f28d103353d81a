"""The fine-tuning stage builds what each objective's ObjectiveSpec declares (issue 13, defects 1, 2, 6, 7, 8):
bon_distill_sft samples pi_ref, bond gets a Best-of-N sample of pi_ref, vBoN's reference samples are drawn
once per prompt and shared through the stage cache, BoN-RL-V can learn a value baseline, and host-side
sample metrics never overwrite the objective's. Toy size: the tiny model (random init), 2-prompt batches."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smoke import smoke_config

from bon_jax import objectives
from bon_jax.models import get_config, init_params
from bon_jax.objectives import Rollout
from bon_jax.pipeline import finetune as F
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.policy import task_corpus
from bon_jax.pipeline.rollouts import ReferenceSamples, bon_winners, draw_graded
from bon_jax.tasks.arith import ArithTask
from bon_jax.tokenizer import Tokenizer
from bon_jax.verifiers import Samples, Verifier, completion_texts


class LengthVerifier:
    """A score that varies between samples (so Best-of-N winners differ from a uniform pick) and is cheap."""

    def score(self, examples_B, samples):
        return np.array([[float(len(t) % 5) for t in row] for row in completion_texts(samples)], np.float32)


SCORER = LengthVerifier()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    c = smoke_config(tmp_path_factory.mktemp("tok"))
    task = ArithTask(**c.task.kwargs.to_dict())
    tok = Tokenizer.train(task_corpus(task), vocab_size=c.tokenizer.vocab_size, model_type=c.tokenizer.model_type)
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    return tok, cfg, init_params(cfg, jax.random.key(0))


def _run(toy, root, name, objective, monkeypatch=None, *, record=None, steps=2, verifier=SCORER, log_every=1,
         **overrides):
    """finetune_stage for `steps` steps on 2 training prompts (so every step meets the same ones); returns
    (tuned params, the logged rows). `record` collects (params copy, n) of every draw_graded call."""
    tok, cfg, params = toy
    kw = {"rl.objective": objective, "rl.n": 2, "rl.m": 2, "rl.steps": steps, "rl.batch_size": 2,
          "rl.max_new_tokens": 8, "rl.lr": 1e-2, "rl.warmup": 0, "task.num_train": 2}
    kw.update(overrides)
    task_kw = {k.split(".", 1)[1]: v for k, v in kw.items() if k.startswith("task.")}
    c = smoke_config(root, name=name, **{k: v for k, v in kw.items() if not k.startswith("task.")})
    c.task.kwargs.update(task_kw)
    c.log_every = log_every
    if record is not None:
        def recording(p, *args, **kwargs):
            record.append((jax.tree.map(np.array, p), args[7]))  # args[7]: samples per prompt
            return draw_graded(p, *args, **kwargs)

        monkeypatch.setattr(F, "draw_graded", recording)
    ctx = RunContext(c, shared_cache_root=str(root / "stages"))
    tuned, st = F.finetune_stage(ctx, tok, cfg, params, "base", verifier, "verifier")
    with open(os.path.join(st.path, "logs", "finetune.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return tuned, rows


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------- defect 1: bon_distill_sft samples pi_ref


@pytest.mark.slow
def test_bon_distill_sft_draws_its_samples_from_the_reference_not_the_trained_policy(toy, tmp_path, monkeypatch):
    calls = []
    tuned, rows = _run(toy, tmp_path, "distill", "bon_distill_sft", monkeypatch, record=calls, **{"rl.beta": 0.0})
    base = toy[2]
    assert not _same(tuned, base)  # the policy did move, so drawing from it would show
    assert len(calls) == 2 and all(_same(p, base) for p, _ in calls)  # step 1 too: pi_ref, not the policy
    assert all(np.isfinite(r["loss"]) for r in rows) and "sample/kl_ref_k1" not in rows[0]



# ---------------------------------------------------------------- defects 2 and 7: bond, reference samples


@pytest.mark.slow
def test_bond_runs_and_reference_samples_are_drawn_once_per_prompt(toy, tmp_path, monkeypatch):
    calls = []
    _, rows = _run(toy, tmp_path, "bond", "bond", monkeypatch, record=calls, **{"rl.ref_samples": 4})
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in rows)
    assert all("expert_logp_mean" in r and "sample/bon_of_reference_reward" in r for r in rows)
    # Per step: M = 2 policy samples and N = 2 reference samples for the BoN demonstration; the K reference
    # samples only at the first step (both prompts are met again at step 1), REF_CHUNK at a time.
    sizes = [n for _, n in calls]
    assert sizes.count(F.REF_CHUNK) == 1 and sizes.count(2) == 2 * 2
    base = toy[2]
    assert all(_same(p, base) for p, n in calls if n == F.REF_CHUNK)
    (stage_dir,) = [d for d in os.listdir(tmp_path / "stages") if d.startswith("reference_samples-")]
    with np.load(tmp_path / "stages" / stage_dir / "reference_samples.npz") as z:
        cached = {k: z[k] for k in z.files}
    assert sorted(cached["ids_P"]) == [0, 1] and cached["rewards_PK"].shape == (2, 4)


def test_bon_sft_scores_its_demonstrations_through_the_verifier_interface(toy, tmp_path):
    """One verifier interface: the samples and bon_sft's demonstrations reach `Verifier.score` as `Samples`
    (the demonstrations as texts with reward 1, the samples with their tokens, texts and rewards)."""
    seen = []

    class Recording(LengthVerifier):
        def score(self, examples_B, samples):
            seen.append((list(examples_B), samples))
            return super().score(examples_B, samples)

    assert isinstance(Recording(), Verifier)
    _run(toy, tmp_path, "bon_sft", "bon_sft", steps=1, verifier=Recording())
    assert all(isinstance(s, Samples) for _, s in seen)
    demos = [(ex, s) for ex, s in seen if s.tokens_BMT is None]
    drawn = [s for _, s in seen if s.tokens_BMT is not None]
    assert len(demos) == 1 and drawn
    ex, s = demos[0]
    assert [list(row) for row in s.texts_BM] == [[e.reference] for e in ex]
    np.testing.assert_array_equal(s.rewards_BM, np.ones((len(ex), 1)))
    for s in drawn:
        assert s.rewards_BM.shape == s.lengths_BM.shape == (len(s.texts_BM), 2)
        assert s.prompt_tokens_BT.shape[0] == len(s.texts_BM)


def test_sweep_points_share_the_reference_samples_stage(tmp_path):
    """The cache is keyed by pi_ref, verifier, prompts and sampling settings, not by objective, N, M or lr."""

    def path(**overrides):
        c = smoke_config(tmp_path, **{"rl.objective": "vbon", "rl.ref_samples": 64, **overrides})
        return F.reference_sample_stage(RunContext(c, shared_cache_root=str(tmp_path)), "base", "ver").path

    same = path()
    assert path(**{"rl.objective": "vbon_bound", "rl.n": 2, "rl.m": 8, "rl.lr": 1.0, "rl.beta": 0.5}) == same
    for key, value in (("rl.temperature", 0.7), ("rl.ref_samples", 128), ("rl.max_new_tokens", 9)):
        assert path(**{key: value}) != same


def test_reference_sample_cache_merges_concurrent_writers_and_checks_k(tmp_path):
    path = str(tmp_path / "ref.npz")
    a, b = ReferenceSamples(path, 3), ReferenceSamples(path, 3)
    draw = lambda ids: lambda: (np.tile(np.float32(ids)[:, None], (1, 3)), -np.tile(np.float32(ids)[:, None], (1, 3)))
    a.lookup([0, 1], draw([0, 1]))
    b.lookup([2, 1], draw([2, 9]))  # prompt 1 unknown to b: its draw's value for 1 is kept only by b
    r, s = ReferenceSamples(path, 3).lookup([0, 2], lambda: pytest.fail("everything is cached"))
    np.testing.assert_array_equal(r[:, 0], [0, 2])
    np.testing.assert_array_equal(s[:, 0], [0, -2])
    assert a.draws == b.draws == 1
    with pytest.raises(ValueError, match="K = 3"):
        ReferenceSamples(path, 4)


def test_bon_winners_picks_the_top_and_breaks_ties_uniformly():
    sel = np.array([[0.0, 2.0, 2.0, 1.0]] * 4000)
    win = bon_winners(sel, jax.random.key(0))
    assert set(win) == {1, 2} and abs(np.mean(win == 1) - 0.5) < 4 * 0.5 / np.sqrt(4000)
    np.testing.assert_array_equal(bon_winners(np.array([[3.0, 1.0], [0.0, 5.0]]), jax.random.key(1)), [0, 1])


# ---------------------------------------------------------------- defect 6: the learned value baseline


def test_rl_loss_passes_the_value_baseline_to_the_objective_and_it_changes_the_update():
    cfg = get_config("tiny")
    params = init_params(cfg, jax.random.key(0))
    B, M, T = 2, 3, 4
    r = np.random.default_rng(0)
    batch = {
        "prompt_tokens_BT": jnp.asarray(r.integers(3, cfg.vocab_size, (B, 5))),
        "prompt_lengths_B": jnp.full((B,), 5),
        "tokens_BMT": jnp.asarray(r.integers(3, cfg.vocab_size, (B, M, T))),
        "lengths_BM": jnp.full((B, M), T),
        "rollout": Rollout(rewards_BM=jnp.asarray([[1.0, 0, 0], [0, 1, 1]]), scores_BM=jnp.asarray(r.random((B, M)))),
    }
    loss = jax.jit(F.rl_loss(cfg, "bon_rl_v", n=2, beta=0.0, options={}))
    values_B = jnp.asarray([0.9, -0.4])
    (l_batch, m_batch), (l_value, m_value) = loss(params, batch), loss(params, dict(batch, values_B=values_B))
    assert float(m_value["baseline_mean"]) == pytest.approx(0.25)
    assert float(m_batch["baseline_mean"]) != pytest.approx(0.25)
    # The surrogate is -sum_j w_j logp_j with w_j = u_j (R_j - b): another b, other weights, another update.
    assert float(l_value) != pytest.approx(float(l_batch))


def test_value_regression_reduces_its_loss():
    cfg = get_config("tiny")
    base = init_params(cfg, jax.random.key(0))
    init, predict, update = F.value_baseline(cfg, lr=1e-2, steps=20)
    state = init(base, jax.random.key(1))
    prompts = jax.random.randint(jax.random.key(2), (4, 6), 3, cfg.vocab_size)
    lengths = jnp.asarray([6, 4, 5, 2])
    prompts = jnp.where(jnp.arange(6) >= 6 - lengths[:, None], prompts, 0)  # left-padded
    batch = {"prompt_tokens_BT": prompts, "prompt_lengths_B": lengths, "target_B": jnp.asarray([0.8, 0.1, 0.5, 0.3])}
    step = jax.jit(update)
    losses, means = [], []
    for _ in range(20):
        state, m = step(state, batch)
        losses.append(float(m["value/loss"]))
        means.append(float(m["value/mean"]))
    assert means[0] == 0.0  # zero head: b = 0 at the start
    assert losses[0] == pytest.approx(float(jnp.mean(batch["target_B"] ** 2)))
    assert losses[-1] < 0.1 * losses[0]


@pytest.fixture(scope="module")
def value_run(toy, tmp_path_factory):
    """bon_rl_v with the value baseline, whose objective metrics `bon_reward` and `kl_ref` are replaced by
    sentinels so that the log shows whose value survived."""
    real_get = objectives.get

    def sentinel_get(name):
        fn = real_get(name)

        def wrapped(*args, **kwargs):
            loss, metrics = fn(*args, **kwargs)
            return loss, dict(metrics, bon_reward=jnp.float32(123.0), kl_ref=jnp.float32(-7.0))

        return wrapped

    def graded_by_length(self, examples_B, texts_BM):  # rewards that vary, so the value has something to fit
        grades = real_grade(self, examples_B, texts_BM)
        rewards = SCORER.score(examples_B, texts_BM) / 4.0  # the verifier is then a perfect one
        return dataclasses.replace(grades, rewards_BM=rewards)

    real_grade = ArithTask.grade_batch
    mp = pytest.MonkeyPatch()
    mp.setattr(F.objectives, "get", sentinel_get)
    mp.setattr(ArithTask, "grade_batch", graded_by_length)
    try:
        overrides = {"rl.value_baseline": True, "rl.value_lr": 1e-2, "rl.m": 3}
        return _run(toy, tmp_path_factory.mktemp("value"), "value", "bon_rl_v", steps=3, **overrides)[1]
    finally:
        mp.undo()


@pytest.mark.slow
def test_value_baseline_is_trained_and_used_by_the_pipeline(value_run):
    rows = value_run
    for r in rows:  # the objective's baseline is the value model's prediction, step by step
        assert r["baseline_mean"] == pytest.approx(r["value/mean"], abs=1e-6)
        assert np.isfinite(r["value/loss"])
    assert rows[0]["value/mean"] == 0.0 and rows[-1]["value/mean"] != 0.0  # zero head, then learned
    assert any(r["value/target_mean"] > 0 for r in rows) and rows[-1]["value/loss"] < rows[0]["value/loss"]


# ---------------------------------------------------------------- defect 8: metric names


@pytest.mark.slow
def test_host_sample_metrics_do_not_overwrite_the_objectives(value_run):
    for r in value_run:
        assert r["bon_reward"] == 123.0 and r["kl_ref"] == -7.0  # the objective's values, not the host's
        for key in ("sample/bon_reward_argmax_M", "sample/kl_ref_k1", "sample/reward_mean", "sample/pass_at_M"):
            assert key in r


# ---------------------------------------------------------------- the reference pass: only where it is used


def _run_recording_ref(toy, root, monkeypatch, beta):
    """kl_rl for 4 steps logged every 2: the logged rows and, per loss call, whether its rollout held the
    reference's log-probs."""
    real_get, seen = objectives.get, []

    def recording_get(name):
        fn = real_get(name)

        def wrapped(logp_BM, rollout, **kwargs):
            seen.append(rollout.ref_logp_BM is not None)  # traced once per compiled shape
            return fn(logp_BM, rollout, **kwargs)

        return wrapped

    monkeypatch.setattr(F.objectives, "get", recording_get)
    rows = _run(toy, root, f"ref{beta}", "kl_rl", steps=4, log_every=2, **{"rl.beta": beta})[1]
    return rows, seen


@pytest.mark.slow
def test_without_a_kl_term_the_reference_pass_runs_only_for_the_logged_kl_metrics(toy, tmp_path, monkeypatch):
    rows, seen = _run_recording_ref(toy, tmp_path, monkeypatch, beta=0.0)
    assert seen and not any(seen)  # the loss never needs pi_ref without its KL term
    has_kl = ["sample/kl_ref_k1" in r for r in rows]
    assert has_kl == [True, False, True, True]  # loop steps 0, 2 (log_every) and the last one
    for r in rows:
        if "sample/kl_ref_k1" in r:
            assert np.isfinite(r["sample/kl_ref_k1"]) and r["sample/kl_ref_k3"] >= 0.0


@pytest.mark.slow
def test_with_a_kl_term_the_reference_enters_every_step_and_the_host_kl_matches_the_objectives(
    toy, tmp_path, monkeypatch
):
    rows, seen = _run_recording_ref(toy, tmp_path, monkeypatch, beta=0.1)
    assert seen and all(seen)
    for r in rows:  # the host's estimate of KL(pi || pi_ref) from the same samples is the objective's
        assert r["sample/kl_ref_k1"] == pytest.approx(r["kl_ref"], rel=1e-4, abs=1e-5)
        assert r["sample/kl_ref_k3"] == pytest.approx(r["kl_ref_k3"], rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------- grpo: the completion lengths reach the loss


@pytest.mark.slow
def test_grpo_gets_each_samples_length_in_its_rollout(toy, tmp_path, monkeypatch):
    seen, validate = [], objectives.validate_rollout

    def recording(rollout, **kw):  # the trainer validates every step's rollout before the jitted step
        seen.append(rollout)
        return validate(rollout, **kw)

    monkeypatch.setattr(F.objectives, "validate_rollout", recording)
    _, rows = _run(toy, tmp_path, "grpo", "grpo", **{"rl.m": 3})
    assert len(seen) == 2 and all(r.lengths_BM is not None for r in seen)
    lengths = np.asarray(seen[0].lengths_BM)
    assert lengths.shape == (2, 3) and lengths.min() >= 1 and lengths.max() <= 8  # rl.max_new_tokens = 8
    for r in rows:
        assert np.isfinite(r["loss"]) and 0 <= r["frac_informative"] <= 1
