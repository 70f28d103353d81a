"""IMDB positive-continuation task of variational BoN (Amini et al., 2024): continue a review prefix so
that the whole review reads as positive.

Data (local only; `data_dir` is detected in this order):

1. a TFDS data dir holding `imdb_reviews/plain_text/<version>/` prepared in **array_record** format,
   read with `tfds.data_source` (no TensorFlow). TFDS prepares `imdb_reviews` as tfrecord by default,
   which cannot be read without TensorFlow: prepare it from the raw archive or folder with
   `bon_jax.data.tfds_builders.prepare_imdb(data_dir, manual_dir)` (it writes the stock builder's
   features, splits and version, in array_record), or convert an existing tfrecord copy where
   TensorFlow is installed with `tfds convert_format --dataset_dir=... --out_file_format=array_record`;
2. the raw `aclImdb` folder of Maas et al.: `<data_dir>/aclImdb/{train,test}/{pos,neg}/*.txt` (and
   `train/unsup/`), or `data_dir` being that `aclImdb` folder itself.

Both give the same examples: a review's text is its file's bytes, stripped, as TFDS stores it; its
id is "<split>/<first 16 hex digits of sha256(text)>"; identical reviews within a split are kept
once; examples are sorted by id.

Splits: `test` is the IMDB test split (pos + neg); `validation` is carved from the IMDB train split
by id hash (`holdout_fraction("imdb", id) < validation_fraction`); `train` is the rest, plus the
50,000 unlabelled reviews when `include_unsup=True`.

Prompts: the review with `<br />` tags turned into spaces and whitespace collapsed, cut after its
first k whitespace-separated words, k in [min_prefix_words, max_prefix_words] (2..8 as in Amini
et al.) drawn by a hash of (seed, id) -- deterministic, independent of order -- and cut to leave at
least one word; reviews of at most `min_prefix_words` words (a handful of one-word reviews) are
skipped. `reference` is the rest of the review (starting with a space), `meta` holds the label and k.

Reward: `scorer.score_texts(texts) -> [len(texts)]` probabilities of positive sentiment in [0, 1],
applied to prompt + completion (`score_prompt=True`, the review as a reader sees it) or to the
completion alone; `target="negative"` rewards 1 - p. Any object with that method plugs in (e.g. a
classifier). The default is `bon_jax.tasks.sentiment.SentimentScorer`: VADER's compound score c in
[-1, 1] mapped to (c + 1) / 2 -- lexicon-based and offline, a stand-in for the DistilBERT IMDB
classifier of the paper, which a user with local weights can plug in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bon_jax.errors import DataError
from bon_jax.tasks.base import Example, Grade, Grades, Task, batch_shape
from bon_jax.tasks.sentiment import SentimentScorer
from bon_jax.tasks.splits import holdout_fraction, open_tfds_split

TFDS_NAME = "imdb_reviews"
_LABEL_NAMES = ("neg", "pos")  # TFDS ClassLabel order; -1 is unlabelled
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)


def default_scorer():
    """The default sentiment scorer: `bon_jax.tasks.sentiment.SentimentScorer` (VADER, offline)."""
    return SentimentScorer()


def clean_review(text: str) -> str:
    """`<br />` tags to spaces, whitespace runs to one space, stripped."""
    return " ".join(_BR.sub(" ", text).split())


def review_id(split: str, text: str) -> str:
    return f"{split}/{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------------
# Reading reviews: lists of (text, label) with label in {"pos", "neg", "unsup"}.


def find_acl_root(data_dir: str | os.PathLike) -> Path | None:
    d = Path(data_dir)
    for cand in (d / "aclImdb", d):
        if (cand / "train").is_dir() or (cand / "test").is_dir():
            return cand
    return None


def read_acl_split(root: str | os.PathLike, split: str, label: str) -> list[tuple[str, str]]:
    """Reviews of `<root>/<split>/<label>/*.txt` (sorted by name) as (text, label)."""
    folder = Path(root) / split / label
    if not folder.is_dir():
        raise DataError(folder, "no such directory (expected the aclImdb layout)")
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DataError(folder, "no *.txt reviews")
    out = []
    for f in files:
        try:
            text = f.read_bytes().strip().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f, f"cannot read review: {e}") from e
        if not text:
            raise DataError(f, "empty review")
        out.append((text, label))
    return out


def read_tfds_split(data_dir: str | os.PathLike, split: str) -> list[tuple[str, str]]:
    """Reviews of a TFDS `imdb_reviews` split prepared as array_record, as (text, label)."""
    source = open_tfds_split(TFDS_NAME, data_dir, split)
    out = []
    for i in range(len(source)):
        row = source[i]
        text = row["text"]
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        label = int(row["label"])
        if not text.strip():
            raise DataError(f"{data_dir}/{TFDS_NAME}[{split}]", f"empty review at row {i}")
        out.append((text, _LABEL_NAMES[label] if label >= 0 else "unsup"))
    return out


def detect_layout(data_dir: str | os.PathLike) -> str:
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(d, "IMDB data_dir does not exist or is not a directory")
    if (d / TFDS_NAME).is_dir():
        return "tfds"
    if find_acl_root(d) is not None:
        return "acl"
    raise DataError(d, f"no IMDB data: expected {TFDS_NAME}/ (TFDS, array_record) or aclImdb/")


# ---------------------------------------------------------------------------------------------------
# The task.


@dataclasses.dataclass
class ImdbTask(Task):
    """Review prefixes continued positively, rewarded by a sentiment scorer (module docstring).

    Args:
      data_dir: TFDS data dir with `imdb_reviews` in array_record, or the aclImdb folder (or its parent).
      scorer: object with `score_texts(list[str]) -> np.ndarray` of P(positive); default `SentimentScorer`.
      seed: fixes each review's prefix length.
      min_prefix_words, max_prefix_words: range of the prefix length k (inclusive).
      validation_fraction: share of the IMDB train split carved out (by id hash) as validation.
      include_unsup: add the unlabelled train reviews to `train`.
      target: "positive" (reward p) or "negative" (reward 1 - p).
      score_prompt: score prompt + completion (True) or the completion alone.
    """

    data_dir: str | os.PathLike
    scorer: Any = None
    seed: int = 0
    min_prefix_words: int = 2
    max_prefix_words: int = 8
    validation_fraction: float = 0.05
    include_unsup: bool = False
    target: str = "positive"
    score_prompt: bool = True

    name = "imdb"
    splits = ("train", "validation", "test")

    def __post_init__(self):
        if not 1 <= self.min_prefix_words <= self.max_prefix_words:
            raise ValueError(
                f"need 1 <= min_prefix_words <= max_prefix_words, got "
                f"{self.min_prefix_words}, {self.max_prefix_words}"
            )
        if self.target not in ("positive", "negative"):
            raise ValueError(f"target must be 'positive' or 'negative', got {self.target!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.scorer is None:
            self.scorer = default_scorer()
        if not callable(getattr(self.scorer, "score_texts", None)):
            raise TypeError(f"scorer {self.scorer!r} has no score_texts(list[str]) method")
        self.layout = detect_layout(self.data_dir)
        self._examples: dict[str, list[Example]] = {}
        self._lock = threading.Lock()

    # -- data --------------------------------------------------------------------------------------

    def _reviews(self, imdb_split: str, labels: Sequence[str]) -> list[tuple[str, str]]:
        if self.layout == "tfds":
            if "unsup" in labels:
                return read_tfds_split(self.data_dir, "unsupervised")
            return read_tfds_split(self.data_dir, imdb_split)
        root = find_acl_root(self.data_dir)
        return [r for label in labels for r in read_acl_split(root, imdb_split, label)]

    def _prefix_words(self, example_id: str) -> int:
        span = self.max_prefix_words - self.min_prefix_words + 1
        u = holdout_fraction(f"imdb-prefix-{self.seed}", example_id)
        return self.min_prefix_words + min(int(math.floor(u * span)), span - 1)

    def _to_examples(self, split: str, reviews: Sequence[tuple[str, str]]) -> list[Example]:
        by_id: dict[str, tuple[str, str]] = {}
        for text, label in reviews:
            by_id.setdefault(review_id(split, text), (text, label))
        out = []
        for uid in sorted(by_id):
            text, label = by_id[uid]
            words = clean_review(text).split()
            if len(words) <= self.min_prefix_words:
                continue  # no room for a continuation (e.g. one-word reviews): skipped
            k = min(self._prefix_words(uid), len(words) - 1)
            out.append(
                Example(
                    id=uid,
                    prompt=" ".join(words[:k]),
                    reference=" " + " ".join(words[k:]),
                    answer=None,
                    meta={"label": label, "prefix_words": k},
                )
            )
        return out

    def examples(self, split: str) -> Sequence[Example]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {self.splits}")
        with self._lock:
            if split not in self._examples:
                if split == "test":
                    self._examples[split] = self._to_examples("test", self._reviews("test", ("pos", "neg")))
                else:
                    labelled = self._to_examples("train", self._reviews("train", ("pos", "neg")))
                    held = [holdout_fraction("imdb", e.id) < self.validation_fraction for e in labelled]
                    self._examples["validation"] = [e for e, h in zip(labelled, held) if h]
                    train = [e for e, h in zip(labelled, held) if not h]
                    if self.include_unsup:
                        unsup = self._to_examples("unsup", self._reviews("train", ("unsup",)))
                        train = sorted(train + unsup, key=lambda e: e.id)
                    self._examples["train"] = train
            return self._examples[split]

    # -- grading -----------------------------------------------------------------------------------

    def _texts(self, example: Example, completion: str) -> str:
        return example.prompt + completion if self.score_prompt else completion

    def _rewards(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, np.float32)
        p = np.asarray(self.scorer.score_texts(texts), dtype=np.float32).reshape(-1)
        if p.shape != (len(texts),):
            raise ValueError(f"scorer returned {p.shape[0]} scores for {len(texts)} texts")
        if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
            raise ValueError("scorer must return finite probabilities in [0, 1]")
        return p if self.target == "positive" else 1.0 - p

    def grade(self, example: Example, completion: str) -> Grade:
        if not isinstance(completion, str):
            return Grade(0.0, None, "completion is not text")
        return Grade(float(self._rewards([self._texts(example, completion)])[0]))

    def grade_batch(self, examples_B: Sequence[Example], completions_BM: Sequence[Sequence[str]]) -> Grades:
        """One `score_texts` call for the whole `[B, M]` batch."""
        B, M = batch_shape(examples_B, completions_BM)
        texts, where = [], []
        reasons = np.empty((B, M), object)
        for b, (ex, row) in enumerate(zip(examples_B, completions_BM)):
            for n, c in enumerate(row):
                if isinstance(c, str):
                    texts.append(self._texts(ex, c))
                    where.append((b, n))
                else:
                    reasons[b, n] = "completion is not text"
        rewards = np.zeros((B, M), np.float32)
        for (b, n), r in zip(where, self._rewards(texts)):
            rewards[b, n] = r
        return Grades(rewards, np.empty((B, M), object), reasons)
