"""Random-access sources of examples: TFDS array_record splits (no TensorFlow) and deterministic carves.

`tfds.data_source` reads a split prepared with `file_format='array_record'` through `array_record`
and decodes rows with numpy: TensorFlow is never imported. `tfds.load` (and any split prepared as
tfrecord, the TFDS default) needs TensorFlow; `open_tfds_split` refuses tfrecord splits with a
DataError that says how to convert them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from bon_jax.errors import DataError
from bon_jax.tasks.base import Example


def holdout_fraction(namespace: str, example_id: str) -> float:
    """A uniform number in [0, 1) fixed by (`namespace`, `example_id`): sha256, first 8 bytes.

    Splits carved with `holdout_fraction(ns, id) < fraction` are deterministic, independent of file
    order, and stable: an example never changes side when others are added or removed.
    """
    digest = hashlib.sha256(f"{namespace}\x00{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def decode_value(value: Any) -> Any:
    """A TFDS numpy value as plain Python: bytes -> str (utf-8), numpy scalars -> int/float."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind == "S":
            return [decode_value(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A TFDS row (dict of numpy values / bytes) with every value decoded by `decode_value`."""
    return {k: decode_value(v) for k, v in record.items()}


def open_tfds_split(name: str, data_dir: str | os.PathLike, split: str):
    """`tfds.data_source(name, split=split, data_dir=data_dir, download=False)`, with checks.

    Raises DataError (naming the directory) when the dataset is not prepared there, was prepared in
    a format other than array_record, or lacks `split`. Returns a random-access source whose rows
    are dicts of numpy values (text as bytes).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    except Exception as e:  # noqa: BLE001 - tfds raises several types for a missing dataset
        raise DataError(data_dir, f"no TFDS dataset {name!r} here: {e}") from e
    where = builder.data_dir
    if not builder.is_prepared():
        raise DataError(where, f"TFDS dataset {name!r} is not prepared here")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise DataError(
            where,
            f"prepared as {file_format!r}; only array_record can be read without TensorFlow. "
            "Re-prepare it with file_format='array_record' (bon_jax.data.tfds_builders.prepare), or "
            "convert it where TensorFlow is installed: "
            f"tfds convert_format --dataset_dir={where} --out_file_format=array_record",
        )
    if split not in builder.info.splits:
        raise DataError(where, f"no split {split!r}; it has {sorted(builder.info.splits)}")
    return tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)


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
