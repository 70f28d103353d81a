"""TFDS builders that prepare local data as array_record, readable by `tfds.data_source` without TensorFlow.

Preparation and reading both run without TensorFlow installed (tfds 4.9: `GeneratorBasedBuilder`
encodes rows with its numpy feature codecs and writes array_record shards; `tfds.data_source` decodes
them with numpy). Only `tfds.load` / `as_dataset` and tfrecord files need TensorFlow; nothing here
uses them. Every builder is created with `file_format='array_record'`.

- `HendrycksMath` ("hendrycks_math"): MATH from a manual dir in the official layout or as jsonl
  (see `bon_jax.tasks.math`); features id/problem/solution/answer/level/type (text); splits
  train, test, and math500 when the manual dir holds `math500.jsonl` or `math500_ids.txt`.
- `ImdbReviewsLocal`: the stock `imdb_reviews` builder (same name, config, version 1.0.0, features
  text/label, splits train/test/unsupervised), fed from a local `aclImdb_v1.tar.gz` or extracted
  `aclImdb/` folder in the manual dir instead of a download. What it writes is what
  `tfds.data_source('imdb_reviews', data_dir=..., download=False)` reads.
- `TaskExamples` ("bon_task/<task name>"): any `Task`'s examples (id/prompt/reference/answer/meta as
  text, meta JSON) -- e.g. the embedded tasks -- so they reach grain through the same path as real data.

The builders are not registered in the TFDS registry (`skip_registration=True`), so `tfds.data_source`
always reads the prepared files' own metadata; import this module only to *prepare* data.

    data_dir = prepare_math("~/tfds", "/path/to/MATH")      # or prepare_imdb / prepare_task
    tfds.data_source("hendrycks_math", data_dir="~/tfds", download=False)["test"][0]
"""

from __future__ import annotations

import inspect
import io
import os
import tarfile
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from bon_jax.data import sources
from bon_jax.errors import DataError
from bon_jax.tasks import math as math_task
from bon_jax.tasks.base import Task

FILE_FORMAT = "array_record"


class _CodePathMixin:
    """Works around tfds 4.9.x `DatasetBuilder.code_path` on Python >= 3.9 for builders outside tfds.

    For a builder defined in an installed package, tfds evaluates
    `isinstance(path, importlib_resources.abc.Traversable)`, which imports the `importlib_resources`
    backport that tfds only requires on Python < 3.9 -- ModuleNotFoundError. We return what tfds
    falls back to anyway: the file that defines the class.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None


class HendrycksMath(_CodePathMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """MATH (Hendrycks et al., 2021) from local files."""

    name = math_task.TFDS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From the official MATH layout or jsonl (PRM800K / MATH-500)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put one of these in the manual dir:
    - the official release (github.com/hendrycks/math, MATH.tar): train/<subject>/<n>.json and
      test/<subject>/<n>.json;
    - train.jsonl and test.jsonl (e.g. PRM800K's math_splits), one problem per line with problem,
      solution, and optionally answer, level, type/subject, unique_id.
    Optionally add math500.jsonl (MATH-500 rows) or math500_ids.txt (one unique_id per line) to get
    a "math500" split.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="MATH competition problems with worked solutions and final answers.",
            features=tfds.features.FeaturesDict(
                {field: tfds.features.Text() for field in math_task.RECORD_FIELDS}
            ),
            homepage="https://github.com/hendrycks/math",
        )

    def _split_generators(self, dl_manager):
        manual = Path(os.fspath(dl_manager.manual_dir))
        layout = math_task.detect_layout(manual)
        if layout == "tfds":
            raise DataError(manual, "the manual dir must hold raw MATH files, not a TFDS data dir")
        splits = {}
        for split in ("train", "test"):
            present = (
                (manual / split).is_dir() if layout == "official" else (manual / f"{split}.jsonl").is_file()
            )
            if present:
                splits[split] = self._generate_examples(math_task.read_raw_split(manual, split, layout))
        try:
            subset_file = math_task.find_subset_file(manual)
        except DataError:
            subset_file = None
        if subset_file is not None:
            full_test = lambda: math_task.read_raw_split(manual, "test", layout)  # noqa: E731
            splits["math500"] = self._generate_examples(math_task.read_math500(subset_file, full_test))
        if not splits:
            raise DataError(manual, "no MATH split found")
        return splits

    def _generate_examples(self, records):
        for r in records:
            yield r["id"], {field: r[field] for field in math_task.RECORD_FIELDS}


try:  # the stock builder lives in a module that tfds may move between releases
    from tensorflow_datasets.datasets.imdb_reviews.imdb_reviews_dataset_builder import (
        Builder as _StockImdb,
    )
except ImportError:  # pragma: no cover - older tfds
    from tensorflow_datasets.text.imdb import IMDBReviews as _StockImdb


class ImdbReviewsLocal(_CodePathMixin, _StockImdb, skip_registration=True):
    """The stock `imdb_reviews` builder reading a local archive or folder instead of downloading."""

    name = "imdb_reviews"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put aclImdb_v1.tar.gz (https://ai.stanford.edu/~amaas/data/sentiment/) or its extracted aclImdb/
    folder in the manual dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        # Same features and supervised keys as the stock builder (whose _info reads package metadata
        # that a subclass outside tfds does not have).
        return tfds.core.DatasetInfo(
            builder=self,
            description="Large Movie Review Dataset (Maas et al., 2011), prepared from local files.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                }
            ),
            supervised_keys=("text", "label"),
            homepage="http://ai.stanford.edu/~amaas/data/sentiment/",
        )

    def _split_generators(self, dl_manager):
        manual = Path(os.fspath(dl_manager.manual_dir))
        archive_path = manual / "aclImdb_v1.tar.gz"
        folder = manual / "aclImdb"
        if archive_path.is_file():
            # Not dl_manager.iter_archive: tfds opens local archives with tf.io.gfile (TensorFlow).
            archive = lambda: _iter_tar(archive_path)  # noqa: E731
        elif folder.is_dir():
            archive = lambda: _iter_folder(manual, folder)  # noqa: E731
        else:
            raise DataError(manual, "expected aclImdb_v1.tar.gz or an aclImdb/ folder")
        train, test = "aclImdb/train", "aclImdb/test"
        return {
            "train": self._generate_examples(archive(), train),
            "test": self._generate_examples(archive(), test),
            "unsupervised": self._generate_examples(archive(), train, labeled=False),
        }


def _iter_tar(path: Path):
    """(member path, file object) of every regular file of a tar archive, read with `tarfile`."""
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, io.BytesIO(tar.extractfile(member).read())


def _iter_folder(base: Path, folder: Path):
    """(posix path relative to `base`, file object) of every file, as `iter_archive` yields them."""
    for path in sorted(folder.rglob("*.txt")):
        yield path.relative_to(base).as_posix(), io.BytesIO(path.read_bytes())


class TaskExamples(_CodePathMixin, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Any task's examples as text rows; one builder config per task (named after the task)."""

    name = sources.TASK_BUILDER_NAME
    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, task: Task, splits=None, **kwargs):
        self._task = task
        self._splits = tuple(splits or task.splits)
        config = tfds.core.BuilderConfig(name=task.name, description=f"Examples of task {task.name!r}.")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Examples (id, prompt, reference, answer, meta as JSON) of a bon_jax task.",
            features=tfds.features.FeaturesDict(
                {field: tfds.features.Text() for field in sources.EXAMPLE_FIELDS}
            ),
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split):
        for ex in self._task.examples(split):
            yield ex.id, sources.example_to_record(ex)


# ---------------------------------------------------------------------------------------------------
# One-call preparation.


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir=None) -> tfds.core.DatasetBuilder:
    config = tfds.download.DownloadConfig(manual_dir=None if manual_dir is None else os.fspath(manual_dir))
    builder.download_and_prepare(download_config=config, file_format=FILE_FORMAT)
    return builder


def prepare_math(data_dir: str | os.PathLike, manual_dir: str | os.PathLike):
    """Prepares `hendrycks_math` under `data_dir` from the raw MATH files in `manual_dir`."""
    return _prepare(HendrycksMath(data_dir=os.fspath(data_dir), file_format=FILE_FORMAT), manual_dir)


def prepare_imdb(data_dir: str | os.PathLike, manual_dir: str | os.PathLike):
    """Prepares `imdb_reviews` (array_record) under `data_dir` from aclImdb in `manual_dir`."""
    return _prepare(ImdbReviewsLocal(data_dir=os.fspath(data_dir), file_format=FILE_FORMAT), manual_dir)


def prepare_task(task: Task, data_dir: str | os.PathLike, splits=None):
    """Prepares `bon_task/<task.name>` under `data_dir` from `task.examples(split)`."""
    builder = TaskExamples(task=task, splits=splits, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
    return _prepare(builder)
