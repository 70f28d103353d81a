"""Prompt batches for the trainer: a grain `MapDataset` pipeline with a resumable, JSON-serialisable state.

    source (Examples, or TFDS rows)            index i  ->  (i, prompt_i)
      -> shuffle(seed)                         a permutation per epoch (grain folds the epoch into the seed)
      -> repeat(num_epochs)                    None: forever
      -> [shard_index::shard_count]            this process's share of the global stream
      -> batch(batch_size)                     per-process batch
      -> TokenizePrompts                       {"prompt_tokens_BT", "prompt_lengths_B", "index_B"}

The shuffle is global and sharding takes every `shard_count`-th element of the shuffled stream, so in
every epoch the processes see disjoint examples that together cover the data (up to the last
`len % shard_count` elements when `ShardOptions.drop_remainder`, which keeps every process's stream
the same length -- multi-host steps must stay in lockstep), and over epochs each process sees all
examples. `batch_size` is per process: the global batch is `batch_size * shard_count`.
The default sharding is `grain.sharding.ShardByJaxProcess(drop_remainder=True)`, i.e.
`(jax.process_index(), jax.process_count())`.

`index_B` holds indices into the source, so the trainer grades with `examples[index_B[b]]`.
Tokens come from any object with the `bon_jax.tokenizer.Tokenizer` interface
`encode_batch(texts, buckets=, pad_side=, add_bos=, max_len=, truncate=) -> (tokens_BT, lengths_B)`:
rows are padded to the smallest length bucket that holds the batch's longest prompt.

The iterator's state is `{"next_index": <batches consumed>, ...the pipeline's settings}`, plain JSON:
a checkpoint stores it and `set_state` resumes at exactly the next batch (an element's content depends
only on its position and the settings, so a fresh iterator needs no replay). `set_state` refuses a
state written by a pipeline with other settings.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from bon_jax.tasks.base import Example


def example_prompt(row: Any) -> str:
    """The prompt text of a source row: an `Example`, or a TFDS row with a "prompt" field."""
    if isinstance(row, Example):
        return row.prompt
    if isinstance(row, Mapping) and "prompt" in row:
        prompt = row["prompt"]
        return prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
    raise TypeError(f"cannot find a prompt in a {type(row).__name__}; pass prompt_fn=")


class _IndexAndPrompt(grain.transforms.MapWithIndex):
    """(i, row) -> (i % n, prompt): a class, not a lambda, so that the pipeline pickles."""

    def __init__(self, n: int, prompt_fn: Callable[[Any], str]):
        self.n = n
        self.prompt_fn = prompt_fn

    def map_with_index(self, index: int, row: Any) -> tuple[int, str]:
        return index % self.n, self.prompt_fn(row)


def _collate(elements: Sequence[tuple[int, str]]) -> dict[str, Any]:
    return {
        "index_B": np.asarray([i for i, _ in elements], dtype=np.int32),
        "prompts": [p for _, p in elements],
    }


class TokenizePrompts(grain.transforms.Map):
    """Batch of {"index_B", "prompts"} -> {"prompt_tokens_BT", "prompt_lengths_B", "index_B"}."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        buckets: Sequence[int] | None,
        pad_side: str = "left",
        add_bos: bool = True,
        max_len: int | None = None,
        truncate: bool = False,
    ):
        self.tokenizer = tokenizer
        self.buckets = None if buckets is None else tuple(int(b) for b in buckets)
        self.pad_side = pad_side
        self.add_bos = add_bos
        self.max_len = max_len
        self.truncate = truncate

    def map(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        tokens_BT, lengths_B = self.tokenizer.encode_batch(
            batch["prompts"],
            buckets=self.buckets,
            pad_side=self.pad_side,
            add_bos=self.add_bos,
            max_len=self.max_len,
            truncate=self.truncate,
        )
        return {
            "prompt_tokens_BT": np.asarray(tokens_BT, dtype=np.int32),
            "prompt_lengths_B": np.asarray(lengths_B, dtype=np.int32),
            "index_B": batch["index_B"],
        }


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """The settings that fix the stream of batches (and must match when a state is restored)."""

    num_examples: int
    batch_size: int
    seed: int
    shuffle: bool
    num_epochs: int | None
    shard_index: int
    shard_count: int
    shard_drop_remainder: bool
    drop_remainder: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _resolve_shard(shard_options) -> tuple[int, int, bool]:
    if shard_options is None:
        shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    index, count = int(shard_options.shard_index), int(shard_options.shard_count)
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"bad shard options: index {index} of {count}")
    return index, count, bool(shard_options.drop_remainder)


def prompt_dataset(
    source: Sequence[Any],
    *,
    tokenizer: Any,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_options: Any = None,
    drop_remainder: bool = True,
    buckets: Sequence[int] | None = (16, 32, 64, 128, 256, 512, 1024, 2048),
    pad_side: str = "left",
    add_bos: bool = True,
    max_len: int | None = None,
    truncate: bool = False,
    prompt_fn: Callable[[Any], str] = example_prompt,
) -> tuple[grain.MapDataset, PipelineSpec]:
    """The grain `MapDataset` of tokenised prompt batches, and the spec that fixes it.

    Args:
      source: random access rows -- a list of `Example`s (`task.examples(split)`), a
        `bon_jax.data.sources.LazyExamples`, or a TFDS data source whose rows have "prompt".
      tokenizer: has `encode_batch` (module docstring); must pickle for multiprocess prefetch.
      batch_size: per-process batch size.
      seed: shuffle seed (0 <= seed < 2**32); each epoch gets its own permutation.
      shuffle: False keeps source order (evaluation).
      num_epochs: passes over the data; None repeats forever.
      shard_options: a `grain.sharding.ShardOptions`; default `ShardByJaxProcess(drop_remainder=True)`.
      drop_remainder: drop a final short batch (keeps shapes static). Evaluation passes False.
      buckets, pad_side, add_bos, max_len, truncate: forwarded to `tokenizer.encode_batch`.
      prompt_fn: row -> prompt text.
    """
    n = len(source)
    if n == 0:
        raise ValueError("prompt_dataset: the source is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None or positive, got {num_epochs}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    shard_index, shard_count, shard_drop = _resolve_shard(shard_options)
    spec = PipelineSpec(
        num_examples=n,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        shard_drop_remainder=shard_drop,
        drop_remainder=drop_remainder,
    )
    # grain reads index i of a repeated dataset as i % len at the source, and map_with_index sees
    # the unreduced i: reduce it so that index_B always indexes `source`.
    ds = grain.MapDataset.source(source).map_with_index(_IndexAndPrompt(n, prompt_fn))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if shard_count > 1:
        if shard_drop and len(ds) != sys.maxsize:
            ds = ds[: len(ds) - len(ds) % shard_count]
        ds = ds[shard_index::shard_count]
    if len(ds) < batch_size and drop_remainder:
        raise ValueError(
            f"this process gets {len(ds)} examples, fewer than one batch of {batch_size} "
            "(with drop_remainder=True there would be no batch at all)"
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=_collate)
    ds = ds.map(
        TokenizePrompts(
            tokenizer,
            buckets=buckets,
            pad_side=pad_side,
            add_bos=add_bos,
            max_len=max_len,
            truncate=truncate,
        )
    )
    return ds, spec


class PromptBatches:
    """An iterable of prompt batches whose iterators checkpoint as JSON (`get_state` / `set_state`).

    `len()` is the number of batches of a finite pipeline. Iterate with `iter(batches)`; each
    iterator starts at batch 0 unless given a state.
    """

    def __init__(
        self,
        source: Sequence[Any],
        *,
        tokenizer: Any,
        batch_size: int,
        read_options: grain.ReadOptions | None = None,
        **kwargs,
    ):
        self.dataset, self.spec = prompt_dataset(source, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
        self._read_options = read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)

    def __len__(self) -> int:
        if self.spec.num_epochs is None:
            raise TypeError("an infinite pipeline (num_epochs=None) has no length")
        return len(self.dataset)

    def __iter__(self) -> PromptIterator:
        return PromptIterator(self)

    def iterator(self, state: Mapping[str, Any] | None = None) -> PromptIterator:
        it = PromptIterator(self)
        if state is not None:
            it.set_state(state)
        return it


class PromptIterator(Iterator[dict[str, np.ndarray]]):
    """Iterator over `PromptBatches` with a JSON-serialisable, validated state."""

    def __init__(self, batches: PromptBatches):
        self._batches = batches
        self._it = batches.dataset.to_iter_dataset(batches._read_options).__iter__()

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """{"next_index": batches consumed, plus the spec}; plain ints / bools / None only."""
        inner = self._it.get_state()
        return {"next_index": int(inner["next_index"]), **self._batches.spec.as_dict()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes at `state["next_index"]`; ValueError if `state` came from different settings."""
        expected = self._batches.spec.as_dict()
        diff = {
            k: (state.get(k, "<missing>"), v) for k, v in expected.items() if state.get(k, "<missing>") != v
        }
        if diff:
            detail = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"iterator state is from a different pipeline ({detail})")
        next_index = state.get("next_index")
        if not isinstance(next_index, int) or next_index < 0:
            raise ValueError(f"iterator state has a bad next_index: {next_index!r}")
        self._it.set_state({"next_index": next_index})

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
