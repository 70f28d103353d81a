"""Resume and preemption of the training loop and of the stages (issue 13, defect 10).

Every resume test compares a run that was stopped and restarted with one that was not, on a toy
least-squares problem whose parameters move at every step (checked), so equality is not the initial
parameters compared with themselves.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bon_jax.train.checkpoint import Checkpointer
from bon_jax.train.loop import LoopConfig, Preempted, run_loop
from bon_jax.train.metrics_log import read_jsonl
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step

STEPS = 8


class Killed(Exception):
    """Stands for a kill the loop cannot intercept (SIGKILL, out of memory)."""


def _loss(params, batch):
    err = batch["x_RD"] @ params["w"] - batch["y_R"]
    return jnp.mean(err**2), {"mean_err": jnp.mean(err)}


_OPT = adamw(0.05, STEPS, max_grad_norm=None)
_STEP = jax.jit(make_update_step(_loss, _OPT))


def _init():
    return TrainState.create({"w": jnp.zeros((3,), jnp.float32)}, _OPT)


def _batches(nan_at=(), sigterm_at=(), crash_at=()):
    """batch_fn: step t's batch drawn from seed t; a NaN target at the steps `nan_at` (a skipped step), a
    real SIGTERM or an exception (a hard kill) while preparing the steps `sigterm_at` / `crash_at`."""

    def batch_fn(step, state):
        if step in sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if step in crash_at:
            raise Killed
        r = np.random.default_rng(step)
        x = r.normal(size=(8, 3)).astype(np.float32)
        y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * r.normal(size=8)).astype(np.float32)
        if step in nan_at:
            y[0] = np.nan
        return {"x_RD": jnp.asarray(x), "y_R": jnp.asarray(y)}

    return batch_fn


def _rows(stage_dir):
    return read_jsonl(os.path.join(stage_dir, "logs", "train.jsonl"))


def _assert_same_run(resumed_dir, resumed, reference_dir, reference):
    assert not np.allclose(reference.params["w"], 0.0)  # training moved the parameters
    jax.tree.map(np.testing.assert_array_equal, resumed, reference)
    got, want = _rows(resumed_dir), _rows(reference_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # one row per step
    assert [(r["loss"], r["skipped"]) for r in got] == [(r["loss"], r["skipped"]) for r in want]


def test_sigterm_during_a_checkpoint_step_checkpoints_once_and_resumes_exactly(tmp_path):
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=1)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "preempted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(), cfg)
    # SIGTERM while step 4 is prepared: step 4 is both a periodic checkpoint and the preemption's.
    with pytest.raises(Preempted, match="checkpointed at step 4"):
        run_loop(dir_, _init(), _STEP, _batches(sigterm_at=(3,)), cfg)
    with Checkpointer(os.path.join(dir_, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [4]
    resumed = run_loop(dir_, _init(), _STEP, _batches(), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)


def test_resume_after_a_skipped_nonfinite_step_matches_the_uninterrupted_run(tmp_path):
    """Step 3's loss is NaN: the update is skipped, so `state.step` lags the loop's step by one; the
    restart must resume at the checkpoint's step (5), not at `state.step` (4), which would redo step 5."""
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=100, log_every=1)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "preempted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(nan_at=(2,)), cfg)
    assert int(reference.step) == STEPS - 1
    with pytest.raises(Preempted, match="checkpointed at step 5"):
        run_loop(dir_, _init(), _STEP, _batches(nan_at=(2,)), cfg, stop_after=5)
    resumed = run_loop(dir_, _init(), _STEP, _batches(nan_at=(2,)), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)
    assert [r["skipped"] for r in _rows(dir_)] == [0, 0, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    "how, log_every",
    [
        ("killed after logging past its last checkpoint", 1),  # rows 5, 6 were logged twice
        ("preempted between two log flushes", 4),  # rows 1-3 were never logged
    ],
)
def test_metric_log_has_one_row_per_step_after_a_restart(tmp_path, how, log_every):
    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=log_every)
    ref_dir, dir_ = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    reference = run_loop(ref_dir, _init(), _STEP, _batches(), cfg)
    if how.startswith("killed"):
        with pytest.raises(Killed):
            run_loop(dir_, _init(), _STEP, _batches(crash_at=(6,)), cfg)
        assert [r["step"] for r in _rows(dir_)] == [1, 2, 3, 4, 5, 6]
    else:
        with pytest.raises(Preempted, match="checkpointed at step 3"):
            run_loop(dir_, _init(), _STEP, _batches(), cfg, stop_after=3)
    resumed = run_loop(dir_, _init(), _STEP, _batches(), cfg)
    _assert_same_run(dir_, resumed, ref_dir, reference)


def test_stage_whose_params_were_saved_but_not_marked_done_completes_on_rerun(tmp_path):
    """A training stage ends with: run_loop, save its params (step 0 of `<stage>/params`), `done.json`.
    Killed between the last two, the rerun finds the loop finished (its last checkpoint is the final
    step) and saves the params again: that save replaces the committed ones instead of failing."""
    from bon_jax.pipeline.stage_cache import stage

    cfg = LoopConfig(num_steps=STEPS, ckpt_every=4, log_every=4)
    st = stage(str(tmp_path), "base_policy", {"steps": STEPS})
    for _ in range(2):  # the first attempt is killed before mark_done
        assert not st.done
        state = run_loop(st.path, _init(), _STEP, _batches(), cfg)
        with Checkpointer(st.file("params"), max_to_keep=1) as ckpt:
            ckpt.save(0, {"params": state.params})
    st.mark_done()
    assert not np.allclose(state.params["w"], 0.0)
    with Checkpointer(st.file("params"), max_to_keep=1) as ckpt:
        saved, _ = ckpt.restore({"params": _init().params})
        assert ckpt.all_steps() == [0]
    jax.tree.map(np.testing.assert_array_equal, saved["params"], state.params)


def test_verifier_stage_resumes_its_samples_after_preemption_and_checkpoints_its_training(
    tmp_path, monkeypatch
):
    """The learned verifier's stage, SIGTERMed while drawing its second chunk of samples, raises
    `Preempted`; the rerun draws the third chunk only and trains on the samples of an uninterrupted run,
    in the stage's directory (so its training checkpoints and resumes: next test). The sampler and the
    training are stand-ins: what is tested is what the stage saves, reads back and passes on."""
    import types

    from smoke import smoke_config

    from bon_jax.models import get_config
    from bon_jax.pipeline import verifier as verifier_mod
    from bon_jax.pipeline.context import RunContext

    overrides = {"verifier.num_prompts": 40, "verifier.samples_per_prompt": 2}  # chunks of 16, 16, 8 prompts
    c_ref, c = smoke_config(tmp_path, "reference", **overrides), smoke_config(tmp_path, "run", **overrides)
    tok = types.SimpleNamespace(
        encode_batch=lambda texts, **kw: (np.ones((len(texts), 4), np.int32), np.full(len(texts), 4)),
        encode=lambda text: [1] * len(text),
    )
    drawn, trained = [], []

    def fake_draw(params, cfg, tokenizer, task, scorer, ex, toks, lens, n, key, *, prompt_ids_B, **kw):
        drawn.append(int(prompt_ids_B[0]))
        if sigterm_at_draw and len(drawn) == sigterm_at_draw:
            os.kill(os.getpid(), signal.SIGTERM)
        right = lambda p, i: (p + i) % 2 == 0
        texts = [
            [e.reference if right(p, i) else f"wrong {p}" for i in range(n)] for e, p in zip(ex, prompt_ids_B)
        ]
        rewards = np.array([[float(right(p, i)) for i in range(n)] for p in prompt_ids_B], np.float32)
        return types.SimpleNamespace(texts_BM=texts, rewards_BM=rewards)

    def fake_train(cfg, tokenizer, prompts, completions, labels, **kw):
        trained.append((prompts, completions, labels.tolist(), kw["groups"].tolist(), kw["eval_data"][0], kw))
        raise Preempted("verifier: checkpointed at step 1; restart to resume")

    monkeypatch.setattr(verifier_mod, "draw_graded", fake_draw)
    monkeypatch.setattr(verifier_mod, "train_verifier", fake_train)
    model_cfg = get_config("tiny", vocab_size=300)
    stage = lambda ctx, **kw: verifier_mod.verifier_stage(ctx, tok, model_cfg, None, "base", **kw)

    sigterm_at_draw = None
    with pytest.raises(Preempted, match="at step 1"):
        stage(RunContext(c_ref))
    assert drawn == [0, 16, 32]

    def killed(signum, frame):  # what a SIGTERM that nothing intercepts does: the run dies
        raise Killed

    previous = signal.signal(signal.SIGTERM, killed)
    try:
        drawn.clear()
        sigterm_at_draw = 2
        with pytest.raises(Preempted, match="samples of 32 of 40 prompts saved"):
            stage(RunContext(c))
        assert drawn == [0, 16] and len(trained) == 1
        drawn.clear()
        sigterm_at_draw = None
        with pytest.raises(Preempted, match="at step 1"):
            stage(RunContext(c), stop_after=3)
        assert drawn == [32]  # the saved chunks are read back, not drawn again
    finally:
        signal.signal(signal.SIGTERM, previous)
    (*data_ref, kw_ref), (*data, kw) = trained
    assert data == data_ref and len(data[0]) > 80  # samples, references and corruptions of 40 prompts
    stage_dir = kw["stage_dir"]
    assert os.path.basename(stage_dir).startswith("verifier-") and kw_ref["stage_dir"] != stage_dir
    assert kw["stop_after"] == 3 and kw_ref["stop_after"] is None
    assert sorted(os.listdir(os.path.join(stage_dir, "samples"))) == [
        f"prompts_{i:06d}.json" for i in (0, 16, 32)
    ]


def test_train_verifier_preempted_resumes_to_the_uninterrupted_verifier(tmp_path):
    from bon_jax.models import get_config
    from bon_jax.tokenizer import Tokenizer
    from bon_jax.verifiers import init_verifier_params, train_verifier

    words = [f"{a} plus {b} is {a + b}" for a in range(12) for b in range(12)]
    tok = Tokenizer.train(words, vocab_size=300, hard_vocab_limit=False)
    cfg = get_config("tiny", vocab_size=tok.vocab_size, num_layers=1, attention_types=("global",))
    r = np.random.default_rng(0)
    prompts = [f"{a} plus {b} is" for a, b in r.integers(0, 12, (24, 2))]
    labels = r.integers(0, 2, 24)
    completions = [str(eval(p[:-3].replace("plus", "+")) + (1 - y)) for p, y in zip(prompts, labels)]
    train = lambda d, **kw: train_verifier(
        cfg,
        tok,
        prompts,
        completions,
        labels,
        steps=6,
        batch_size=8,
        lr=1e-2,
        stage_dir=d,
        ckpt_every=4,
        **kw,
    )
    want, report_want = train(str(tmp_path / "uninterrupted"))
    with pytest.raises(Preempted, match="verifier: checkpointed at step 3"):
        train(str(tmp_path / "preempted"), stop_after=3)
    got, report = train(str(tmp_path / "preempted"))
    init, _ = init_verifier_params(cfg, jax.random.key(0))
    assert not np.allclose(got["value_head"]["kernel"], init["value_head"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert report == report_want  # train/loss_first etc. include the steps before the preemption
    rows = read_jsonl(os.path.join(tmp_path / "preempted", "logs", "verifier.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 7))


def test_evaluation_preempted_resumes_from_its_saved_chunks(tmp_path, monkeypatch):
    """SIGTERMed while sampling its third chunk of prompts, the evaluation raises `Preempted` with two
    chunks saved; the rerun samples only the rest and reports what an uninterrupted evaluation does. (The
    sampler is a deterministic stand-in: what is tested is what is saved and read back.)"""
    import types

    from bon_jax.pipeline import evaluate as evaluate_mod
    from bon_jax.tasks.arith import ArithTask

    task = ArithTask(seed=0, num_train=10, num_validation=0, num_test=30, levels=(1,), kinds=("expr",))
    examples = list(task.examples("test"))[:20]
    tok = types.SimpleNamespace(
        encode_batch=lambda texts, **kw: (np.ones((len(texts), 4), np.int32), np.full(len(texts), 4))
    )
    drawn = []

    def fake_draw(params, cfg, tokenizer, task, scorer, chunk, toks, lens, m, key, *, prompt_ids_B, **kw):
        drawn.append(int(prompt_ids_B[0]))
        if sigterm_at_draw and len(drawn) == sigterm_at_draw:
            os.kill(os.getpid(), signal.SIGTERM)
        r = np.random.default_rng(prompt_ids_B)
        B = len(chunk)
        answers = np.array([[None if a == 3 else str(a) for a in row] for row in r.integers(0, 4, (B, m))])
        lengths = r.integers(1, 9, (B, m))
        token_logp = np.where(np.arange(8) < lengths[..., None], -r.exponential(size=(B, m, 8)), 0.0)
        return types.SimpleNamespace(
            rewards_BM=r.integers(0, 2, (B, m)).astype(np.float32),
            scores_BM=r.normal(size=(B, m)).astype(np.float32),
            answers_BM=answers,
            logp_BM=token_logp.sum(-1).astype(np.float32),
            token_logp_BMT=token_logp.astype(np.float32),
            lengths_BM=lengths,
        )

    monkeypatch.setattr(evaluate_mod, "draw_graded", fake_draw)
    run = lambda **kw: evaluate_mod.evaluate_policy(
        None, None, None, tok, task, None, examples, None, m=4, ks=(1, 2, 4), max_new_tokens=8,
        temperature=1.0, max_prompt_len=8, prompts_per_call=8, bootstrap=50, **kw,
    )  # fmt: skip
    sigterm_at_draw = None
    want = run()
    assert drawn == [0, 8, 16]

    def killed(signum, frame):  # what a SIGTERM that nothing intercepts does: the evaluation dies
        raise Killed

    chunks = str(tmp_path / "chunks")
    previous = signal.signal(signal.SIGTERM, killed)
    try:
        drawn.clear()
        sigterm_at_draw = 2
        with pytest.raises(Preempted, match="eval: 16 of 20 prompts evaluated"):
            run(chunk_dir=chunks)
        drawn.clear()
        sigterm_at_draw = None
        got = run(chunk_dir=chunks)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert drawn == [16]  # the two saved chunks are read back, not sampled again
    assert got == want and want["num_prompts"] == 20
