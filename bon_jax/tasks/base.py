"""The task interface: prompts, reference solutions and ground-truth grading.

A task knows nothing about tokens or models. It yields `Example`s and grades completion *text*:
`reward` is the ground truth R(x, y) of docs/maths.md, `answer` the extracted final answer (for majority
voting), `reason` why a completion failed (unparsable, wrong, timed out, ...).

Grading a `[B, M]` batch goes through `Task.grade_batch`, which returns arrays; tasks whose grading is
expensive (code execution) override it to run in parallel.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt of a task.

    Attributes:
      id: stable identifier, unique within the task (splits never share one).
      prompt: the text the policy continues.
      reference: a reference completion (worked solution / canonical code), for SFT and imitation.
      answer: the reference final answer, when the task has one.
      meta: task-specific fields (unit tests, entry point, difficulty level, ...).
    """

    id: str
    prompt: str
    reference: str | None = None
    answer: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Grade:
    """The grade of one completion: reward (float), extracted answer, and why it failed if it did."""

    reward: float
    answer: str | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Grades:
    """Grades of a `[B, M]` batch of completions.

    rewards_BM: float32 rewards. answers_BM: object array of extracted answers (None if unparsable).
    reasons_BM: object array of failure reasons (None where the completion was graded normally).
    """

    rewards_BM: np.ndarray
    answers_BM: np.ndarray
    reasons_BM: np.ndarray


class Task(abc.ABC):
    """Base class. Subclasses set `name`, implement `examples` and `grade`; may override `grade_batch`."""

    name: str = "task"
    splits: tuple[str, ...] = ("train", "validation", "test")

    @abc.abstractmethod
    def examples(self, split: str) -> Sequence[Example]:
        """All examples of `split` (one of `self.splits`), in a fixed order."""

    @abc.abstractmethod
    def grade(self, example: Example, completion: str) -> Grade:
        """Grades one completion of `example.prompt`. Never raises on bad completion text."""

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers (`Grade.answer`) are the same final answer, for majority voting
        (`bon_jax.metrics.answers_to_ids`). Symmetric. The default compares the strings; tasks whose answers
        have many written forms override it."""
        return a == b

    def line_labels(self, completion: str) -> list[bool | None] | None:
        """A step oracle for process verifiers (`bon_jax.verifiers.steps`): one entry per line of
        `completion.split("\\n")`, True / False for a step that is right / wrong, None for a line that is
        not a step. None (the default) for a task without one. Must not raise on bad completion text."""
        return None

    def grade_batch(self, examples_B: Sequence[Example], completions_BM: Sequence[Sequence[str]]) -> Grades:
        """Grades every completion; the default loops in Python (cheap graders only)."""
        batch_shape(examples_B, completions_BM)
        grades = [[self.grade(ex, c) for c in row] for ex, row in zip(examples_B, completions_BM)]
        return stack_grades(grades)


def batch_shape(examples_B: Sequence[Example], completions_BM: Sequence[Sequence[str]]) -> tuple[int, int]:
    """(B, M) of a grading batch; refuses a row count that differs from the examples, or ragged rows."""
    if len(examples_B) != len(completions_BM):
        raise ValueError(f"grade_batch: {len(examples_B)} examples but {len(completions_BM)} rows of completions")
    widths = sorted({len(row) for row in completions_BM})
    if len(widths) > 1:
        raise ValueError(f"grade_batch: rows of different lengths {widths}")
    return len(examples_B), (widths[0] if widths else 0)


def stack_grades(grades_BM: Sequence[Sequence[Grade]]) -> Grades:
    """Turns nested lists of `Grade` (all rows the same length) into a `Grades` of arrays."""
    B = len(grades_BM)
    M = len(grades_BM[0]) if B else 0
    if any(len(row) != M for row in grades_BM):
        raise ValueError("stack_grades: rows of different lengths")
    rewards = np.zeros((B, M), np.float32)
    answers = np.empty((B, M), object)
    reasons = np.empty((B, M), object)
    for b, row in enumerate(grades_BM):
        for n, g in enumerate(row):
            rewards[b, n] = g.reward
            answers[b, n] = g.answer
            reasons[b, n] = g.reason
    return Grades(rewards, answers, reasons)
