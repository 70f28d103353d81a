"""TFDS array_record builders read back with tfds.data_source (no TensorFlow), and the grain pipeline."""

import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import grain
import numpy as np
import pytest

from bon_jax.data import sources
from bon_jax.data.pipeline import PromptBatches
from bon_jax.errors import DataError
from bon_jax.tasks.base import Example, Grade, Task
from bon_jax.tasks.imdb import ImdbTask
from bon_jax.tasks.math import MathTask
from bon_jax.tokenizer import PAD_ID, Tokenizer

DATA = Path(__file__).parent / "data"
MATH_OFFICIAL = DATA / "math_sample" / "official"
IMDB = DATA / "imdb_sample"
REPO = Path(__file__).parent.parent


class ToyTask(Task):
    name = "toy"
    splits = ("train", "test")

    def __init__(self, n=37):
        self._ex = {
            "train": [
                Example(
                    id=f"t{i:03d}",
                    prompt=f"What is {i} plus {i % 7}? " + "Think. " * (i % 5),
                    reference=str(i + i % 7),
                    answer=str(i + i % 7) if i % 4 else None,
                    meta={"a": i, "tags": ["x", "y"][: i % 3]},
                )
                for i in range(n)
            ],
            "test": [Example(id="only", prompt="1+1=", reference=None, answer="2")],
        }

    def examples(self, split):
        return self._ex[split]

    def grade(self, example, completion):
        return Grade(float(completion.strip() == example.answer))


@pytest.fixture(scope="module")
def tokenizer():
    texts = [e.prompt for e in ToyTask().examples("train")] + ["Solve the problem", "polar"]
    return Tokenizer.train(texts, vocab_size=320, hard_vocab_limit=False)


def _batches(examples, tokenizer, **kw):
    kw.setdefault("shard_options", grain.sharding.NoSharding())
    return PromptBatches(examples, tokenizer=tokenizer, **kw)


def _indices(batches, limit=None):
    out = []
    for k, b in enumerate(batches):
        if limit is not None and k >= limit:
            break
        out.append(b["index_B"].tolist())
    return out


# --------------------------------------------------------------------------------------------------
# grain pipeline.


def test_batches_hold_tokenised_prompts(tokenizer):
    exs = ToyTask().examples("train")
    pb = _batches(exs, tokenizer, batch_size=5, seed=3, num_epochs=1, buckets=(16, 32, 64))
    assert len(pb) == len(exs) // 5
    for b in pb:
        tokens, lengths, index = b["prompt_tokens_BT"], b["prompt_lengths_B"], b["index_B"]
        assert tokens.dtype == lengths.dtype == index.dtype == np.int32
        assert tokens.shape[0] == 5 and tokens.shape[1] in (16, 32, 64)
        assert tokens.shape[1] == min(w for w in (16, 32, 64) if w >= lengths.max())
        for row, n, i in zip(tokens, lengths, index):
            assert (row[: len(row) - n] == PAD_ID).all() and (row[len(row) - n :] != PAD_ID).all()
            assert row[len(row) - n] == tokenizer.bos_id
            assert tokenizer.decode(row) == exs[i].prompt


def test_shuffle_is_deterministic_by_seed_and_per_epoch(tokenizer):
    exs = ToyTask().examples("train")
    n = len(exs)

    def order(seed, shuffle=True):
        pb = _batches(exs, tokenizer, batch_size=1, seed=seed, num_epochs=2, shuffle=shuffle)
        flat = [i for b in _indices(pb) for i in b]
        return flat[:n], flat[n:]

    a1, a2 = order(0)
    assert order(0) == (a1, a2)
    assert sorted(a1) == sorted(a2) == list(range(n))  # each epoch is a permutation
    assert a1 != a2  # reshuffled per epoch
    assert order(1)[0] != a1
    assert order(0, shuffle=False) == (list(range(n)), list(range(n)))


@pytest.mark.parametrize("stop", [0, 1, 6, 7, 13])
def test_resume_from_json_state_gives_the_same_batches(tokenizer, stop):
    exs = ToyTask().examples("train")
    pb = _batches(exs, tokenizer, batch_size=5, seed=11, num_epochs=None)  # 7 batches per epoch
    full = [next(it) for it in [iter(pb)] for _ in range(stop + 10)]
    it = iter(pb)
    for _ in range(stop):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    assert state["next_index"] == stop
    fresh = _batches(exs, tokenizer, batch_size=5, seed=11, num_epochs=None)  # a new process
    resumed = fresh.iterator(state)
    for want in full[stop:]:
        got = next(resumed)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_state_from_other_settings_is_refused(tokenizer):
    exs = ToyTask().examples("train")
    it = iter(_batches(exs, tokenizer, batch_size=5, seed=11))
    next(it)
    state = it.get_state()
    other = _batches(exs, tokenizer, batch_size=5, seed=12)
    with pytest.raises(ValueError, match="seed: saved 11, now 12"):
        other.iterator(state)
    with pytest.raises(ValueError, match="next_index"):
        _batches(exs, tokenizer, batch_size=5, seed=11).iterator({**state, "next_index": -1})


def test_two_processes_get_disjoint_shards_that_cover_the_data(tokenizer):
    exs = ToyTask().examples("train")  # 37 examples
    shards = []
    for p in range(2):
        pb = _batches(
            exs,
            tokenizer,
            batch_size=4,
            seed=5,
            num_epochs=1,
            drop_remainder=False,
            shard_options=grain.sharding.ShardOptions(p, 2, drop_remainder=False),
        )
        shards.append([i for b in _indices(pb) for i in b])
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(len(exs)))
    # drop_remainder=True: equal streams (multi-host lockstep), still disjoint.
    even = [
        [
            i
            for b in _indices(
                _batches(
                    exs,
                    tokenizer,
                    batch_size=3,
                    seed=5,
                    num_epochs=1,
                    shard_options=grain.sharding.ShardOptions(p, 2, drop_remainder=True),
                )
            )
            for i in b
        ]
        for p in range(2)
    ]
    assert len(even[0]) == len(even[1]) == 18 and not set(even[0]) & set(even[1])
    # The default follows jax: one process here.
    pb = PromptBatches(exs, tokenizer=tokenizer, batch_size=4, seed=5, num_epochs=1)
    assert (pb.spec.shard_index, pb.spec.shard_count) == (0, 1)


def test_pipeline_validation(tokenizer):
    exs = ToyTask().examples("train")
    with pytest.raises(ValueError, match="empty"):
        _batches([], tokenizer, batch_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        _batches(exs, tokenizer, batch_size=64, num_epochs=1)
    with pytest.raises(ValueError, match="seed"):
        _batches(exs, tokenizer, batch_size=2, seed=-1)
    with pytest.raises(TypeError, match="no length"):
        len(_batches(exs, tokenizer, batch_size=2))


# --------------------------------------------------------------------------------------------------
# TFDS: prepare as array_record, read with tfds.data_source.


def test_math_tfds_round_trip(tmp_path, tokenizer):
    from bon_jax.data.tfds_builders import prepare_math

    manual = tmp_path / "manual"
    manual.mkdir()
    for f in MATH_OFFICIAL.rglob("*"):
        if f.is_file():
            (manual / f.relative_to(MATH_OFFICIAL)).parent.mkdir(parents=True, exist_ok=True)
            (manual / f.relative_to(MATH_OFFICIAL)).write_bytes(f.read_bytes())
    builder = prepare_math(tmp_path / "tfds", manual)
    assert str(builder.info.file_format.value) == "array_record"
    assert set(builder.info.splits) == {"train", "test", "math500"}
    raw, tf = (
        MathTask(MATH_OFFICIAL, validation_fraction=0.3),
        MathTask(tmp_path / "tfds", validation_fraction=0.3),
    )
    assert tf.layout == "tfds"
    for split in ("train", "validation", "test"):
        assert tf.examples(split) == raw.examples(split)
    sub_raw = MathTask(MATH_OFFICIAL, subset="math500").examples("test")
    assert MathTask(tmp_path / "tfds", subset="math500").examples("test") == sub_raw
    # The trainer's path: a TFDS source through grain, indices back into it.
    pb = PromptBatches(
        tf.examples("train"),
        tokenizer=tokenizer,
        batch_size=2,
        seed=0,
        num_epochs=1,
        shard_options=grain.sharding.NoSharding(),
        buckets=(128, 256),
        truncate=True,
        max_len=256,
    )
    for b in pb:
        for row, i in zip(b["prompt_tokens_BT"], b["index_B"]):
            assert tokenizer.decode(row) == tf.examples("train")[i].prompt


def test_task_builder_round_trip_and_grain_over_tfds_rows(tmp_path, tokenizer):
    from bon_jax.data.tfds_builders import prepare_task

    task = ToyTask()
    prepare_task(task, tmp_path)
    for split in task.splits:
        back = sources.task_examples(tmp_path, "toy", split)
        assert sorted(back, key=lambda e: e.id) == list(task.examples(split))
    # The embedded arith task, in its own builder config.
    from bon_jax.tasks.arith import ArithTask

    arith = ArithTask(seed=0, num_train=40, num_validation=8, num_test=8)
    prepare_task(arith, tmp_path)
    for split in arith.splits:
        back = sources.task_examples(tmp_path, arith.name, split)
        assert sorted(back, key=lambda e: e.id) == sorted(arith.examples(split), key=lambda e: e.id)
    # Raw TFDS rows (dicts with a "prompt") go through the pipeline too.
    rows = sources.open_tfds_split("bon_task/toy", tmp_path, "train")
    pb = _batches(rows, tokenizer, batch_size=4, seed=2, num_epochs=1)
    for b in pb:
        for row, i in zip(b["prompt_tokens_BT"], b["index_B"]):
            assert tokenizer.decode(row) == rows[int(i)]["prompt"].decode()


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_imdb_tfds_matches_raw_folder(tmp_path, form):
    from bon_jax.data.tfds_builders import prepare_imdb

    manual = tmp_path / "manual"
    manual.mkdir()
    if form == "folder":
        (manual / "aclImdb").symlink_to(IMDB / "aclImdb")
    else:
        with tarfile.open(manual / "aclImdb_v1.tar.gz", "w:gz") as tar:
            tar.add(IMDB / "aclImdb", arcname="aclImdb")
    builder = prepare_imdb(tmp_path / "tfds", manual)
    assert builder.info.full_name == "imdb_reviews/plain_text/1.0.0"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
        "train": 9,
        "test": 4,
        "unsupervised": 2,
    }
    scorer = lambda: None  # noqa: E731
    scorer.score_texts = lambda texts: np.full(len(texts), 0.5)
    for unsup in (False, True):
        raw = ImdbTask(IMDB, scorer=scorer, include_unsup=unsup, validation_fraction=0.3)
        tf = ImdbTask(tmp_path / "tfds", scorer=scorer, include_unsup=unsup, validation_fraction=0.3)
        assert tf.layout == "tfds"
        for split in tf.splits:
            assert tf.examples(split) == raw.examples(split)


def test_tfrecord_and_missing_data_are_refused(tmp_path):
    from bon_jax.data.tfds_builders import prepare_task

    with pytest.raises(DataError, match="not prepared|no TFDS dataset"):
        sources.open_tfds_split("bon_task/toy", tmp_path, "train")
    prepare_task(ToyTask(), tmp_path)
    with pytest.raises(DataError, match="no split 'validation'"):
        sources.open_tfds_split("bon_task/toy", tmp_path, "validation")
    # What a stock `tfds.builder(...).download_and_prepare()` writes: tfrecord metadata.
    info = tmp_path / "bon_task" / "toy" / "1.0.0" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"
    info.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="only array_record can be read without TensorFlow"):
        sources.open_tfds_split("bon_task/toy", tmp_path, "train")


def test_prepare_and_read_without_tensorflow(tmp_path):
    """In a fresh interpreter where `import tensorflow` fails, prepare + read + batch all work."""
    script = textwrap.dedent(
        f"""
        import importlib.abc, importlib.util, sys

        class NoTensorFlow(importlib.abc.MetaPathFinder):  # as if tensorflow were not installed
            def __init__(self, inner):
                self.inner = inner

            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return None
                return self.inner.find_spec(name, path, target)

            def __getattr__(self, attr):
                return getattr(self.inner, attr)

        sys.meta_path[:] = [NoTensorFlow(f) for f in sys.meta_path]
        assert importlib.util.find_spec("tensorflow") is None
        import grain
        from bon_jax.data.tfds_builders import prepare_math, prepare_imdb
        from bon_jax.data.pipeline import PromptBatches
        from bon_jax.tasks.math import MathTask
        from bon_jax.tasks.imdb import ImdbTask
        from bon_jax.tokenizer import Tokenizer
        try:
            import tensorflow
            raise SystemExit("tensorflow importable")
        except ImportError:
            pass
        prepare_math({str(tmp_path / "tfds")!r}, {str(MATH_OFFICIAL)!r})
        prepare_imdb({str(tmp_path / "tfds")!r}, {str(tmp_path / "manual")!r})  # from the tarball
        math = MathTask({str(tmp_path / "tfds")!r})
        imdb = ImdbTask({str(tmp_path / "tfds")!r})
        assert len(math.examples("test")) == 5 and len(imdb.examples("test")) == 4
        ex = math.examples("test")[0]
        assert math.grade(ex, "\\\\boxed{{" + ex.answer + "}}").reward == 1.0
        tok = Tokenizer.train([e.prompt for e in imdb.examples("train")], 300, hard_vocab_limit=False)
        pb = PromptBatches(imdb.examples("train"), tokenizer=tok, batch_size=2, num_epochs=1,
                           shard_options=grain.sharding.NoSharding())
        assert len(list(pb)) == len(pb) > 0
        assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
        print("OK")
        """
    )
    (tmp_path / "manual").mkdir()
    with tarfile.open(tmp_path / "manual" / "aclImdb_v1.tar.gz", "w:gz") as tar:
        tar.add(IMDB / "aclImdb", arcname="aclImdb")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]
