"""The experiment runner end to end (issue 5): smoke run, preemption + resume, NaN guard, config errors.
(The sweep runner: test_sweep.py; the sharded RL update equal to the single-device one: test_parallel.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smoke import assert_finetuning_moved, copy_upstream_stages, smoke_config

from bon_jax.config import load_experiment
from bon_jax.pipeline import finetune as finetune_mod
from bon_jax.pipeline.loop import Preempted
from bon_jax.pipeline.policy import load_params
from bon_jax.pipeline.run import run_experiment
from bon_jax.tasks.arith import ArithTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _finetune_dir(workdir):
    stages = os.path.join(workdir, "stages")
    (name,) = [d for d in os.listdir(stages) if d.startswith("finetune-")]
    return os.path.join(stages, name)


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path):
    summary = run_experiment(smoke_config(tmp_path))
    path = tmp_path / "run" / "summary.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["experiment"] == "smoke" and on_disk["wall_s"] > 0
    assert on_disk["config"]["rl"]["n"] == 4
    assert on_disk["host"]["cpu"] and on_disk["host"]["jax"]  # where it was computed (bon_jax/provenance.py)
    for policy in ("base", "tuned"):
        ev = on_disk["eval"][policy]
        assert set(ev["bon_at_k"]) == {"1", "2", "4"} and set(ev["pass_at_k"]) == {"1", "2", "4"}
        for k in ("1", "4"):
            e = ev["pass_at_k"][k]
            assert 0.0 <= e["low"] <= e["mean"] <= e["high"] <= 1.0
        # pass@k is non-decreasing in k for every prompt, hence on average.
        assert ev["pass_at_k"]["1"]["mean"] <= ev["pass_at_k"]["4"]["mean"] + 1e-9
    assert (tmp_path / "run" / "accuracy_vs_n.png").stat().st_size > 1000
    assert "auc" in json.dumps(on_disk["verifier"])  # the learned verifier reports its held-out AUC
    c = smoke_config(tmp_path)
    assert_finetuning_moved(_finetune_dir(c.workdir), c)  # so "tuned" is not the base evaluated twice
    # A rerun reuses every cached stage and reproduces the evaluation exactly.
    again = run_experiment(smoke_config(tmp_path))
    assert again["eval"]["tuned"]["bon_at_k"] == summary["eval"]["tuned"]["bon_at_k"]


@pytest.mark.slow
def test_sigterm_mid_finetune_then_restart_gives_uninterrupted_params(tmp_path, monkeypatch, shared_stage_root):
    stages = ("tokenizer", "base_policy", "verifier", "finetune")
    c = smoke_config(tmp_path, **{"verifier.kind": "oracle", "rl.steps": 4})
    c.stages = stages
    copy_upstream_stages(c, shared_stage_root)
    run_experiment(c)
    done_dir = _finetune_dir(c.workdir)
    # The comparison below means something only if the steps after the step-2 checkpoint move the params.
    uninterrupted_rows = assert_finetuning_moved(done_dir, c, moved_after=2)
    shutil.move(done_dir, done_dir + ".uninterrupted")

    calls = {"n": 0}
    original = ArithTask.grade_batch

    def grade_then_sigterm(self, examples, completions):
        calls["n"] += 1
        if calls["n"] == 2:  # a real SIGTERM arriving in the middle of the second step
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, examples, completions)

    monkeypatch.setattr(ArithTask, "grade_batch", grade_then_sigterm)
    with pytest.raises(Preempted, match="checkpointed at step 2"):
        run_experiment(c)
    monkeypatch.setattr(ArithTask, "grade_batch", original)
    assert not os.path.exists(os.path.join(done_dir, "done.json"))
    run_experiment(c)  # resumes from the step-2 checkpoint, data-iterator state included

    from bon_jax.models import get_config

    model_cfg = get_config("tiny", vocab_size=c.tokenizer.vocab_size)
    resumed = load_params(os.path.join(done_dir, "params"), model_cfg)
    uninterrupted = load_params(os.path.join(done_dir + ".uninterrupted", "params"), model_cfg)
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
    rows = [json.loads(x) for x in open(os.path.join(done_dir, "logs", "finetune.jsonl"))]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # The resumed steps saw the same samples and took the same (non-zero) steps.
    for key in ("reward_mean", "grad_norm"):
        assert [r[key] for r in rows] == [r[key] for r in uninterrupted_rows], key


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_logged_and_stop_the_run(tmp_path, monkeypatch, shared_stage_root):
    c = smoke_config(tmp_path, **{"verifier.kind": "oracle", "rl.steps": 6, "rl.max_bad_steps": 3})
    c.stages = ("tokenizer", "base_policy", "verifier", "finetune")
    c.log_every = 1
    copy_upstream_stages(c, shared_stage_root)
    real_get = finetune_mod.objectives.get

    def poisoned(name):
        fn = real_get(name)
        return lambda logp, rollout, **kw: (lambda out: (out[0] * jnp.nan, out[1]))(fn(logp, rollout, **kw))

    monkeypatch.setattr(finetune_mod.objectives, "get", poisoned)
    with pytest.raises(FloatingPointError, match="3 consecutive steps with non-finite loss"):
        run_experiment(c)
    rows = [json.loads(x) for x in open(os.path.join(_finetune_dir(c.workdir), "logs", "finetune.jsonl"))]
    assert [r["skipped"] for r in rows] == [1, 1, 1]


def test_nan_rewards_are_refused_by_name(tmp_path, monkeypatch):
    from bon_jax.objectives import InvalidRolloutError
    from bon_jax.tasks.base import Grades

    def nan_grades(self, examples, completions):
        B, N = len(completions), len(completions[0])
        r = np.zeros((B, N), np.float32)
        r[0, 1] = np.nan
        return Grades(r, np.full((B, N), None, object), np.full((B, N), None, object))

    monkeypatch.setattr(ArithTask, "grade_batch", nan_grades)
    c = smoke_config(tmp_path, **{"verifier.kind": "oracle", "sft.steps": 2})
    c.stages = ("tokenizer", "base_policy", "verifier", "finetune")
    with pytest.raises(InvalidRolloutError, match=r"rewards_BM has 1 non-finite value.*prompt 0, sample 1"):
        run_experiment(c)


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "bon_jax.cli.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_refuses_bad_config_before_compute(tmp_path):
    out = _cli("--config=experiments/smoke.py", "--config.rl.m=1", f"--workdir={tmp_path}/w")
    assert out.returncode == 2
    assert "config.rl.m: samples per prompt m=1 must be >= n=4" in out.stderr
    assert not os.path.exists(tmp_path / "w" / "stages")  # nothing was computed
    out = _cli("--config=experiments/smoke.py", "--config.rl.bogus=1")
    assert out.returncode != 0 and "bogus" in out.stderr


def test_math_bo32_names_missing_checkpoint_and_data():
    out = _cli("--config=experiments/math_bo32.py")
    assert out.returncode == 2
    for key in (
        "config.model.checkpoint is not set",
        "config.tokenizer.path is not set",
        "config.task.data_dir is not set",
    ):
        assert key in out.stderr
    assert "Gemma 2 2B" in out.stderr and "MATH" in out.stderr


def test_rl_loss_and_rollout_logps_are_of_the_tempered_policy():
    """At rl.temperature = tau the trained policy is softmax(logits / tau): the loss's log-probs and the
    reference's equal a float64 full forward at tau (the sampler's tau log-probs are checked in
    test_sampling), so the gradient is on-policy at any temperature."""
    from bon_jax.models import Transformer, get_config, init_params
    from bon_jax.models.masks import causal_mask, positions_from_valid
    from bon_jax.objectives import Rollout
    from bon_jax.pipeline.rollouts import make_sequence_logp
    tau, B, M, Tp = 0.5, 2, 3, 5
    cfg = get_config("tiny")
    params = init_params(cfg, jax.random.key(0))
    prompts = jax.random.randint(jax.random.key(1), (B, Tp), 3, cfg.vocab_size)
    plen = jnp.full((B,), Tp, jnp.int32)
    r = np.random.default_rng(0)
    lengths = r.integers(1, 7, (B, M))
    tokens = np.where(np.arange(6) < lengths[..., None], r.integers(3, cfg.vocab_size, (B, M, 6)), 0)

    # Reference: one full forward of every (prompt, completion) row, right-padded; float64 log-softmax.
    T = tokens.shape[-1]
    rows = np.concatenate([np.repeat(np.asarray(prompts), M, 0), tokens.reshape(B * M, T)], 1)
    valid = np.arange(Tp + T)[None] < Tp + lengths.reshape(-1, 1)
    logits, _ = jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(rows),
                                                positions_from_valid(valid), causal_mask(valid))
    z = np.asarray(logits, np.float64) / tau
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tok_logp = np.take_along_axis(logp[:, Tp - 1 : -1], rows[:, Tp:, None], -1)[..., 0]
    expected = np.where(valid[:, Tp:], tok_logp, 0.0).sum(-1).reshape(B, M)

    seq = make_sequence_logp(cfg, tau)(params, prompts, plen, tokens, lengths)
    np.testing.assert_allclose(seq, expected, rtol=1e-4, atol=1e-4)
    batch = {
        "prompt_tokens_BT": prompts, "prompt_lengths_B": plen, "tokens_BMT": tokens, "lengths_BM": lengths,
        "rollout": Rollout(rewards_BM=jnp.zeros((B, M)), scores_BM=jnp.zeros((B, M))),
    }
    loss = finetune_mod.rl_loss(cfg, "bon_rl", n=2, beta=0.0, options={}, temperature=tau)
    _, metrics = jax.jit(loss)(params, batch)
    np.testing.assert_allclose(metrics["logp"], expected.mean(), rtol=1e-4)


@pytest.mark.parametrize(
    "reference_positives, corrupted, reference_only, num_validation",
    [(False, 0, 0, 5), (True, 0, 0, 5), (False, 2, 0, 5), (False, 2, 7, 5), (False, 2, 7, 0)],
)
def test_verifier_data_holds_out_unseen_prompts_and_adds_references_outside_the_holdout(
    monkeypatch, reference_positives, corrupted, reference_only, num_validation
):
    import types

    from bon_jax.pipeline import verifier as verifier_mod

    c = load_experiment("smoke").get_config()
    c.verifier.num_prompts, c.verifier.samples_per_prompt = 20, 3
    c.verifier.reference_positives = reference_positives
    c.verifier.corrupted_references = corrupted
    c.verifier.reference_only_prompts = reference_only
    task = ArithTask(seed=0, num_train=40, num_validation=num_validation, num_test=5)
    ctx = types.SimpleNamespace(config=c, task=task, rng=lambda name: jax.random.key(0))
    tokenizer = types.SimpleNamespace(encode_batch=lambda texts, **kw: (np.ones((len(texts), 4)), np.full(len(texts), 4)))

    def fake_draw(params, cfg, tok, task, scorer, ex, toks, lens, n, key, **kw):
        return types.SimpleNamespace(texts_BM=[["wrong"] * n for _ in ex], rewards_BM=np.zeros((len(ex), n)))

    monkeypatch.setattr(verifier_mod, "draw_graded", fake_draw)
    prompts, completions, labels, groups, holdout = verifier_mod._graded_samples(ctx, tokenizer, None, None)
    train, validation = list(task.examples("train")), list(task.examples("validation"))
    if num_validation:  # 4 held-out prompts from the validation split, which the policy was not trained on
        sampled, train_used = train[:16] + validation[:4], 16
        held = {e.prompt for e in validation[:4]}
        trained = train[:16] + train[16 : 16 + reference_only]
    else:  # no validation split: every fifth training prompt
        sampled, train_used = train[:20], 20
        held = {e.prompt for i, e in enumerate(sampled) if i % 5 == 0}
        trained = [e for e in sampled if e.prompt not in held] + train[20 : 20 + reference_only]
    examples = sampled + train[train_used : train_used + reference_only]  # a row's group is its index here
    assert holdout.sum() == 3 * len(held) and labels[holdout].sum() == 0  # AUC is on policy samples only
    assert set(np.asarray(prompts)[holdout]) == held  # and the extras never land in the holdout
    # Every row's group is its prompt's index, so the ranking term pairs rows of one prompt only.
    assert [examples[g].prompt for g in groups] == prompts
    refs = [(p, x) for p, x, y in zip(prompts, completions, labels) if y == 1.0]
    if not (reference_positives or corrupted):
        assert refs == [] and len(prompts) == 3 * 20
    else:  # corrupted references come with their reference, so the ranking term has a positive to pair
        assert refs == [(e.prompt, e.reference) for e in trained]
        assert len(prompts) == 3 * 20 + (1 + corrupted) * len(trained)
    negatives = [(p, x) for p, x, y in zip(prompts, completions, labels) if y == 0.0 and x != "wrong"]
    assert len(negatives) == corrupted * len(trained)
    for p, x in negatives:
        ref = next(e for e in trained if e.prompt == p)
        assert x != ref.reference and not task.grade(ref, x).reward
