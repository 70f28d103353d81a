"""The process verifier (`pooling='process'`): per-step targets on the tokens that close each line, the
aggregation of step probabilities against float64 numpy, agreement of the text and token paths, and a
tiny training run that ranks a right completion above a wrong one."""

import random

import numpy as np
import pytest

from bon_jax.models import get_config
from bon_jax.tasks.arith import ArithTask
from bon_jax.tasks.base import Example
from bon_jax.tokenizer import Tokenizer
from bon_jax.verifiers import LearnedVerifier, Samples, train_verifier
from bon_jax.verifiers.steps import (
    newline_table,
    process_logit,
    step_ends,
    step_target_batch,
    step_targets,
)


@pytest.fixture(scope="module")
def arith_task():
    return ArithTask(seed=0, num_train=300, num_validation=0, num_test=50, levels=(1,), kinds=("expr", "linear"))


@pytest.fixture(scope="module")
def tokenizer(arith_task):
    return Tokenizer.train(list(arith_task.corpus("train")), vocab_size=400, hard_vocab_limit=False)


def _closing_tokens_by_prefix_decoding(tokenizer, completion):
    """Reference: index of the token holding line i's newline, by decoding growing prefixes of the ids
    (not the per-token table the code uses); the last line closes at the eos appended after them."""
    ids = tokenizer.encode(completion)
    closing = []
    for j in range(len(ids)):
        before = tokenizer.decode(ids[:j]).count("\n")
        closing += [j] * (tokenizer.decode(ids[: j + 1]).count("\n") - before)
    return ids + [tokenizer.eos_id], closing + [len(ids)]


@pytest.mark.parametrize("completion, labels, outcome", [
    ("4+5=9\n3*9=28\n\\boxed{28}", [True, False, None], False),
    ("12-7=5\n5*3=15\n\\boxed{15}", [True, True, None], True),
    ("7+8=15\n\n15-2=13\n\\boxed{13}", [True, None, True, None], True),  # a blank line: no step, target 1
    ("9+9=17\n17-1=16", [False, True], False),  # no answer line: the last step closes at the eos
])
def test_step_targets_sit_on_the_tokens_that_close_each_line(tokenizer, completion, labels, outcome):
    assert ArithTask.line_labels(completion) == labels
    ids, closing = _closing_tokens_by_prefix_decoding(tokenizer, completion)
    targets = step_targets(ids, newline_table(tokenizer), labels, outcome)
    expected = np.full(len(ids), np.nan)
    ok = [lab is not False for lab in labels]
    for i, t in enumerate(closing[:-1]):
        expected[t] = float(ok[i]) if np.isnan(expected[t]) else float(expected[t] and ok[i])
    expected[-1] = float(outcome and ok[-1])
    np.testing.assert_array_equal(targets, expected)
    # The closing tokens are where `step_ends` looks, from the ids alone.
    ends = np.asarray(step_ends(np.asarray([ids]), np.ones((1, len(ids)), bool), newline_table(tokenizer)))[0]
    np.testing.assert_array_equal(ends, ~np.isnan(expected))


def test_step_target_batch_places_targets_after_the_prompt(arith_task, tokenizer):
    exs = arith_task.examples("train")[:4]
    completions = [e.reference for e in exs[:2]] + [e.reference.replace("=", "=1", 1) for e in exs[2:]]
    labels = [ArithTask.line_labels(c) for c in completions]
    outcomes = [arith_task.grade(e, c).reward for e, c in zip(exs, completions)]
    batch = step_target_batch(tokenizer, newline_table(tokenizer), [e.prompt for e in exs], completions, outcomes,
                              labels, width=64)
    for i, (e, c) in enumerate(zip(exs, completions)):
        start = 1 + len(tokenizer.encode(e.prompt))
        ids, closing = _closing_tokens_by_prefix_decoding(tokenizer, c)
        want = np.zeros(64, np.float32)
        for line, t in enumerate(closing[:-1]):
            want[start + t] = float(labels[i][line] is not False)
        want[start + closing[-1]] = float(outcomes[i])
        np.testing.assert_array_equal(batch["step_target_BT"][i], want)
        assert batch["tokens_BT"][i, start + closing[-1]] == tokenizer.eos_id
    assert batch["step_target_BT"][2:].sum() < batch["step_target_BT"][:2].sum()  # a wrong first step each
    with pytest.raises(ValueError, match="line labels"):
        step_targets(tokenizer.encode(completions[0]) + [tokenizer.eos_id], newline_table(tokenizer),
                     labels[0][:-1], True)
    with pytest.raises(ValueError, match="width"):
        step_target_batch(tokenizer, newline_table(tokenizer), [exs[0].prompt], completions[:1], outcomes[:1],
                          labels[:1], width=16)


def _float64_process_logit(v, ends, last, aggregate, w):
    l = -np.logaddexp(0.0, -np.asarray(v, np.float64))  # log sigmoid
    z = []
    for b in range(v.shape[0]):
        steps = [l[b, t] for t in range(v.shape[1]) if ends[b, t] and not last[b, t]]
        final = [l[b, t] for t in range(v.shape[1]) if last[b, t]]
        if aggregate == "product":
            logp = sum(steps) + w * sum(final)
        else:
            logp = min(steps + (final if w > 0 else []) + [0.0])
        logp = min(logp, -1e-30)
        z.append(logp - np.log(-np.expm1(logp)))
    return np.asarray(z)


@pytest.mark.parametrize("aggregate", ["product", "min"])
@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_process_logit_matches_float64(aggregate, w):
    r = np.random.default_rng(0)
    B, T = 6, 9
    v = r.normal(0, 3, (B, T)).astype(np.float32)
    lengths = r.integers(1, T + 1, B)
    completion = np.arange(T)[None] < lengths[:, None]
    ends = completion & (r.uniform(size=(B, T)) < 0.4)
    last = np.arange(T)[None] == (lengths - 1)[:, None]
    ends |= last
    got = np.asarray(process_logit(v, ends, last, aggregate, w))
    np.testing.assert_allclose(got, _float64_process_logit(v, ends, last, aggregate, w), rtol=1e-5, atol=1e-5)


def _lines(r, n, wrong):
    """n arithmetically right steps `a+b=c` with a, b in 1..3 (a table a tiny model learns in a few
    steps), the one at index `wrong` (if any) off by 5."""
    out = []
    for i in range(n):
        a, b = r.randint(1, 3), r.randint(1, 3)
        out.append(f"{a}+{b}={a + b + (5 if i == wrong else 0)}")
    return out


def test_a_tiny_process_verifier_ranks_a_right_completion_above_a_wrong_one(arith_task, tokenizer):
    """Trained on the oracle's step labels, a tiny verifier scores completions with a wrong step below
    right ones, on new completions and through the sampler's token path too."""
    r = random.Random(0)
    prompts, completions, labels = [], [], []
    for _ in range(256):
        wrong = r.choice([None, 0, 1])
        lines = _lines(r, 2, wrong)
        answer = lines[-1].split("=")[1]
        prompts.append("Problem: add.\nSolution:\n")
        completions.append("\n".join(lines) + "\n\\boxed{" + answer + "}")
        labels.append(float(wrong is None))
    cfg = get_config("tiny", vocab_size=tokenizer.vocab_size, num_layers=2)
    params, metrics = train_verifier(cfg, tokenizer, prompts, completions, np.asarray(labels), steps=150,
                                     batch_size=32, lr=3e-3, warmup=10, width=48, pooling="process",
                                     line_labels=[ArithTask.line_labels(c) for c in completions], progress=False)
    assert metrics["train/loss_last"] < metrics["train/loss_first"]
    verifier = LearnedVerifier(params, cfg, tokenizer, pooling="process")
    pairs = []
    for _ in range(24):
        right = _lines(r, 2, None)
        bad = list(right)
        bad[r.randrange(2)] = _lines(r, 1, 0)[0]
        pairs.append(["\n".join(x) + "\n\\boxed{" + x[-1].split("=")[1] + "}" for x in (right, bad)])
    exs = [Example(id=str(i), prompt="Problem: add.\nSolution:\n") for i in range(len(pairs))]
    z_BM = verifier.score(exs, pairs)
    wins = np.mean(z_BM[:, 0] > z_BM[:, 1])
    assert wins > 0.75, z_BM
    # The token path (what the RL loop scores) agrees with the text path.
    prompt_BT, _ = tokenizer.encode_batch([e.prompt for e in exs], add_bos=True, pad_side="left")
    comp = [[tokenizer.encode(c) + [tokenizer.eos_id] for c in row] for row in pairs]
    Tc = max(len(c) for row in comp for c in row) + 3
    comp_BMT = np.full((len(exs), 2, Tc), 7, np.int32)  # garbage after each completion's length
    len_BM = np.zeros((len(exs), 2), np.int32)
    for b, row in enumerate(comp):
        for i, c in enumerate(row):
            comp_BMT[b, i, : len(c)] = c
            len_BM[b, i] = len(c)
    z_tok = verifier.score(exs, Samples(comp_BMT, len_BM, prompt_BT))
    np.testing.assert_allclose(z_tok, z_BM, rtol=1e-4, atol=1e-4)


def test_config_checks_the_process_options_before_compute():
    from bon_jax.config import base_config, validate
    from bon_jax.errors import ConfigError
    from bon_jax.pipeline.verifier import _stage_section

    c = base_config()
    c.task.name = "arith"
    c.verifier.pooling = "process"
    validate(c)
    assert _stage_section(c.verifier)["process_aggregate"] == "product"
    for key, value, match in (("process_aggregate", "mean", "process_aggregate"),
                              ("process_outcome_weight", -1.0, "process_outcome_weight")):
        bad = base_config()
        bad.task.name = "arith"
        bad.verifier[key] = value
        with pytest.raises(ConfigError, match=match):
            validate(bad)
    c.task.name = "sentiment"  # no step oracle
    with pytest.raises(ConfigError, match="line_labels"):
        validate(c)
    # Another pooling does not read the process options: they stay out of its stage's cache key.
    c.verifier.pooling = "likelihood"
    assert not any(k.startswith("process_") for k in _stage_section(c.verifier))
