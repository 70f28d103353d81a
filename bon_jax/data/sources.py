"""Random-access sources of examples: TFDS array_record splits (no TensorFlow) and deterministic carves.

The readers the tasks use themselves (`open_tfds_split`, `decode_record`, `holdout_fraction`) live in
`bon_jax.tasks.splits`, below the tasks, and are re-exported here; this module adds what is built on
`Example`s: lazy example sequences and the generic task builder's flat records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bon_jax.errors import DataError
from bon_jax.tasks.base import Example
from bon_jax.tasks.splits import decode_record, decode_value, holdout_fraction, open_tfds_split

__all__ = [
    "EXAMPLE_FIELDS", "TASK_BUILDER_NAME", "LazyExamples", "decode_record", "decode_value", "example_to_record",
    "holdout_fraction", "open_tfds_split", "record_to_example", "task_examples",
]


class LazyExamples(Sequence):
    """A read-only sequence of `Example`s converted on access from a random-access source.

    `source` is anything with `__len__` and `__getitem__(int)` (a TFDS / grain data source);
    `to_example` maps one row to an `Example`; `indices` optionally restricts and reorders rows.
    """

    def __init__(
        self,
        source: Any,
        to_example: Callable[[Any], Example],
        indices: Sequence[int] | None = None,
    ):
        self._source = source
        self._to_example = to_example
        self._indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._source) if self._indices is None else len(self._indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} examples")
        i %= n
        row = i if self._indices is None else int(self._indices[i])
        return self._to_example(self._source[row])

    def __repr__(self) -> str:
        return f"LazyExamples({len(self)} examples from {self._source!r})"


# ---------------------------------------------------------------------------------------------------
# Examples <-> flat records of strings (what the generic TFDS task builder stores).

EXAMPLE_FIELDS = ("id", "prompt", "reference", "answer", "meta")


def example_to_record(example: Example) -> dict[str, str]:
    """An `Example` as strings: None reference/answer become "" plus a presence flag in `meta`."""
    try:
        meta = json.dumps(
            {
                "meta": dict(example.meta),
                "has_reference": example.reference is not None,
                "has_answer": example.answer is not None,
            },
            sort_keys=True,
        )
    except TypeError as e:
        raise DataError(f"example {example.id}", f"meta is not JSON-serialisable: {e}") from e
    return {
        "id": example.id,
        "prompt": example.prompt,
        "reference": example.reference or "",
        "answer": example.answer or "",
        "meta": meta,
    }


def record_to_example(record: Mapping[str, Any]) -> Example:
    """The inverse of `example_to_record` (accepts raw TFDS rows: bytes are decoded)."""
    r = decode_record(record)
    extra = json.loads(r["meta"])
    return Example(
        id=r["id"],
        prompt=r["prompt"],
        reference=r["reference"] if extra["has_reference"] else None,
        answer=r["answer"] if extra["has_answer"] else None,
        meta=extra["meta"],
    )


TASK_BUILDER_NAME = "bon_task"


def task_examples(data_dir: str | os.PathLike, task_name: str, split: str) -> LazyExamples:
    """The `Example`s of a split written by `tfds_builders.prepare_task`, read lazily (no TensorFlow)."""
    source = open_tfds_split(f"{TASK_BUILDER_NAME}/{task_name}", data_dir, split)
    return LazyExamples(source, record_to_example)
