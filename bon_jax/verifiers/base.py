"""The verifier interface s(x, y), over graded samples, and the two verifiers that need no training.

    score(examples_B, samples) -> scores_BM   float32 [B, M], higher = more likely correct / better

Best-of-N selects by these scores (s in docs/maths.md), so only their order within a row matters to selection;
`LearnedVerifier` returns logits, `OracleVerifier` the task reward R itself, the sentiment verifier a score
in [0, 1].

`samples` is a `Samples` (what the pipeline has after drawing and grading: texts, tokens and lengths, the
prompts' tokens, the rewards; any may be absent) or plain text (`list[list[str]]`, B rows of M). Each
verifier reads what it needs: the oracle the rewards (grading the texts itself when there are none), the
sentiment verifier the texts (decoding tokens when there are none), the learned verifier the texts when
given (what it was trained on), else the tokens directly (no decode / re-encode round trip).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from bon_jax.tasks.base import Example, Task
from bon_jax.tasks.sentiment import SentimentScorer


@dataclasses.dataclass(frozen=True)
class Samples:
    """M samples of each of B prompts, as a verifier sees them. Every field is optional, but there are texts
    or tokens.

    Attributes:
      tokens_BMT: int completion tokens; entries past each length are ignored (with `lengths_BM`).
      lengths_BM: int number of real completion tokens (eos included when the completion has one).
      prompt_tokens_BT: int prompts, left-padded with pad, bos first (what the sampler prefilled). A verifier
        that needs prompt tokens and lacks them encodes `example.prompt` itself.
      texts_BM: the completions as text (eos not shown), B rows of M.
      rewards_BM: the task's rewards R of the completions, when they are graded.
    """

    tokens_BMT: np.ndarray | None = None
    lengths_BM: np.ndarray | None = None
    prompt_tokens_BT: np.ndarray | None = None
    texts_BM: Sequence[Sequence[str]] | None = None
    rewards_BM: np.ndarray | None = None

    def __post_init__(self):
        if (self.tokens_BMT is None) != (self.lengths_BM is None):
            raise ValueError("Samples: tokens_BMT and lengths_BM come together")
        if self.tokens_BMT is None and self.texts_BM is None:
            raise ValueError("Samples: needs texts_BM or tokens_BMT and lengths_BM")
        shape = None
        if self.tokens_BMT is not None:
            t, n = np.shape(self.tokens_BMT), np.shape(self.lengths_BM)
            if len(t) != 3 or tuple(t[:2]) != tuple(n):
                raise ValueError(f"Samples: tokens {t} and lengths {n} are not [B, M, T] and [B, M]")
            shape = tuple(n)
        if self.texts_BM is not None:
            texts_shape = _text_shape(self.texts_BM)
            if shape is not None and texts_shape != shape:
                raise ValueError(f"Samples: texts are {texts_shape} but tokens are {shape}")
            shape = texts_shape
        if self.prompt_tokens_BT is not None:
            p = np.shape(self.prompt_tokens_BT)
            if len(p) != 2 or p[0] != shape[0]:
                raise ValueError(f"Samples: prompt tokens {p} are not [B={shape[0]}, Tp]")
        if self.rewards_BM is not None and np.shape(self.rewards_BM) != shape:
            raise ValueError(f"Samples: rewards {np.shape(self.rewards_BM)} are not [B, M] = {shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.lengths_BM)) if self.lengths_BM is not None else _text_shape(self.texts_BM)


def _text_shape(texts_BM) -> tuple[int, int]:
    B = len(texts_BM)
    M = len(texts_BM[0]) if B else 0
    for row in texts_BM:
        if isinstance(row, str):
            raise TypeError("completions must be B rows of M strings, got a row that is a string")
        if len(row) != M:
            raise ValueError("completions: rows of different lengths")
    return B, M


Completions = Sequence[Sequence[str]] | Samples


@runtime_checkable
class Verifier(Protocol):
    """Scores completions of prompts: float32 [B, M], higher = better."""

    def score(self, examples_B: Sequence[Example], samples: Completions) -> np.ndarray:
        ...


def group_shape(examples_B: Sequence[Example], samples: Completions) -> tuple[int, int]:
    """(B, M), after checking that there is one row of M completions per example."""
    B, M = samples.shape if isinstance(samples, Samples) else _text_shape(samples)
    if B != len(examples_B):
        raise ValueError(f"{len(examples_B)} examples but {B} rows of completions")
    return B, M


def completion_texts(samples: Completions, tokenizer=None) -> list[list[str]]:
    """Completions as text: strings pass through; tokens are cut at their length and decoded (up to eos)."""
    if not isinstance(samples, Samples):
        return [list(row) for row in samples]
    if samples.texts_BM is not None:
        return [list(row) for row in samples.texts_BM]
    if tokenizer is None:
        raise ValueError("scoring completion tokens as text needs a tokenizer")
    tokens_BMT = np.asarray(samples.tokens_BMT)
    lengths_BM = np.asarray(samples.lengths_BM)
    B, M = lengths_BM.shape
    return [[tokenizer.decode(tokens_BMT[b, n, : max(int(lengths_BM[b, n]), 0)]) for n in range(M)]
            for b in range(B)]


class OracleVerifier:
    """The ground truth as a verifier: s(x, y) = R(x, y), the task's reward: the samples' `rewards_BM` when
    they are graded, else `task.grade_batch` of their texts.

    BoN with it is pass@N-style selection (BoN-RL-S). `task` is needed only for ungraded samples,
    `tokenizer` only for ungraded token inputs.
    """

    def __init__(self, task: Task | None = None, tokenizer=None):
        self.task = task
        self.tokenizer = tokenizer

    def score(self, examples_B: Sequence[Example], samples: Completions) -> np.ndarray:
        B, M = group_shape(examples_B, samples)
        if isinstance(samples, Samples) and samples.rewards_BM is not None:
            return np.asarray(samples.rewards_BM, np.float32).reshape(B, M)
        if B == 0 or M == 0:
            return np.zeros((B, M), np.float32)
        if self.task is None:
            raise ValueError("OracleVerifier without a task scores graded samples only (Samples.rewards_BM)")
        texts = completion_texts(samples, self.tokenizer)
        return np.asarray(self.task.grade_batch(examples_B, texts).rewards_BM, np.float32).reshape(B, M)


class SentimentVerifier:
    """VADER positive-class score (compound + 1) / 2 in [0, 1] (`SentimentScorer`) of prompt + completion
    (`score_on='full'`, as Amini et al.) or of the completion alone (`score_on='completion'`).

    Completion text is joined to the prompt as given, so it should carry its leading space.
    """

    def __init__(self, scorer=None, *, score_on: str = "full", tokenizer=None):
        if score_on not in ("full", "completion"):
            raise ValueError(f"score_on must be 'full' or 'completion', got {score_on!r}")
        if scorer is None:
            scorer = SentimentScorer()
        self.scorer = scorer
        self.score_on = score_on
        self.tokenizer = tokenizer

    def score(self, examples_B: Sequence[Example], samples: Completions) -> np.ndarray:
        B, M = group_shape(examples_B, samples)
        rows = completion_texts(samples, self.tokenizer)
        texts = [(ex.prompt + c if self.score_on == "full" else c) for ex, row in zip(examples_B, rows)
                 for c in row]
        if not texts:
            return np.zeros((B, M), np.float32)
        return np.asarray(self.scorer.score_texts(texts), np.float32).reshape(B, M)
