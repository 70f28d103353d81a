"""Reading a task's raw splits: TFDS array_record sources (no TensorFlow), decoded rows, deterministic carves.

`tfds.data_source` reads a split prepared with `file_format='array_record'` through `array_record`
and decodes rows with numpy: TensorFlow is never imported. `tfds.load` (and any split prepared as
tfrecord, the TFDS default) needs TensorFlow; `open_tfds_split` refuses tfrecord splits with a
DataError that says how to convert them.

These sit below the tasks (which read their data with them) and below `bon_jax.data` (which prepares
TFDS splits from tasks and re-exports these from `bon_jax.data.sources`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from bon_jax.errors import DataError


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
    # Deferred: importing tensorflow_datasets takes seconds, and only runs that read a prepared TFDS split
    # need it (the embedded tasks, the tokenizer and the models never do).
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
