"""Training on one task and evaluating on another (config `eval.task`, `RunContext.eval_task`), and the
task configs refused before any compute: Chow et al.'s HumanEval pass@k of a policy trained on MBPP."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from bon_jax.config import base_config, load_experiment, task_arguments, validate
from bon_jax.errors import ConfigError, DataError
from bon_jax.pipeline import run as run_mod
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.run import run_experiment
from bon_jax.tasks.code import HumanEvalTask, MBPPTask

MBPP_SAMPLE = Path(__file__).parent / "data" / "mbpp_sample.jsonl"


def _mbpp_config(tmp_path, data_dir=MBPP_SAMPLE):
    c = base_config()
    c.name = "mbpp_to_humaneval"
    c.workdir = str(tmp_path / "run")
    c.task.name = "mbpp"
    c.task.data_dir = str(data_dir)
    c.verifier.kind = "oracle"
    return c


def test_mbpp_task_is_built_from_the_config_data_dir(tmp_path):
    """`task.data_dir` reaches MBPPTask (the old RunContext passed data_dir=, MBPPTask wanted path)."""
    c = _mbpp_config(tmp_path)
    ctx = RunContext(c)
    assert isinstance(ctx.task, MBPPTask) and ctx.task.path == str(MBPP_SAMPLE)
    assert [e.id for e in ctx.task.examples("train")] == ["MBPP/601", "MBPP/602"]
    # A directory holding mbpp.jsonl names the file as well.
    shutil.copy(MBPP_SAMPLE, tmp_path / "mbpp.jsonl")
    assert MBPPTask(tmp_path).path == str(tmp_path / "mbpp.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without mbpp.jsonl"):
        MBPPTask(tmp_path / "empty")


def test_eval_task_defaults_to_the_training_task_and_can_differ(tmp_path):
    c = _mbpp_config(tmp_path)
    ctx = RunContext(c)
    assert ctx.eval_task is ctx.task
    c.eval.task.name = "humaneval"
    c.eval.task.kwargs = {"timeout_s": 3.0}
    validate(c)
    ctx = RunContext(c)
    assert isinstance(ctx.eval_task, HumanEvalTask) and isinstance(ctx.task, MBPPTask)
    assert ctx.eval_task.timeout_s == 3.0 and len(ctx.eval_task.examples("test")) == 164
    assert task_arguments(c.task) == {"data_dir": str(MBPP_SAMPLE)}


def test_humaneval_pass16_trains_on_mbpp_and_evaluates_on_humaneval(tmp_path):
    c = load_experiment("humaneval_pass16").get_config()
    for key in ("model", "tokenizer"):
        (tmp_path / key).write_text("")
    c.model.checkpoint, c.tokenizer.path = str(tmp_path / "model"), str(tmp_path / "tokenizer")
    c.task.data_dir = str(MBPP_SAMPLE)
    validate(c)
    assert (c.task.name, c.eval.task.name, c.eval.split) == ("mbpp", "humaneval", "test")
    ctx = RunContext(c)
    assert isinstance(ctx.task, MBPPTask) and isinstance(ctx.eval_task, HumanEvalTask)


@pytest.mark.parametrize(
    "change, key, message",
    [
        (lambda c: setattr(c.task, "name", "mbbp"), "task.name", "unknown task 'mbbp'"),
        (lambda c: setattr(c.eval.task, "name", "human_eval"), "eval.task.name", "unknown task 'human_eval'"),
        (lambda c: setattr(c.task, "data_dir", ""), "task.data_dir", "is not set; task 'mbpp' reads"),
        (lambda c: setattr(c.eval.task, "name", "mbpp"), "eval.task.data_dir", "is not set"),
        (
            lambda c: (setattr(c.eval.task, "name", "humaneval"), setattr(c.eval.task, "data_dir", "/")),
            "eval.task.data_dir",
            "reads no local data",
        ),
        (lambda c: c.task.kwargs.update({"chalenge_tests": True}), "task.kwargs", "chalenge_tests"),
        (
            lambda c: setattr(c.eval.task, "data_dir", "/nonexistent/mbpp.jsonl"),
            "eval.task.data_dir",
            "not exist",
        ),
        (
            lambda c: (setattr(c.eval.task, "name", "humaneval"), setattr(c.eval, "split", "validation")),
            "eval.split",
            r"task 'humaneval' has splits \('test',\), not 'validation'",
        ),
        (
            lambda c: (setattr(c.task, "name", "humaneval"), setattr(c.task, "data_dir", "")),
            "task.name",
            "no train split to fine-tune on",
        ),
    ],
)
def test_bad_task_configs_are_refused_by_validate(tmp_path, change, key, message):
    c = _mbpp_config(tmp_path)
    change(c)
    with pytest.raises(ConfigError, match=message) as info:
        validate(c)
    assert key in str(info.value)


def test_a_bad_data_file_fails_before_any_stage_runs(tmp_path, monkeypatch):
    """The data is read right after validation, before the tokenizer or a checkpoint is touched."""
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text(MBPP_SAMPLE.read_text().replace('"task_id": 601', '"task_id": "601"'))

    def computed(*args, **kwargs):
        raise AssertionError("a stage ran before the data was read")

    monkeypatch.setattr(run_mod, "tokenizer_stage", computed)
    monkeypatch.setattr(run_mod, "base_policy_stage", computed)
    with pytest.raises(DataError, match="task_id must be an integer"):
        run_experiment(_mbpp_config(tmp_path, data_dir=bad))


def test_the_eval_stage_and_report_use_the_eval_task(tmp_path, monkeypatch, capsys):
    """The run evaluates on `eval.task` (HumanEval test), not the training task's split (MBPP test).

    The model stages are stubbed (they are exercised elsewhere; the paper experiments' toy runs go end to
    end): what is checked is which task and prompts reach the evaluation and what the report names.
    """
    c = _mbpp_config(tmp_path)
    c.eval.task.name = "humaneval"
    c.eval.num_prompts = 3
    c.rl.steps = 0
    fake_stage = lambda key: SimpleNamespace(key=key, path=key, done=False, result=lambda: {})
    monkeypatch.setattr(run_mod, "tokenizer_stage", lambda ctx: (object(), fake_stage("tok")))
    monkeypatch.setattr(run_mod, "base_policy_stage", lambda ctx, *a, **k: (None, {}, fake_stage("base")))
    monkeypatch.setattr(run_mod, "verifier_stage", lambda ctx, *a, **k: (None, fake_stage("verifier")))
    seen = []

    def evaluate(params, model_cfg, ref_params, tokenizer, task, scorer, examples, rng, **kwargs):
        seen.append((task, [e.id for e in examples]))
        entry = {"mean": 0.5, "low": 0.0, "high": 1.0}
        return {
            "num_prompts": len(examples),
            "m": kwargs["m"],
            "pass_at_k": {"1": entry},
            "mean_reward": entry,
        }

    monkeypatch.setattr(run_mod, "evaluate_policy", evaluate)
    summary = run_experiment(c)
    ((task, ids),) = seen
    assert isinstance(task, HumanEvalTask)
    assert ids == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert summary["eval_task"] == {"name": "humaneval", "split": "test"}
    assert "evaluation on humaneval test (trained on mbpp)" in capsys.readouterr().out
