"""Errors that name the problem: bad data rows (with file and line) and bad configs (with the key)."""

from __future__ import annotations


class BonJaxError(Exception):
    """Base class of bon_jax's own errors."""


class DataError(BonJaxError, ValueError):
    """A malformed data file or row. The message names the file and, where known, the 1-based line."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class ConfigError(BonJaxError, ValueError):
    """An invalid experiment config, refused before any compute. Names the key and the fix."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"config.{key}: {message}")


class NonFiniteScoreError(BonJaxError, ValueError):
    """A verifier score that cannot be ranked (NaN). The message names the prompt."""
