"""The verifier interface s(x, y) and the two verifiers that need no training: the oracle and sentiment.

    score(examples_B, completions_BM) -> scores_BM   float32 [B, M], higher = more likely correct / better

Best-of-N selects by these scores (s in docs/maths.md), so only their order within a row matters to selection;
`LearnedVerifier` returns logits, the oracle the task reward R itself, the sentiment verifier a score in
[0, 1].

Completions come as text (`list[list[str]]`, B rows of M) or as a sampler's tokens (`CompletionTokens`).
Text verifiers decode tokens with the tokenizer they were given; the learned verifier scores tokens
directly (no decode / re-encode round trip).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from bon_jax.tasks.base import Example, Task
from bon_jax.tasks.sentiment import SentimentScorer


@dataclasses.dataclass(frozen=True)
class CompletionTokens:
    """A sampler's output for B prompts x M samples.

    Attributes:
      tokens_BMT: int completion tokens; entries past each length are ignored.
      lengths_BM: int number of real completion tokens (eos included when the completion has one).
      prompt_tokens_BT: int prompts, left-padded with pad, bos first (what the sampler prefilled). Optional:
        a verifier that needs prompt tokens and lacks them encodes `example.prompt` itself.
    """

    tokens_BMT: np.ndarray
    lengths_BM: np.ndarray
    prompt_tokens_BT: np.ndarray | None = None

    def __post_init__(self):
        t, n = np.shape(self.tokens_BMT), np.shape(self.lengths_BM)
        if len(t) != 3 or tuple(t[:2]) != tuple(n):
            raise ValueError(f"CompletionTokens: tokens {t} and lengths {n} are not [B, M, T] and [B, M]")
        if self.prompt_tokens_BT is not None:
            p = np.shape(self.prompt_tokens_BT)
            if len(p) != 2 or p[0] != t[0]:
                raise ValueError(f"CompletionTokens: prompt tokens {p} are not [B={t[0]}, Tp]")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(np.shape(self.lengths_BM))


Completions = Sequence[Sequence[str]] | CompletionTokens


@runtime_checkable
class Verifier(Protocol):
    """Scores completions of prompts: float32 [B, M], higher = better."""

    def score(self, examples_B: Sequence[Example], completions_BM: Completions) -> np.ndarray:
        ...


def group_shape(examples_B: Sequence[Example], completions_BM: Completions) -> tuple[int, int]:
    """(B, M), after checking that there is one row of M completions per example."""
    if isinstance(completions_BM, CompletionTokens):
        B, M = completions_BM.shape
    else:
        B = len(completions_BM)
        M = len(completions_BM[0]) if B else 0
        if any(len(row) != M for row in completions_BM):
            raise ValueError("completions: rows of different lengths")
        for row in completions_BM:
            if isinstance(row, str):
                raise TypeError("completions must be B rows of M strings, got a row that is a string")
    if B != len(examples_B):
        raise ValueError(f"{len(examples_B)} examples but {B} rows of completions")
    return B, M


def completion_texts(completions_BM: Completions, tokenizer=None) -> list[list[str]]:
    """Completions as text: strings pass through; tokens are cut at their length and decoded (up to eos)."""
    if not isinstance(completions_BM, CompletionTokens):
        return [list(row) for row in completions_BM]
    if tokenizer is None:
        raise ValueError("scoring completion tokens as text needs a tokenizer")
    tokens_BMT = np.asarray(completions_BM.tokens_BMT)
    lengths_BM = np.asarray(completions_BM.lengths_BM)
    B, M = lengths_BM.shape
    return [[tokenizer.decode(tokens_BMT[b, n, : max(int(lengths_BM[b, n]), 0)]) for n in range(M)]
            for b in range(B)]


class OracleVerifier:
    """The ground truth as a verifier: s(x, y) = R(x, y), the task's reward (`task.grade_batch`).

    BoN with it is pass@N-style selection (BoN-RL-S). `tokenizer` is needed only for token inputs.
    """

    def __init__(self, task: Task, tokenizer=None):
        self.task = task
        self.tokenizer = tokenizer

    def score(self, examples_B: Sequence[Example], completions_BM: Completions) -> np.ndarray:
        B, M = group_shape(examples_B, completions_BM)
        if B == 0 or M == 0:
            return np.zeros((B, M), np.float32)
        texts = completion_texts(completions_BM, self.tokenizer)
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

    def score(self, examples_B: Sequence[Example], completions_BM: Completions) -> np.ndarray:
        B, M = group_shape(examples_B, completions_BM)
        rows = completion_texts(completions_BM, self.tokenizer)
        texts = [(ex.prompt + c if self.score_on == "full" else c) for ex, row in zip(examples_B, rows)
                 for c in row]
        if not texts:
            return np.zeros((B, M), np.float32)
        return np.asarray(self.scorer.score_texts(texts), np.float32).reshape(B, M)
