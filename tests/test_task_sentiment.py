"""The offline `sentiment` task: review grammar, disjoint prompt splits, VADER reward."""

import random

import numpy as np
import pytest

from bon_jax.errors import ConfigError
from bon_jax.tasks import registry, sentiment
from bon_jax.tasks.base import Example, Task
from bon_jax.tasks.sentiment import SentimentScorer, SentimentTask, vader_analyzer, vader_lexicon


def small(seed=0, **kw):
    args = dict(num_train=300, num_validation=60, num_test=100, num_reviews=2000)
    args.update(num_heldout_reviews=200, **kw)
    return SentimentTask(seed=seed, **args)


@pytest.fixture(scope="module")
def task():
    return small()


def test_vocabulary_polarity_comes_from_the_vader_lexicon():
    lex = vader_lexicon()
    assert all(lex.get(w, 0) > 0 for w in sentiment.POSITIVE_ADJECTIVES + sentiment.POSITIVE_VERBS)
    assert all(lex.get(w, 0) < 0 for w in sentiment.NEGATIVE_ADJECTIVES + sentiment.NEGATIVE_VERBS)
    neutral = (
        sentiment.NEUTRAL_ADJECTIVES + sentiment.NEUTRAL_VERBS + sentiment.FILMS + sentiment.ASPECTS
        + sentiment.PLURAL_ASPECTS + sentiment.WHEN + sentiment.ROLES + sentiment.PLACES
        + sentiment.PLOTS
    )  # fmt: skip
    words = {w.lower().strip("{}") for phrase in neutral for w in phrase.split()}
    assert not {w for w in words if w in lex}


def test_is_a_task_with_sizes(task):
    assert isinstance(task, Task) and task.name == "sentiment"
    assert [len(task.examples(s)) for s in task.splits] == [300, 60, 100]
    assert [len(task.reviews(s)) for s in task.splits] == [2000, 200, 200]
    ex = task.examples("train")[0]
    assert isinstance(ex, Example) and ex.answer is None and ex.id.startswith("sentiment-")


def test_reviews_are_short_and_shaped(task):
    for split in task.splits:
        for text in task.corpus(split):
            n = len(text.split())
            assert sentiment.MIN_WORDS <= n <= sentiment.MAX_WORDS, text
            assert text == " ".join(text.split()) and text[-1] in ".!?"
            assert 1 <= text.count(". ") + 1 <= 3, text


def test_prompts_are_2_to_8_word_prefixes_of_heldout_reviews(task):
    corpus = {t for s in task.splits for t in task.reviews(s)}
    lengths = set()
    for split in task.splits:
        for ex in task.examples(split):
            k = len(ex.prompt.split(" "))
            assert 2 <= k <= 8 and k == ex.meta["prefix_words"]
            lengths.add(k)
            assert ex.reference.startswith(" ") and not ex.reference.startswith("  ")
            review = ex.prompt + ex.reference
            assert sentiment.MIN_WORDS <= len(review.split()) <= sentiment.MAX_WORDS
            assert review not in corpus  # held out from the reference-LM corpus
    assert lengths == set(range(2, 9))


def test_splits_are_disjoint_and_deduplicated(task):
    prompts = [[e.prompt for e in task.examples(s)] for s in task.splits]
    reviews = [list(task.reviews(s)) for s in task.splits]
    for group in (prompts, reviews):
        for items in group:
            assert len(set(items)) == len(items)
        a, b, c = map(set, group)
        assert not (a & b or a & c or b & c)
    ids = [e.id for s in task.splits for e in task.examples(s)]
    assert len(set(ids)) == len(ids)


def test_prompt_split_is_a_function_of_the_prompt_text():
    a, b = small(0), small(1)
    split_of = {e.prompt: s for s in a.splits for e in a.examples(s)}
    shared = [(e.prompt, s) for s in b.splits for e in b.examples(s) if e.prompt in split_of]
    assert len(shared) > 20  # short prefixes recur between seeds ...
    assert all(split_of[p] == s for p, s in shared)  # ... and land in the same split


def test_deterministic_by_seed():
    a, b, c = small(5), small(5), small(6)
    for s in a.splits:
        assert a.examples(s) == b.examples(s)
        assert list(a.corpus(s)) == list(b.corpus(s))
    assert list(a.corpus("train")) != list(c.corpus("train"))
    assert a.examples("test") != c.examples("test")


def test_scorer_is_vader_positive_class_score():
    texts = ["This movie was wonderful and the acting was great.", "A terrible, boring film.",
             "The film runs ninety minutes.", "", "The plot was not bad, but the ending was awful!",
             "I LOVED it :)"]  # fmt: skip
    got = SentimentScorer().score_texts(texts)
    want = np.array([(vader_analyzer().polarity_scores(t)["compound"] + 1) / 2 for t in texts])
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0] > 0.75 and got[1] < 0.25 and got[2] == 0.5 and got[3] == 0.5
    assert SentimentScorer().score_texts([]).shape == (0,)


def test_reward_has_spread_over_the_corpus(task):
    rewards = SentimentScorer().score_texts(list(task.corpus("train")))
    assert np.all((rewards >= 0) & (rewards <= 1))
    assert 0.4 < rewards.mean() < 0.6 and rewards.std() > 0.15
    assert (rewards > 0.7).mean() > 0.15 and (rewards < 0.3).mean() > 0.15
    # Within a review opinion slots lean the same way (a mood), so a prefix is informative.
    assert (rewards == 0.5).mean() < 0.3


def test_grade_and_grade_batch(task):
    exs = list(task.examples("test")[:3])
    comps = [[" The acting was great.", " It was terrible and dull.", ""] for _ in exs]
    g = task.grade_batch(exs, comps)
    assert g.rewards_BM.shape == (3, 3) and g.rewards_BM.dtype == np.float32
    assert g.answers_BM.shape == (3, 3) and all(a is None for a in g.answers_BM.ravel())
    assert all(r is None for r in g.reasons_BM.ravel())
    for b, ex in enumerate(exs):
        for n, c in enumerate(comps[b]):
            one = task.grade(ex, c)
            assert one.answer is None and one.reason is None
            assert one.reward == pytest.approx(float(g.rewards_BM[b, n]), abs=1e-7)
            want = (vader_analyzer().polarity_scores(ex.prompt + c)["compound"] + 1) / 2
            assert one.reward == pytest.approx(want, abs=1e-6)
        assert g.rewards_BM[b, 0] > g.rewards_BM[b, 1]
    with pytest.raises(ValueError, match="rows"):
        task.grade_batch(exs, comps[:2])
    assert task.grade_batch([], []).rewards_BM.shape == (0, 0)


def test_score_on_completion_ignores_the_prompt():
    t = small(score_on="completion")
    ex = Example(id="x", prompt="A horrible, awful", reference=None)
    assert t.grade(ex, " movie.").reward == 0.5
    assert small().grade(ex, " movie.").reward < 0.2
    with pytest.raises(ConfigError, match="score_on"):
        SentimentTask(score_on="prompt")
    with pytest.raises(ConfigError, match="num_reviews"):
        SentimentTask(num_reviews=-1)


def test_grade_never_raises_on_garbage(task):
    rng = random.Random(99)
    ex = task.examples("validation")[0]
    comps = ["".join(chr(rng.randrange(0, 0x30000)) for _ in range(rng.randrange(0, 60)))
             for _ in range(500)] + [None, ":) :( <3", "!!!!????", "NOT GOOD!!! " * 20]  # fmt: skip
    rewards = task.grade_batch([ex], [comps]).rewards_BM
    assert np.all(np.isfinite(rewards)) and np.all((rewards >= 0) & (rewards <= 1))


def test_registry_builds_sentiment():
    t = registry.get_task("sentiment", seed=2, num_train=5, num_validation=2, num_test=2,
                          num_reviews=20, num_heldout_reviews=5)  # fmt: skip
    assert isinstance(t, SentimentTask) and len(t.examples("train")) == 5
