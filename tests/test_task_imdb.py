"""IMDB task: reading aclImdb, prompts of 2-8 words, splits, malformed data, and scorer-based rewards."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bon_jax.data.sources import holdout_fraction
from bon_jax.errors import DataError
from bon_jax.tasks.imdb import ImdbTask, clean_review, review_id
from bon_jax.tasks.sentiment import SentimentScorer

SAMPLE = Path(__file__).parent / "data" / "imdb_sample"
ACL = SAMPLE / "aclImdb"


class WordScorer:
    """P(positive) = share of 'good' among the words 'good'/'bad' (0.5 without either); counts calls."""

    def __init__(self):
        self.calls = 0

    def score_texts(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            words = t.lower().split()
            g, b = words.count("good"), words.count("bad")
            out.append(0.5 if g + b == 0 else g / (g + b))
        return np.array(out)


def _raw_reviews(split, labels):
    return {
        f.read_bytes().strip().decode(): label
        for label in labels
        for f in sorted((ACL / split / label).glob("*.txt"))
    }


def test_examples_follow_the_reviews():
    task = ImdbTask(SAMPLE, scorer=WordScorer(), validation_fraction=0.3)
    assert task.layout == "acl"
    seen = set()
    for split, imdb_split, labels in [
        ("train", "train", ("pos", "neg")),
        ("validation", "train", ("pos", "neg")),
        ("test", "test", ("pos", "neg")),
    ]:
        reviews = _raw_reviews(imdb_split, labels)
        for ex in task.examples(split):
            assert ex.id not in seen
            seen.add(ex.id)
            words = ex.prompt.split()
            assert 2 <= len(words) <= 8 and ex.meta["prefix_words"] == len(words)
            assert "<br" not in ex.prompt + ex.reference
            text = next(t for t in reviews if review_id(imdb_split, t) == ex.id)
            assert ex.prompt + ex.reference == clean_review(text)
            assert ex.reference.startswith(" ") and len(ex.reference) > 1
            assert ex.meta["label"] == reviews[text]
            assert ex.answer is None
    # 9 labelled train files: one duplicate review and one one-word review ("Great") are dropped.
    assert len(task.examples("train")) + len(task.examples("validation")) == 7
    assert len(task.examples("test")) == 4
    ids = [e.id for e in task.examples("train")]
    assert ids == sorted(ids)


def test_validation_carve_and_unsup():
    task = ImdbTask(ACL, scorer=WordScorer(), validation_fraction=0.5)  # the aclImdb folder itself
    val = task.examples("validation")
    train = task.examples("train")
    assert val and train
    assert all(holdout_fraction("imdb", e.id) < 0.5 for e in val)
    assert all(holdout_fraction("imdb", e.id) >= 0.5 for e in train)
    with_unsup = ImdbTask(SAMPLE, scorer=WordScorer(), validation_fraction=0.5, include_unsup=True)
    extra = [e for e in with_unsup.examples("train") if e.meta["label"] == "unsup"]
    assert len(extra) == 2 and all(e.id.startswith("unsup/") for e in extra)
    assert with_unsup.examples("validation") == val


def test_prompt_lengths_are_deterministic_by_seed():
    def lengths(seed, **kw):
        t = ImdbTask(SAMPLE, scorer=WordScorer(), seed=seed, validation_fraction=0.0, **kw)
        return [e.meta["prefix_words"] for e in t.examples("train") + list(t.examples("test"))]

    assert lengths(0) == lengths(0)
    assert lengths(0) != lengths(1)
    all_k = [k for s in range(20) for k in lengths(s)]
    assert set(all_k) == set(range(2, 9))  # the whole 2..8 range is used
    assert set(lengths(3, min_prefix_words=4, max_prefix_words=4)) == {4}


def test_clean_review():
    assert clean_review("A.<br /><br />B <br/>C<BR>D\n\tE ") == "A. B C D E"


def test_rewards_come_from_the_scorer_in_one_call():
    scorer = WordScorer()
    task = ImdbTask(SAMPLE, scorer=scorer)
    exs = list(task.examples("test"))[:3]
    rows = [[" good good", " bad", " good bad", ""] for _ in exs]
    g = task.grade_batch(exs, rows)
    assert scorer.calls == 1
    assert g.rewards_BM.shape == (3, 4) and g.rewards_BM.dtype == np.float32
    for b, ex in enumerate(exs):
        expect = scorer.score_texts([ex.prompt + c for c in rows[b]])
        np.testing.assert_allclose(g.rewards_BM[b], expect, rtol=1e-6)
        assert task.grade(ex, rows[b][0]).reward == pytest.approx(expect[0])
    assert (g.reasons_BM == None).all()  # noqa: E711
    neg = ImdbTask(SAMPLE, scorer=WordScorer(), target="negative", score_prompt=False)
    assert neg.grade(exs[0], " good good bad bad bad").reward == pytest.approx(0.6)
    assert neg.grade(exs[0], None).reason == "completion is not text"


def test_default_scorer_prefers_positive_continuations():
    task = ImdbTask(SAMPLE)
    assert isinstance(task.scorer, SentimentScorer)
    ex = task.examples("test")[0]
    good = task.grade(ex, " a wonderful, moving and brilliant film. I loved it.").reward
    bad = task.grade(ex, " a dull, boring and awful film. I hated it.").reward
    assert 0.0 <= bad < 0.5 < good <= 1.0


def test_bad_scorers_are_refused():
    class Wrong:
        def score_texts(self, texts):
            return np.full(len(texts) + 1, 0.5)

    class OutOfRange:
        def score_texts(self, texts):
            return np.full(len(texts), 2.0)

    with pytest.raises(TypeError, match="score_texts"):
        ImdbTask(SAMPLE, scorer=object())
    ex = ImdbTask(SAMPLE, scorer=WordScorer()).examples("test")[0]
    with pytest.raises(ValueError, match="scores for"):
        ImdbTask(SAMPLE, scorer=Wrong()).grade(ex, " x")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImdbTask(SAMPLE, scorer=OutOfRange()).grade(ex, " x")


def test_malformed_data(tmp_path):
    root = tmp_path / "aclImdb"
    shutil.copytree(ACL, root)
    (root / "test" / "neg" / "7_1.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"7_1.txt: empty review"):
        ImdbTask(tmp_path, scorer=WordScorer()).examples("test")
    (root / "test" / "neg" / "7_1.txt").write_bytes(b"\xff\xfe bad bytes")
    with pytest.raises(DataError, match=r"7_1.txt: cannot read review"):
        ImdbTask(tmp_path, scorer=WordScorer()).examples("test")
    shutil.rmtree(root / "test" / "neg")
    with pytest.raises(DataError, match=r"test/neg: no such directory"):
        ImdbTask(tmp_path, scorer=WordScorer()).examples("test")
    (root / "test" / "neg").mkdir()
    with pytest.raises(DataError, match=r"test/neg: no \*.txt reviews"):
        ImdbTask(tmp_path, scorer=WordScorer()).examples("test")
    with pytest.raises(DataError, match="no IMDB data"):
        ImdbTask(tmp_path / "aclImdb" / "train", scorer=WordScorer())
    with pytest.raises(ValueError, match="min_prefix_words"):
        ImdbTask(SAMPLE, scorer=WordScorer(), min_prefix_words=5, max_prefix_words=3)
