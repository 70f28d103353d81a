"""Stage outputs cached on disk, keyed by the part of the config each stage depends on.

A stage's directory is `<root>/<stage>-<key>` where `key` hashes the config sections the stage reads plus
the keys of the stages it consumes, so changing `rl.n` re-runs fine-tuning and evaluation but reuses the
tokenizer, base policy and verifier, and a sweep over N shares them. A stage is complete when its
`done.json` exists; a stage interrupted midway keeps its directory (and checkpoints) and resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any


def _canonical(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (ConfigDicts, dicts, scalars, other keys)."""
    blob = json.dumps([_canonical(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage's cache directory. `done` says whether its output is complete."""

    name: str
    key: str
    root: str

    @property
    def path(self) -> str:
        return os.path.join(self.root, f"{self.name}-{self.key}")

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.path, "done.json"))

    def file(self, *names: str) -> str:
        os.makedirs(self.path, exist_ok=True)
        return os.path.join(self.path, *names)

    def mark_done(self, result: Mapping[str, Any] | None = None) -> None:
        """Writes `done.json` atomically (a crash leaves the stage incomplete, never half-done)."""
        os.makedirs(self.path, exist_ok=True)
        tmp = os.path.join(self.path, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump(dict(result or {}), f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.path, "done.json"))

    def result(self) -> dict:
        with open(os.path.join(self.path, "done.json")) as f:
            return json.load(f)


def stage(root: str, name: str, *depends_on: Any) -> Stage:
    return Stage(name=name, key=config_key(name, *depends_on), root=root)
