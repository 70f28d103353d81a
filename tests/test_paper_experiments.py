"""The paper experiments end to end at toy size: `math_bo32`, `humaneval_pass16` and `imdb_vbon` run as
their files configure them -- objective, tasks, verifier, evaluation task untouched -- on a checkpoint, a
tokenizer and data written here in the real formats (`paper_fixtures`). Only sizes are overridden: steps,
prompts, samples, tokens, the mesh (one device), and the model's dimensions, which the checkpoint written
has. A wiring error (an objective missing an input, a task built with the wrong arguments, evaluation on
the wrong task) fails the run or the assertions on what it logged and summarised.

The checkpoints are steered (`paper_fixtures.steered_params`) so that the policy writes a right answer to
some training prompts about half of the time: rewards vary within a prompt and the objective has a
gradient, as in a real run, so "the tuned params differ from the base" means the objective was fed.
"""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import numpy as np
import pytest
from paper_fixtures import steered_params, train_tokenizer, write_gemma_release, write_math, write_mbpp

from bon_jax.config import load_experiment
from bon_jax.models import get_config
from bon_jax.models.checkpoints import load_checkpoint
from bon_jax.pipeline.policy import load_params
from bon_jax.pipeline.run import run_experiment
from bon_jax.tasks.registry import get_task

pytestmark = pytest.mark.slow

# Gemma-architecture dimensions of the checkpoints written here (the named model's other options kept).
TOY_DIMS = dict(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64)
MATH_ANSWER = "\\boxed{4}"  # one tokenizer piece: the answer of some MATH problems below
MBPP_PROGRAM = "f=lambda*a:a[0]*2"  # one tokenizer piece (no spaces): passes the "double" MBPP problems
IMDB = os.path.join(os.path.dirname(__file__), "data", "imdb_sample")  # aclImdb/ layout
# The sizes every run shares; math_bo32 and humaneval_pass16 also share the model and the prompt width,
# so their sampling compiles once.
COMMON_SIZES = {
    "mesh.fsdp": 1,
    "mesh.data": 1,
    "rl.steps": 2,
    "rl.batch_size": 2,
    "rl.n": 4,
    "rl.m": 4,
    "rl.warmup": 1,
    "rl.max_new_tokens": 12,
    "eval.num_prompts": 2,
    "eval.m": 4,
    "eval.ks": (1, 2, 4),
    "eval.max_new_tokens": 12,
    "eval.bootstrap": 20,
    "log_every": 1,
}
GEMMA2_MAX_LEN = 44  # prompts cut (from the left) to 32 tokens, + 12 new ones


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """MATH (official layout + math500.jsonl), MBPP (mbpp.jsonl) and one sentencepiece tokenizer.model
    trained on their texts and IMDB's, holding the two answer pieces."""
    root = tmp_path_factory.mktemp("inputs")
    math_dir = write_math(
        root / "MATH",
        [
            ("train", "algebra", 1, "2+2", "4", 1),
            ("train", "algebra", 2, "1+3", "4", 1),
            ("train", "prealgebra", 3, "3+3", "6", 2),
            ("train", "prealgebra", 4, "5-1", "4", 1),
            ("test", "algebra", 7, "0+4", "4", 1),
            ("test", "prealgebra", 8, "1+1", "2", 1),
        ],
    )
    double = "def f(x):\n    return 2 * x"
    mbpp = write_mbpp(
        root / "mbpp.jsonl",
        [
            (1, "Write a function to negate a number.", "def n(x):\n    return -x", ["assert n(1) == -1"]),
            # The test split holds "double" problems the steered policy passes: evaluated on them instead of
            # HumanEval, the run would report pass@k > 0.
            (11, "Write a function to double a number.", double, ["assert f(2) == 4"]),
            (12, "Write a function to double an integer.", double, ["assert f(4) == 8"]),
            (511, "Write a function to square.", "def s(x):\n    return x * x", ["assert s(3) == 9"]),
            (601, "Write a function to double a number.", double, ["assert f(3) == 6", "assert f(0) == 0"]),
            (602, "Write a function returning twice its input.", double, ["assert f(5) == 10"]),
            (603, "Write a function to double an integer.", double, ["assert f(7) == 14"]),
            (
                604,
                "Write a function to triple a number.",
                "def t(x):\n    return 3 * x",
                ["assert t(2) == 6"],
            ),
        ],
    )
    tasks = {
        "math": get_task("math", data_dir=str(math_dir), subset="math500"),
        "mbpp": get_task("mbpp", data_dir=str(mbpp)),
        "imdb": get_task("imdb", data_dir=IMDB),
    }
    texts = [e.prompt + e.reference for t in tasks.values() for s in ("train", "test") for e in t.examples(s)]
    tok = train_tokenizer(root / "tokenizer.model", texts, symbols=[MATH_ANSWER, MBPP_PROGRAM])
    return {"root": root, "tokenizer": tok, "math": math_dir, "mbpp": mbpp, "tasks": tasks}


def _set(c, overrides: dict) -> None:
    for key, value in overrides.items():
        *sections, field = key.split(".")
        node = c
        for s in sections:
            node = node[s]
        node[field] = value


def _wiring(c) -> dict:
    """What the toy overrides must leave as the experiment sets it."""
    keys = (
        "task.name",
        "task.kwargs",
        "eval.task",
        "eval.split",
        "verifier.kind",
        "verifier.model",
        "rl.objective",
        "rl.value_baseline",
        "rl.anchor_ema",
        "rl.beta",
        "rl.options",
        "model.name",
        "model.dtype",
        "stages",
        "requires",
    )
    out = {}
    for key in keys:
        node = c
        for part in key.split("."):
            node = node.get(part) if node is not None else None
        out[key] = node.to_dict() if hasattr(node, "to_dict") else node
    return out


def _toy_run(name, tmp_path, inputs, *, data_dir, sizes, steer=None):
    """Writes the checkpoint, then runs experiment `name` as configured, with the inputs' paths and
    `sizes` (nothing else) overridden. Returns (config, summary, fine-tuning log rows, model config)."""
    c = load_experiment(name).get_config()
    wiring = _wiring(c)
    tok = inputs["tokenizer"]
    cfg = get_config(c.model.name, vocab_size=tok.vocab_size, dtype=c.model.dtype, **TOY_DIMS)
    write_gemma_release(tmp_path / "ckpt", cfg, steered_params(cfg, **(steer or {})))
    c.workdir = str(tmp_path / "run")
    c.model.checkpoint = str(tmp_path / "ckpt")
    c.tokenizer.path = str(inputs["root"] / "tokenizer.model")
    c.task.data_dir = str(data_dir)
    c.model.overrides = dict(TOY_DIMS)
    _set(c, {**COMMON_SIZES, **sizes})
    assert _wiring(c) == wiring, "a toy override changed the experiment's wiring"
    summary = run_experiment(c)
    (log_file,) = glob.glob(os.path.join(c.workdir, "stages", "finetune-*", "logs", "finetune.jsonl"))
    with open(log_file) as f:
        log = [json.loads(line) for line in f]
    return c, summary, log, cfg


def _steer(inputs, task: str, answer: str) -> dict:
    """The steering of `paper_fixtures.steered_params` for `task`: its prompts' last token -> `answer`."""
    tok = inputs["tokenizer"]
    examples = [e for s in ("train", "test") for e in inputs["tasks"][task].examples(s)]
    (prompt_end,) = {tok.encode(e.prompt)[-1] for e in examples}
    (answer_id,) = tok.encode(answer)
    return {"prompt_end_id": prompt_end, "answer_id": answer_id}


def _assert_finetuned(c, log, cfg, *, metrics):
    """Every step logged finite values of the objective's `metrics`, a rewarded sample and a gradient,
    and the tuned params moved off the checkpoint's."""
    assert [row["step"] for row in log] == list(range(1, c.rl.steps + 1))
    for row in log:
        for name in ("loss", "grad_norm", "sample/reward_mean", *metrics):
            assert name in row and math.isfinite(row[name]), (name, row)
        assert row["skipped"] == 0, row
    assert max(row["sample/reward_mean"] for row in log) > 0, "no sample was rewarded: nothing to learn"
    assert max(row["grad_norm"] for row in log) > 1e-3, "the objective had no gradient"
    (ft_dir,) = glob.glob(os.path.join(c.workdir, "stages", "finetune-*"))
    tuned = load_params(os.path.join(ft_dir, "params"), cfg)
    base = load_checkpoint(c.model.checkpoint, cfg)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), tuned, base)
    assert max(jax.tree.leaves(moved)) > 0, "fine-tuning left the params as they were"


def _assert_evaluated(c, summary, *, task, families):
    """Both policies evaluated on `task`'s eval split, every metric of `families` finite for each k."""
    assert summary["eval_task"] == {"name": task, "split": c.eval.split}
    assert set(summary["eval"]) == {"base", "tuned"}
    for policy, ev in summary["eval"].items():
        assert (ev["num_prompts"], ev["m"]) == (c.eval.num_prompts, c.eval.m), policy
        for family in families:
            assert sorted(ev[family], key=int) == [str(k) for k in c.eval.ks], (policy, family)
            for entry in ev[family].values():
                assert all(math.isfinite(entry[x]) for x in ("mean", "low", "high")), (policy, family, entry)
        for key in ("mean_reward", "kl"):
            assert math.isfinite(ev[key]["mean"]), (policy, key)
    assert summary["eval"]["base"]["kl"]["mean"] == 0.0  # the base policy is the reference


def test_math_bo32_end_to_end(tmp_path, inputs):
    """Gemma 2 2B architecture, learned verifier (trained on the base policy's graded samples), BoN-RL-V
    with the learned value baseline and the EMA anchor, evaluated on MATH-500."""
    sizes = {
        "model.max_len": GEMMA2_MAX_LEN,
        "verifier.num_prompts": 2,
        "verifier.samples_per_prompt": 4,
        "verifier.steps": 2,
        "verifier.batch_size": 4,
    }
    c, summary, log, cfg = _toy_run(
        "math_bo32",
        tmp_path,
        inputs,
        data_dir=inputs["math"],
        sizes=sizes,
        steer=_steer(inputs, "math", MATH_ANSWER),
    )
    assert summary["verifier"]["count"] > 0 and math.isfinite(summary["verifier"]["train/loss_last"])
    # BoN-RL-V selected by the learned verifier's scores, with its value baseline and the anchor's KL.
    _assert_finetuned(c, log, cfg, metrics=("bon_reward", "kl_anchor", "value/loss", "value/mean"))
    for row in log:  # the objective's baseline is the value model's b(x), not the batch mean of rewards
        assert row["baseline_mean"] == pytest.approx(row["value/mean"], abs=1e-6), row
    _assert_evaluated(c, summary, task="math", families=("bon_at_k", "pass_at_k", "maj_at_k"))


def test_humaneval_pass16_end_to_end(tmp_path, inputs):
    """BoN-RLBP trained on MBPP (graded by its unit tests in the sandbox), pass@k reported on HumanEval."""
    c, summary, log, cfg = _toy_run(
        "humaneval_pass16",
        tmp_path,
        inputs,
        data_dir=inputs["mbpp"],
        sizes={"model.max_len": GEMMA2_MAX_LEN},
        steer=_steer(inputs, "mbpp", MBPP_PROGRAM),
    )
    _assert_finetuned(c, log, cfg, metrics=("pass_at_n", "p_mean"))
    _assert_evaluated(c, summary, task="humaneval", families=("bon_at_k", "pass_at_k"))
    # The policy passes MBPP's "double" problems (train and test alike), and no HumanEval problem.
    assert max(row["sample/pass_at_M"] for row in log) > 0
    for policy, ev in summary["eval"].items():
        assert ev["pass_at_k"]["4"]["mean"] == 0.0, (policy, "evaluated on MBPP, not HumanEval?")


def test_imdb_vbon_end_to_end(tmp_path, inputs):
    """vBoN on IMDB prefixes with the sentiment scorer; the reward CDFs from cached reference samples."""
    from bon_jax.objectives.variational import min_ref_samples

    sizes = {
        "model.max_len": 32,
        "rl.ref_samples": min_ref_samples(4),
        # M = the reference-sample chunk (finetune.REF_CHUNK) and eval.m alike: one sampling compile.
        "rl.m": 32,
        "eval.m": 32,
    }
    c, summary, log, cfg = _toy_run("imdb_vbon", tmp_path, inputs, data_dir=IMDB, sizes=sizes)
    _assert_finetuned(c, log, cfg, metrics=("log_g_mean", "kl_to_bon"))
    _assert_evaluated(c, summary, task="imdb", families=("bon_at_k",))
    (ref_file,) = glob.glob(os.path.join(c.workdir, "stages", "reference_samples-*", "reference_samples.npz"))
    with np.load(ref_file) as z:
        assert z["rewards_PK"].shape[1] == c.rl.ref_samples  # K samples of pi_ref per training prompt
        assert len(z["ids_P"]) >= c.rl.batch_size
