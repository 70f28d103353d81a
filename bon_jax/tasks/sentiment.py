"""`sentiment`: the variational-BoN setting of Amini et al. (IMDB + a sentiment classifier), offline.

Three parts, all deterministic by seed:

- a corpus of short movie-review-like texts (1-3 sentences, 10-40 words) generated from a template
  grammar, to train a small reference LM on (`corpus("train")`; "validation"/"test" hold out reviews for
  its perplexity). Sentiment words come from the VADER lexicon (their polarity is VADER's); each review
  draws a mood in [-1, 1] and every opinion slot is neutral (prob. 0.3) or positive with probability
  (1 + mood) / 2, so reviews are mixed and mostly neutral-to-mildly polar, and a reference LM trained on
  them continues a prefix positively or negatively: the reward has spread and Best-of-N moves it. Most
  reviews open with a neutral sentence, so most prompts do not fix the sentiment.
- prompts: prefixes of 2-8 whitespace words of held-out reviews (reviews the LM corpus never contains),
  `examples(split)`; `reference` is the rest of the review (starting with a space).
- reward: VADER's compound score c in [-1, 1] mapped to the positive-class score (c + 1) / 2 in [0, 1], of
  the full text prompt + completion by default (Amini et al. score the full text), or of the completion
  alone (`score_on="completion"`). `SentimentScorer` is that scorer, reusable by a verifier.

Splits: every generated review is assigned by a hash of its text to the LM corpus (train / validation /
test) or to the prompt pool; a prompt's split (train / validation / test) is a hash of the prompt text, and
prompts are deduplicated, so no prompt text is in two splits. Short prefixes are common ("I watched"), so
deduplication leaves fewer 2-3-word prompts than 7-8-word ones. Prompts are prefixes of reviews that are not
in the LM corpus, but the same few words may begin LM-corpus reviews too: a grammar has few openings.

Completions are joined to the prompt as given (`prompt + completion`): the caller passes the continuation
text exactly as it follows the prompt, with its leading space.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Iterator, Sequence

import numpy as np

from bon_jax.errors import ConfigError
from bon_jax.tasks.base import Example, Grade, Grades, Task, batch_shape

# ------------------------------------------------------------------------------------------------
# The scorer.


@functools.lru_cache(maxsize=1)
def vader_analyzer():
    """The process-wide VADER analyzer (building it reads the lexicon file: do it once)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_lexicon() -> dict[str, float]:
    """VADER's word -> valence (-4..4) lexicon."""
    return vader_analyzer().lexicon


class SentimentScorer:
    """Positive-class score (compound + 1) / 2 in [0, 1] of texts, from VADER (pure Python, CPU).

    About 10-20k short texts per second on one core: a [32, 32] batch of 40-token completions costs well
    under 0.1 s, small next to sampling them.
    """

    def __init__(self):
        self._polarity = vader_analyzer().polarity_scores

    def compound(self, texts: Sequence[str]) -> np.ndarray:
        """VADER compound scores in [-1, 1], float32 [len(texts)]. Non-strings count as empty text."""
        out = np.empty(len(texts), np.float32)
        polarity = self._polarity
        for i, t in enumerate(texts):
            out[i] = polarity(t if isinstance(t, str) else "")["compound"]
        return out

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(compound + 1) / 2, float32 [len(texts)]."""
        return (self.compound(texts) + np.float32(1.0)) * np.float32(0.5)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.score_texts(texts)


# ------------------------------------------------------------------------------------------------
# The review grammar. Sentiment words must be in the VADER lexicon; neutral words must not be (tests).

POSITIVE_ADJECTIVES = (
    "fine", "okay", "solid", "fresh", "competent", "engaging", "compelling", "warm", "stunning",
    "hilarious", "smart", "nice", "inspiring", "good", "funny", "enjoyable", "entertaining", "clever",
    "sweet", "thrilling", "pleasant", "impressive", "fun", "honest", "heartfelt", "fantastic",
    "wonderful", "excellent", "brilliant", "charming", "delightful", "lovely", "amazing", "beautiful",
    "great", "superb",
)  # fmt: skip
NEGATIVE_ADJECTIVES = (
    "awkward", "confusing", "boring", "tense", "messy", "lazy", "dull", "annoying", "lame", "weak",
    "dreadful", "painful", "awful", "irritating", "terrible", "poor", "unpleasant", "disappointing",
    "stupid", "dumb", "ugly", "bad", "horrible", "grim",
)  # fmt: skip
NEUTRAL_ADJECTIVES = (
    "long", "short", "quiet", "loud", "slow", "fast", "simple", "familiar", "unusual", "predictable",
    "dark", "modern", "quirky", "ordinary", "typical", "classic", "busy", "old", "new", "slick",
    "colorful", "stylish", "plain", "dry", "complex", "gritty", "realistic", "timely",
)  # fmt: skip
POSITIVE_VERBS = ("loved", "liked", "enjoyed", "admired", "appreciated")
NEGATIVE_VERBS = ("hated", "disliked")
NEUTRAL_VERBS = ("noticed", "remember", "watched")
FILMS = (
    "movie", "film", "picture", "sequel", "drama", "documentary", "western", "musical", "remake",
    "adaptation",
)  # fmt: skip
ASPECTS = (
    "plot", "acting", "story", "cast", "music", "score", "dialogue", "ending", "pacing", "script",
    "direction", "soundtrack", "camera work", "editing", "premise", "setting", "lead actor",
    "lead actress", "photography", "lighting", "writing", "tone", "twist",
)  # fmt: skip
PLURAL_ASPECTS = ("characters", "effects", "costumes", "performances", "visuals", "songs")
DEGREES = ("", "", "", "", "very ", "really ", "quite ", "extremely ", "somewhat ", "slightly ")
NEGATED_DEGREES = ("", "", "very ", "really ", "particularly ")
WHEN = (
    "last night", "on Sunday", "with my sister", "with my brother", "on a plane", "at the cinema",
    "twice", "after work", "last weekend", "with my parents", "at home", "on a train",
)  # fmt: skip
ROLES = (
    "young doctor", "retired teacher", "small family", "farmer", "police officer", "group of students",
    "former soldier", "jazz musician", "detective", "lawyer", "nurse", "writer", "chef", "pilot",
)  # fmt: skip
PLACES = (
    "a small town", "New York", "the desert", "a big city", "a fishing village", "the mountains",
    "Paris", "the future", "a village", "a port town",
)  # fmt: skip
PLOTS = (
    "moves to {place}", "returns home", "starts a band", "opens a restaurant", "visits {place}",
    "finds an old letter", "leaves the city", "meets an old neighbor", "buys a house in {place}",
)  # fmt: skip

P_NEUTRAL_SLOT = 0.3
MIN_WORDS, MAX_WORDS = 10, 40
PROMPT_MIN_WORDS, PROMPT_MAX_WORDS = 2, 8
# Review buckets by hash of the text: reference-LM corpus splits, then the pool prompts are cut from.
REVIEW_BUCKETS = (("train", 0.70), ("validation", 0.75), ("test", 0.80), ("prompts", 1.0))
PROMPT_BUCKETS = (("train", 0.8), ("validation", 0.9), ("test", 1.0))


def _review(r) -> str:
    """One review from `r = random.Random(seed).random`: 1-3 sentences, 10-40 words."""

    def pick(seq):
        return seq[int(r() * len(seq))]

    mood = 2.0 * r() - 1.0
    p_pos = (1.0 + mood) / 2.0

    def polarity() -> int:
        if r() < P_NEUTRAL_SLOT:
            return 0
        return 1 if r() < p_pos else -1

    def adj(pol: int | None = None) -> str:
        pol = polarity() if pol is None else pol
        words = (NEUTRAL_ADJECTIVES, POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES)[pol]  # [-1]: negative
        return pick(words)

    def intro() -> str:
        film = pick(FILMS)
        t = int(r() * 5)
        if t == 0:
            return f"I watched this {film} {pick(WHEN)}."
        if t == 1:
            return f"I saw the {film} {pick(WHEN)}."
        if t == 2:
            return f"This {film} is about a {pick(ROLES)} in {pick(PLACES)}."
        if t == 3:
            plot = pick(PLOTS).format(place=pick(PLACES))
            return f"The {film} follows a {pick(ROLES)} who {plot}."
        return f"It is a {pick(NEUTRAL_ADJECTIVES)} {film} about a {pick(ROLES)}."

    def opinion() -> str:
        t = int(r() * 8)
        aspect, other = pick(ASPECTS), pick(ASPECTS)
        if t == 0:
            return f"The {aspect} was {pick(DEGREES)}{adj()}."
        if t == 1:
            return f"The {pick(PLURAL_ASPECTS)} were {pick(DEGREES)}{adj()}."
        if t == 2:
            return f"The {aspect} was {adj()} and the {other} was {adj()}."
        if t == 3:  # a contrast: the second half has the opposite polarity when the first has one
            pol = polarity()
            return f"The {aspect} was {adj(pol)}, but the {other} was {adj(-pol if pol else None)}."
        if t == 4:
            pol = polarity()
            verbs = (NEUTRAL_VERBS, POSITIVE_VERBS, NEGATIVE_VERBS)[pol]
            return f"I {pick(verbs)} the {aspect}."
        if t == 5:  # negation: VADER flips the adjective's polarity, so draw its opposite
            pol = polarity()
            return f"The {aspect} was not {pick(NEGATED_DEGREES)}{adj(-pol)}."
        if t == 6:
            return f"Overall, a {pick(DEGREES)}{adj()} {pick(FILMS)}."
        pol = polarity()
        if pol == 0:
            return f"Overall, it was {adj(0)}."
        return "I would recommend it." if pol > 0 else "I would not recommend it."

    while True:
        n = 1 + int(r() * 3)
        sentences = [intro() if r() < 0.7 else opinion()]
        sentences += [opinion() for _ in range(n - 1)]
        text = " ".join(sentences)
        if MIN_WORDS <= text.count(" ") + 1 <= MAX_WORDS:
            return text


def _unit(text: str, person: bytes) -> tuple[float, bytes]:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "big") / 2.0**64, digest


def _bucket(u: float, buckets) -> str:
    for name, upper in buckets:
        if u < upper:
            return name
    return buckets[-1][0]


# ------------------------------------------------------------------------------------------------
# The task.


class SentimentTask(Task):
    """Review prefixes to continue positively; reward = VADER positive-class score (module docstring).

    Args:
      seed: generation seed.
      num_train, num_validation, num_test: prompts per split.
      num_reviews: reviews in the reference-LM corpus (`corpus("train")`).
      num_heldout_reviews: reviews in each of `corpus("validation")` and `corpus("test")`.
      score_on: "full" (prompt + completion, the default, as Amini et al.) or "completion".
    """

    name = "sentiment"

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 2_000,
        num_validation: int = 200,
        num_test: int = 500,
        num_reviews: int = 30_000,
        num_heldout_reviews: int = 1_000,
        score_on: str = "full",
    ):
        sizes = {
            "num_train": num_train,
            "num_validation": num_validation,
            "num_test": num_test,
            "num_reviews": num_reviews,
            "num_heldout_reviews": num_heldout_reviews,
        }
        for key, n in sizes.items():
            if not isinstance(n, int) or n < 0:
                raise ConfigError(key, f"must be a non-negative integer, got {n!r}")
        if score_on not in ("full", "completion"):
            raise ConfigError("score_on", f"must be 'full' or 'completion', got {score_on!r}")
        self.seed = seed
        self.score_on = score_on
        self.prompt_sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self.review_sizes = {
            "train": num_reviews,
            "validation": num_heldout_reviews,
            "test": num_heldout_reviews,
        }
        self._data: tuple[dict[str, tuple[str, ...]], dict[str, tuple[Example, ...]]] | None = None
        self._scorer: SentimentScorer | None = None

    @property
    def scorer(self) -> SentimentScorer:
        if self._scorer is None:
            self._scorer = SentimentScorer()
        return self._scorer

    def _generate(self):
        r = random.Random(self.seed).random
        reviews: dict[str, list[str]] = {s: [] for s in self.splits}
        prompts: dict[str, list[Example]] = {s: [] for s in self.splits}
        need_reviews = dict(self.review_sizes)
        need_prompts = dict(self.prompt_sizes)
        remaining = sum(need_reviews.values()) + sum(need_prompts.values())
        seen_reviews: set[str] = set()
        seen_prompts: set[str] = set()
        max_draws = 50 * remaining + 1000
        draws = 0
        while remaining:
            if draws >= max_draws:
                raise ConfigError(
                    "num_train",
                    f"sentiment: {draws} reviews drawn and still short of "
                    f"{ {s: need_prompts[s] - len(p) for s, p in prompts.items()} } distinct prompts; "
                    "ask for fewer prompts",
                )
            draws += 1
            text = _review(r)
            k = PROMPT_MIN_WORDS + int(r() * (PROMPT_MAX_WORDS - PROMPT_MIN_WORDS + 1))
            if text in seen_reviews:
                continue
            seen_reviews.add(text)
            bucket = _bucket(_unit(text, b"bonjax-review")[0], REVIEW_BUCKETS)
            if bucket != "prompts":
                if len(reviews[bucket]) < need_reviews[bucket]:
                    reviews[bucket].append(text)
                    remaining -= 1
                continue
            words = text.split(" ")
            prompt = " ".join(words[:k])
            if prompt in seen_prompts:
                continue
            seen_prompts.add(prompt)
            u, digest = _unit(prompt, b"bonjax-prompt")
            split = _bucket(u, PROMPT_BUCKETS)
            if len(prompts[split]) >= need_prompts[split]:
                continue
            remaining -= 1
            prompts[split].append(
                Example(
                    id=f"sentiment-{digest.hex()}",
                    prompt=prompt,
                    reference=" " + " ".join(words[k:]),
                    answer=None,
                    meta={"prefix_words": k},
                )
            )
        return (
            {s: tuple(v) for s, v in reviews.items()},
            {s: tuple(v) for s, v in prompts.items()},
        )

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"sentiment: unknown split {split!r}; expected one of {self.splits}")
        if self._data is None:
            self._data = self._generate()

    def examples(self, split: str) -> tuple[Example, ...]:
        self._check_split(split)
        return self._data[1][split]

    def reviews(self, split: str) -> tuple[str, ...]:
        """The reference-LM corpus reviews of `split` (disjoint from the reviews prompts come from)."""
        self._check_split(split)
        return self._data[0][split]

    def corpus(self, split: str) -> Iterator[str]:
        """Review texts of `split`, to train (train) and evaluate (validation/test) the reference LM."""
        yield from self.reviews(split)

    def text_to_score(self, example: Example, completion: str) -> str:
        completion = completion if isinstance(completion, str) else ""
        return example.prompt + completion if self.score_on == "full" else completion

    def grade(self, example: Example, completion: str) -> Grade:
        reward = float(self.scorer.score_texts([self.text_to_score(example, completion)])[0])
        return Grade(reward, None, None)

    def grade_batch(self, examples_B: Sequence[Example], completions_BM: Sequence[Sequence[str]]) -> Grades:
        """One scorer pass over the [B, M] texts; rewards float32 [B, M], answers and reasons None."""
        B, M = batch_shape(examples_B, completions_BM)
        texts = [self.text_to_score(ex, c) for ex, row in zip(examples_B, completions_BM) for c in row]
        rewards = self.scorer.score_texts(texts).reshape(B, M)
        return Grades(rewards, np.full((B, M), None, object), np.full((B, M), None, object))
