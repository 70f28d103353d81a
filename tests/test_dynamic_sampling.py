"""Dynamic sampling in the fine-tuning stage (`rl.dynamic_sampling`, issue 15 item 1): a step trains on
prompts whose M rewards are not all equal when enough exist, every field of a kept prompt's samples stays
with it, and a preempted run resumes to the parameters of an uninterrupted one.

The pipeline tests use the tiny model (random init) on `arith` with a stand-in grader: prompts whose index
in the training set is even are "always right" (every sample rewarded 1: uninformative), odd ones reward
every other sample (informative), so which prompts are informative is known exactly."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from smoke import smoke_config

from bon_jax import config as config_mod
from bon_jax.errors import ConfigError
from bon_jax.models import get_config, init_params
from bon_jax.pipeline import dynamic_sampling as DS
from bon_jax.pipeline import finetune as F
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.policy import task_corpus
from bon_jax.pipeline.rollouts import GradedSamples
from bon_jax.tasks.arith import ArithTask
from bon_jax.tokenizer import Tokenizer
from bon_jax.train.loop import Preempted
from bon_jax.verifiers import completion_texts

# ---------------------------------------------------------------- row selection


def _graded(B, M=3, T=4, width=5, start=0):
    """GradedSamples whose every field, at every row b, encodes the prompt number start + b."""
    p = start + np.arange(B)
    lengths_B = (p % width) + 1
    tokens_BT = np.where(np.arange(width) >= width - lengths_B[:, None], 100 + p[:, None], 0).astype(np.int32)
    per_BM = lambda scale: (scale * p[:, None] + np.arange(M)).astype(np.float32)
    return GradedSamples(
        prompt_tokens_BT=tokens_BT,
        prompt_lengths_B=lengths_B.astype(np.int32),
        tokens_BMT=(1000 * p[:, None, None] + 10 * np.arange(M)[:, None] + np.arange(T)).astype(np.int32),
        lengths_BM=(p[:, None] + np.arange(M)).astype(np.int32),
        logp_BM=-per_BM(2.0),
        token_logp_BMT=-(p[:, None, None] + 0.01 * np.arange(M * T).reshape(M, T)).astype(np.float32),
        texts_BM=[[f"p{q}s{j}" for j in range(M)] for q in p],
        rewards_BM=per_BM(3.0),
        answers_BM=np.array([[f"a{q}.{j}" for j in range(M)] for q in p], dtype=object),
        scores_BM=per_BM(5.0),
        finished_BM=((p[:, None] + np.arange(M)) % 2 == 0),
    )


def _assert_rows(got: GradedSamples, want: GradedSamples, rows):
    """Row k of every field of `got` is row rows[k] of `want` (prompts compared without left padding)."""
    for f in dataclasses.fields(GradedSamples):
        g, w = getattr(got, f.name), getattr(want, f.name)
        assert len(g) == len(rows), f.name
        for k, r in enumerate(rows):
            if f.name == "prompt_tokens_BT":
                n = int(want.prompt_lengths_B[r])
                np.testing.assert_array_equal(g[k][-n:], w[r][-n:])
                assert not np.any(g[k][:-n]), "left padding"
            else:
                np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(w[r]), err_msg=f.name)


def test_take_rows_keeps_every_field_of_a_prompt_together():
    g = _graded(5)
    rows = [3, 0, 3, 4]
    _assert_rows(DS.take_rows(g, rows), g, rows)
    with pytest.raises(IndexError, match="outside the 5 prompts"):
        DS.take_rows(g, [5])
    bad = dataclasses.replace(g, texts_BM=g.texts_BM[:4])
    with pytest.raises(ValueError, match="texts_BM has 4 rows"):
        DS.take_rows(bad, [0])


def test_concat_rows_pads_prompts_on_the_left_and_keeps_rows_aligned():
    a, b = _graded(3, width=3), _graded(2, width=6, start=3)
    both = DS.concat_rows([a, b], pad_id=0)
    assert both.prompt_tokens_BT.shape == (5, 6)
    _assert_rows(both, _graded(5, width=6), range(5))
    with pytest.raises(ValueError, match="tokens_BMT"):
        DS.concat_rows([a, _graded(2, T=7)], pad_id=0)


def test_unscored_samples_stay_unscored_through_take_and_concat():
    """Rounds are drawn unscored (the verifier scores only the kept prompts): None passes through; a mix of
    scored and unscored parts is refused."""
    a, b = (dataclasses.replace(x, scores_BM=None) for x in (_graded(3), _graded(2, start=3)))
    assert DS.take_rows(a, [2, 0]).scores_BM is None
    both = DS.concat_rows([a, b], pad_id=0)
    assert both.scores_BM is None and both.rewards_BM.shape == (5, 3)
    with pytest.raises(ValueError, match="scores_BM is filled in some parts and None in others"):
        DS.concat_rows([a, _graded(2, start=3)], pad_id=0)


def test_batch_rows_takes_informative_prompts_first_then_fills_in_draw_order():
    assert DS.informative_B(np.array([[1, 1], [0, 1], [0, 0], [2.5, 2.5]])).tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert not DS.informative_B(np.array([[1.0], [0.0]])).any()  # one sample: never informative
    np.testing.assert_array_equal(DS.batch_rows([[False, True, False], [True, True, False]], 3), [1, 3, 4])
    np.testing.assert_array_equal(DS.batch_rows([[False, True, False], [False, False, True]], 3), [1, 5, 0])


def _round(start, width):
    """What the stand-in draw returns for the 3 prompts start, start + 1, start + 2 (M = 2): prompt q's
    rewards are (q, q + 0.5) where q % 3 == 1 (informative), else (q, q)."""
    g = _graded(3, M=2, width=width, start=start)
    q = (start + np.arange(3)).astype(np.float32)
    return dataclasses.replace(g, rewards_BM=np.stack([q, q + 0.5 * (q % 3 == 1)], 1))


def test_draw_informative_keeps_every_field_with_its_prompt_across_rounds():
    """Rounds of 3 prompts (ids 0, 1, 2, then 3, 4, 5, ...), prompt widths varying between rounds. Round r's
    draw gets fold_in(key, r) (r >= 1), round 0 the key itself."""
    width = lambda s: 2 + s % 4

    def stream():
        for s in range(0, 300, 3):
            g = _round(s, width(s))
            yield {
                "prompt_tokens_BT": g.prompt_tokens_BT,
                "prompt_lengths_B": g.prompt_lengths_B,
                "index_B": np.arange(s, s + 3),
            }

    seen_keys = []

    def draw(batch, k):
        seen_keys.append(jax.random.key_data(k))
        return _round(int(batch["index_B"][0]), batch["prompt_tokens_BT"].shape[1])

    key = jax.random.key(7)
    it = stream()
    kept, g, m = DS.draw_informative(lambda: next(it), draw, key, rounds=5, pad_id=0)
    np.testing.assert_array_equal(kept["index_B"], [1, 4, 7])  # one informative prompt per round
    assert m == {
        "sample/informative_frac": 1 / 3,
        "sample/informative_batch_frac": 1.0,
        "sample/draw_rounds": 3.0,
        "sample/draw_prompts": 9.0,
    }
    everything = DS.concat_rows([_round(s, width(s)) for s in (0, 3, 6)], pad_id=0)
    _assert_rows(g, everything, [1, 4, 7])
    np.testing.assert_array_equal(kept["prompt_tokens_BT"], g.prompt_tokens_BT)
    np.testing.assert_array_equal(kept["prompt_lengths_B"], g.prompt_lengths_B)
    want_keys = [jax.random.key_data(key)] + [jax.random.key_data(jax.random.fold_in(key, r)) for r in (1, 2)]
    np.testing.assert_array_equal(np.stack(seen_keys), np.stack(want_keys))

    # Too few rounds: completed with uninformative prompts in draw order; rounds = 0 is the plain draw.
    it = stream()
    kept, g, m = DS.draw_informative(lambda: next(it), draw, key, rounds=1, pad_id=0)
    np.testing.assert_array_equal(kept["index_B"], [1, 4, 0])
    _assert_rows(g, DS.concat_rows([_round(0, 2), _round(3, 5)], pad_id=0), [1, 4, 0])
    assert m["sample/informative_batch_frac"] == pytest.approx(2 / 3) and m["sample/draw_rounds"] == 2.0
    it = stream()
    kept, g, m = DS.draw_informative(lambda: next(it), draw, key, rounds=0, pad_id=0)
    np.testing.assert_array_equal(kept["index_B"], [0, 1, 2])
    _assert_rows(g, _round(0, 2), [0, 1, 2])
    assert m["sample/draw_rounds"] == 1.0


def test_verifier_miss_is_a_top_scored_pick_worse_than_the_best_sample():
    rewards = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 1], [0.5, 1, 0]], np.float32)
    scores = np.array([[3, 2, 1], [1, 3, 2], [1, 3, 2], [2, 2, 1], [2, 2, 2], [5, 1, 0]], np.float32)
    # picked right / wrong while one is right / all wrong / tie of two right / tie of all three (mean 2/3 < 1)
    # / picked 0.5 of a best 1
    assert DS.verifier_miss_B(rewards, scores).tolist() == [False, True, False, False, True, True]
    g = dataclasses.replace(_graded(6), rewards_BM=rewards, scores_BM=scores)
    assert DS.levels_B(g, "verifier_misses").tolist() == [1, 2, 0, 1, 2, 2]
    assert DS.levels_B(g, "mixed_rewards").tolist() == [1, 1, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="needs the samples' verifier scores"):
        DS.levels_B(dataclasses.replace(g, scores_BM=None), "verifier_misses")
    with pytest.raises(ValueError, match="target must be one of"):
        DS.levels_B(g, "misses")


def test_cap_misses_demotes_the_misses_after_the_cap_in_draw_order():
    got = DS.cap_misses([np.array([2, 0, 2]), np.array([1, 2, 2])], 3)
    assert [v.tolist() for v in got] == [[2, 0, 2], [1, 2, 1]]
    np.testing.assert_array_equal(DS.batch_rows(got, 4), [0, 2, 4, 3])


def _miss_round(start, M=2):
    """Prompt q (M = 2): rewards (1, 0); scores rank sample 1 first (a verifier miss) where q % 3 == 0, sample
    0 first where q % 3 == 1 (right pick, informative), and rewards (0, 0) where q % 3 == 2 (uninformative)."""
    g = _graded(3, M=M, start=start)
    q = start + np.arange(3)
    rewards = np.stack([(q % 3 != 2).astype(np.float32), np.zeros(3, np.float32)], 1)
    scores = np.stack([(q % 3 == 1).astype(np.float32), (q % 3 == 0).astype(np.float32)], 1)
    return dataclasses.replace(g, rewards_BM=rewards, scores_BM=scores)


def _miss_stream():
    for s in range(0, 300, 3):
        g = _miss_round(s)
        yield {"prompt_tokens_BT": g.prompt_tokens_BT, "prompt_lengths_B": g.prompt_lengths_B, "index_B": np.arange(s, s + 3)}


@pytest.mark.parametrize(
    "share, want_ids, want_rounds",
    [
        (1.0, [0, 3, 6], 3.0),  # every kept prompt a miss: one a round, three rounds
        (0.5, [0, 3, 1], 2.0),  # two misses (ceil(1.5)), then the first other informative prompt
        (0.1, [0, 1, 3], 2.0),  # one miss, then the informative prompts in draw order (a second miss among them)
    ],
)
def test_draw_informative_gives_the_verifier_misses_their_share_of_the_batch(share, want_ids, want_rounds):
    it = _miss_stream()
    draw = lambda batch, k: _miss_round(int(batch["index_B"][0]))
    kept, g, m = DS.draw_informative(
        lambda: next(it), draw, jax.random.key(0), rounds=5, pad_id=0, target="verifier_misses", miss_share=share
    )
    np.testing.assert_array_equal(kept["index_B"], want_ids)
    _assert_rows(g, DS.concat_rows([_miss_round(s) for s in range(0, 3 * int(want_rounds), 3)], pad_id=0), want_ids)
    assert m["sample/draw_rounds"] == want_rounds
    assert m["sample/verifier_miss_frac"] == pytest.approx(1 / 3)
    assert m["sample/verifier_miss_batch_frac"] == pytest.approx(np.mean([i % 3 == 0 for i in want_ids]))
    with pytest.raises(ValueError, match="miss_share must be in"):
        DS.draw_informative(lambda: next(it), draw, jax.random.key(0), rounds=1, pad_id=0, miss_share=0.0)


def _per_prompt_stream(seed, B, M=4, width=6):
    """(next_batch, draw, drawn (id, key) pairs) over prompts whose samples are a function of the prompt id alone, as the
    sampler's (it seeds each prompt's samples by its id): rewards and scores from a per-id generator, so a
    prompt draws the same samples in any chunk of its batch. About 70% of prompts are informative, some
    of them verifier misses."""
    drawn = []

    def samples(ids):
        rng = [np.random.default_rng([seed, int(q)]) for q in ids]
        rewards = np.stack([(r.random(M) < r.choice([0.0, 0.5, 1.0], p=[0.15, 0.7, 0.15])) for r in rng])
        scores = np.stack([r.normal(size=M) for r in rng]).astype(np.float32)
        per_id = _graded_rows(ids, M, width)
        return dataclasses.replace(per_id, rewards_BM=rewards.astype(np.float32), scores_BM=scores)

    def stream():
        for s in range(0, 10_000, B):
            ids = np.arange(s, s + B)
            g = _graded_rows(ids, M, width)
            yield {"prompt_tokens_BT": g.prompt_tokens_BT, "prompt_lengths_B": g.prompt_lengths_B, "index_B": ids}

    it = stream()

    def draw(batch, k):  # what each prompt was drawn with: its id and the draw's key
        drawn.extend((q, tuple(np.asarray(jax.random.key_data(k)).tolist())) for q in batch["index_B"].tolist())
        return samples(batch["index_B"])

    return (lambda: next(it)), draw, drawn


def _graded_rows(ids, M, width):
    """`_graded` of the prompts `ids` (not necessarily consecutive): every field of row b encodes ids[b]."""
    parts = [_graded(1, M=M, width=width, start=int(q)) for q in ids]
    return DS.concat_rows(parts, pad_id=0)


@pytest.mark.parametrize("target, share", [("mixed_rewards", 1.0), ("verifier_misses", 0.5)])
@pytest.mark.parametrize("seed", range(6))
def test_extra_rounds_drawn_in_chunks_keep_the_batch_of_whole_rounds(seed, target, share):
    """issue 14: an extra round drawn a chunk at a time, stopping once nothing is short, keeps the same
    prompts and samples as drawing the whole round, and draws fewer prompts."""
    B = 8
    want_next, want_draw, want_drawn = _per_prompt_stream(seed, B)
    kw = dict(rounds=3, pad_id=0, target=target, miss_share=share)
    want_kept, want_g, want_m = DS.draw_informative(want_next, want_draw, jax.random.key(seed), **kw)
    for chunk in (1, 2, 3, B):
        nxt, draw, drawn = _per_prompt_stream(seed, B)
        kept, g, m = DS.draw_informative(nxt, draw, jax.random.key(seed), chunk=chunk, **kw)
        np.testing.assert_array_equal(kept["index_B"], want_kept["index_B"])
        _assert_rows(g, want_g, range(B))
        assert {k: v for k, v in m.items() if k != "sample/draw_prompts"} == {
            k: v for k, v in want_m.items() if k != "sample/draw_prompts"}
        assert m["sample/draw_prompts"] == len(drawn) <= len(want_drawn) == want_m["sample/draw_prompts"]
        assert drawn == want_drawn[: len(drawn)]  # a prefix of the whole rounds' draws, keys included
        if chunk == 1 and want_m["sample/draw_rounds"] > 1:
            assert len(drawn) < len(want_drawn)
    with pytest.raises(ValueError, match="chunk must be a positive integer"):
        DS.draw_informative(want_next, want_draw, jax.random.key(0), chunk=0, **kw)


def test_the_stage_key_reads_the_miss_target_only_where_it_changes_training():
    c = config_mod.base_config()
    c.rl.dynamic_sampling = 2
    default = F._stage_section(c.rl)
    assert "dynamic_sampling_target" not in default and "dynamic_sampling_miss_share" not in default
    c.rl.dynamic_sampling_miss_share = 0.25  # read only with the misses target: the same stage
    assert F._stage_section(c.rl) == default
    c.rl.dynamic_sampling_target = "verifier_misses"
    assert F._stage_section(c.rl)["dynamic_sampling_miss_share"] == 0.25


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("value, message", [(-1, "integer >= 0"), (True, "integer >= 0")])
def test_bad_dynamic_sampling_is_refused_naming_the_key(value, message):
    c = config_mod.base_config()
    c.rl.dynamic_sampling = value
    with pytest.raises(ConfigError, match=message) as err:
        config_mod.validate(c)
    assert err.value.key == "rl.dynamic_sampling"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rl.dynamic_sampling_target": "misses"}, "must be 'mixed_rewards' or 'verifier_misses'"),
        ({"rl.dynamic_sampling_target": "verifier_misses", "rl.objective": "kl_rl", "rl.n": 1}, "picks its Best-of-N winner by the verifier"),
        ({"rl.dynamic_sampling_target": "verifier_misses", "rl.dynamic_sampling": 0}, "set rl.dynamic_sampling >= 1"),
        ({"rl.dynamic_sampling_miss_share": 0.0}, r"in \(0, 1\]"),
        ({"rl.dynamic_sampling_miss_share": 1.5}, r"in \(0, 1\]"),
    ],
)
def test_bad_miss_target_is_refused_naming_the_key(overrides, message):
    c = config_mod.base_config()
    c.rl.objective, c.rl.dynamic_sampling, c.rl.n, c.rl.m = "bon_rl_v", 2, 4, 4
    config_mod.validate(c)  # valid before the overrides
    for key, value in overrides.items():
        c.rl[key.split(".")[1]] = value
    with pytest.raises(ConfigError, match=message) as err:
        config_mod.validate(c)
    assert err.value.key.startswith("rl.dynamic_sampling")


def test_dynamic_sampling_needs_two_samples_per_prompt():
    c = config_mod.base_config()
    c.rl.dynamic_sampling, c.rl.m, c.rl.n = 2, 1, 1
    with pytest.raises(ConfigError, match="rl.m >= 2"):
        config_mod.validate(c)
    c.rl.m = 2
    config_mod.validate(c)


# ---------------------------------------------------------------- the fine-tuning stage

NUM_TRAIN = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    c = smoke_config(tmp_path_factory.mktemp("tok"))
    task = ArithTask(**c.task.kwargs.to_dict())
    tok = Tokenizer.train(
        task_corpus(task), vocab_size=c.tokenizer.vocab_size, model_type=c.tokenizer.model_type
    )
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    return tok, cfg, init_params(cfg, jax.random.key(0))


class _LengthVerifier:
    def score(self, examples_B, samples):
        return np.array([[float(len(t) % 5) for t in row] for row in completion_texts(samples)], np.float32)


@pytest.fixture(scope="module")
def graded_by_parity():
    """Even-indexed training prompts: every sample right; odd ones: samples 0, 2, ... right. The objective
    additionally logs `test/all_equal_frac`, the fraction of the batch's prompts whose rewards it receives
    all equal (what the update sees, not what the host says it sent)."""
    index = {}

    def grade_batch(self, examples_B, texts_BM):
        if not index:
            index.update({e.prompt: i for i, e in enumerate(self.examples("train"))})
        grades = real_grade(self, examples_B, texts_BM)
        rewards = [
            [1.0 if index[e.prompt] % 2 == 0 else float(j % 2 == 0) for j in range(len(row))]
            for e, row in zip(examples_B, texts_BM)
        ]
        return dataclasses.replace(grades, rewards_BM=np.asarray(rewards, np.float32))

    real_grade, real_get = ArithTask.grade_batch, F.objectives.get

    def get(name):
        fn = real_get(name)

        def wrapped(logp_BM, rollout, **kwargs):
            loss, metrics = fn(logp_BM, rollout, **kwargs)
            r = rollout.rewards_BM
            all_equal = jnp.all(r == r[:, :1], axis=1)
            return loss, dict(metrics, **{"test/all_equal_frac": jnp.mean(all_equal.astype(jnp.float32))})

        return wrapped

    mp = pytest.MonkeyPatch()
    mp.setattr(ArithTask, "grade_batch", grade_batch)
    mp.setattr(F.objectives, "get", get)
    yield
    mp.undo()


STEPS = 3


def _run(toy, root, name, *, stop_after=None, **overrides):
    """finetune_stage of kl_rl (RLOO) for STEPS steps of 2 prompts x 2 samples, checkpointing every 2
    steps; with `stop_after`, preempted after that many steps and rerun. Returns (params, logged rows)."""
    tok, cfg, params = toy
    kw = {
        "rl.objective": "kl_rl",
        "rl.n": 1,
        "rl.m": 2,
        "rl.steps": STEPS,
        "rl.batch_size": 2,
        "rl.max_new_tokens": 4,
        "rl.lr": 1e-2,
        "rl.warmup": 0,
        "checkpoint.every": 2,
        **overrides,
    }
    c = smoke_config(root, name=name, **kw)
    c.task.kwargs.update(num_train=NUM_TRAIN)
    c.log_every = 1
    config_mod.validate(c)
    stage = lambda **kw: F.finetune_stage(
        RunContext(c, shared_cache_root=str(root / name)),
        tok,
        cfg,
        params,
        "base",
        _LengthVerifier(),
        "v",
        **kw,
    )
    if stop_after is not None:
        with pytest.raises(Preempted, match=f"at step {stop_after}"):
            stage(stop_after=stop_after)
    tuned, st = stage()
    with open(os.path.join(st.path, "logs", "finetune.jsonl")) as f:
        return tuned, [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def dynamic_run(toy, tmp_path_factory, graded_by_parity):
    return _run(toy, tmp_path_factory.mktemp("dynamic"), "uninterrupted", **{"rl.dynamic_sampling": 3})


@pytest.mark.slow
def test_dynamic_sampling_trains_on_informative_prompts_only(toy, tmp_path, graded_by_parity, dynamic_run):
    """Half the prompts are informative, so 3 extra rounds of 2 prompts always find 2 (8 prompts in a
    shuffled epoch of 8 hold 4); without dynamic sampling some step trains on an all-right group."""
    _, off = _run(toy, tmp_path, "off")
    assert any(r["test/all_equal_frac"] > 0 for r in off)
    assert [r["sample/draw_rounds"] for r in off] == [1.0] * STEPS
    assert [r["sample/informative_frac"] for r in off] == [1 - r["test/all_equal_frac"] for r in off]
    _, on = dynamic_run
    assert [r["test/all_equal_frac"] for r in on] == [0.0] * STEPS
    assert [r["sample/informative_batch_frac"] for r in on] == [1.0] * STEPS
    assert any(r["sample/draw_rounds"] > 1 for r in on)
    # The first draw of step 0 is the plain run's: same prompts, same key.
    assert on[0]["sample/informative_frac"] == off[0]["sample/informative_frac"]


@pytest.mark.slow
def test_dynamic_sampling_resumes_to_the_uninterrupted_runs_parameters(
    toy, tmp_path, graded_by_parity, dynamic_run
):
    """Preempted after step 1: the restart must continue the data iterator after the extra batches step 1
    pulled (they are part of the checkpointed iterator state), and draw with the same round keys."""
    want, rows = dynamic_run
    got, rows_resumed = _run(toy, tmp_path, "resumed", stop_after=1, **{"rl.dynamic_sampling": 3})
    # Extra batches were pulled before the preemption and after it (else the test could not fail).
    assert rows[0]["sample/draw_rounds"] > 1 and rows[1]["sample/draw_rounds"] > 1
    assert (
        max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(toy[2])))
        > 0
    )
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert [r["loss"] for r in rows_resumed] == [r["loss"] for r in rows]


@pytest.mark.slow
def test_the_verifier_misses_target_trains_on_misses_the_first_draw_lacks(toy, tmp_path, graded_by_parity):
    """bon_rl_v (N' = M = 2), the length verifier, odd prompts (one right sample of two) the only informative
    ones: every drawn prompt is scored, so the kept batch holds misses (its share 1.0 of 2 prompts) at least
    as often as the step's first draw does, and more often over the run."""
    kw = {
        "rl.objective": "bon_rl_v",
        "rl.n": 2,
        "rl.dynamic_sampling": 3,
        "rl.dynamic_sampling_target": "verifier_misses",
        "rl.dynamic_sampling_miss_share": 1.0,
    }
    _, rows = _run(toy, tmp_path, "misses", **kw)
    first = [r["sample/verifier_miss_frac"] for r in rows]
    kept = [r["sample/verifier_miss_batch_frac"] for r in rows]
    assert all(k >= f for k, f in zip(kept, first)) and sum(kept) > sum(first), (first, kept)


# ---------------------------------------------------------------- why: docs/objectives.md, "Dynamic sampling"


def _all_equal_grad(name, value, M=4):
    """d loss / d logp_BM of one prompt whose M rewards all equal `value` (beta = 0, no anchor)."""
    from bon_jax import objectives
    from bon_jax.objectives import Rollout

    spec = objectives.spec(name)
    rollout = {"rewards_BM": jnp.full((1, M), value), "scores_BM": jnp.asarray([[0.1, 0.5, 0.3, 0.2]])}
    if spec.reference_samples:
        rollout |= {
            "ref_rewards_BK": jnp.asarray([[0.0, 1, 0, 1, 0, 1]]),
            "ref_scores_BK": jnp.zeros((1, 6)),
            "ref_logp_BM": jnp.zeros((1, M)),
        }
    extra = {"expert_logp_B": jnp.zeros((1,))} if spec.demonstrations else {}
    loss = lambda lp: objectives.get(name)(lp, Rollout(**rollout), n=2, beta=0.0, **extra)[0]
    return np.asarray(jax.grad(loss)(jnp.zeros((1, M))))


@pytest.mark.parametrize("name", ["kl_rl", "bon_rl", "pkpo", "vbon", "vbon_bound", "bond"])
def test_an_all_equal_group_weighs_nothing_in_group_baselined_objectives(name):
    for value in (0.0, 1.0):  # 0 up to float32 rounding (vbon's log G terms)
        np.testing.assert_allclose(_all_equal_grad(name, value), 0.0, atol=1e-6)


def test_an_all_wrong_group_weighs_most_in_bon_rlb():
    """The documented exception: at the p clip (p = 0.99) bon_rlb weighs each sample u_j N p / (1 - p)."""
    np.testing.assert_allclose(np.abs(_all_equal_grad("bon_rlb", 0.0)), 0.25 * 2 * 0.99 / 0.01, rtol=1e-5)
    np.testing.assert_array_equal(_all_equal_grad("bon_rlbp", 0.0), 0.0)
