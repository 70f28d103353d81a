"""Stage outputs cached on disk, keyed by the part of the config each stage depends on.

A stage's directory is `<root>/<stage>-<key>` where `key` hashes the config sections the stage reads plus
the keys of the stages it consumes, so changing `rl.n` re-runs fine-tuning and evaluation but reuses the
tokenizer, base policy and verifier, and a sweep over N shares them. A stage is complete when its
`done.json` exists; a stage interrupted midway keeps its directory (and checkpoints) and resumes.

`done.json` also holds the stage's `timing` (wall seconds from the claim to `mark_done` in the process that
finished it, and its named phases, `Stage.phase_done`), which `benchmarks/run.py` reads to give each stage's
share of an experiment's wall time.

Runs that share a cache (two sweep shards, two experiments with a stage in common) produce each stage
once: a run claims a stage before producing it (`Stage.claim`, an exclusive `fcntl.flock` on `.lock` in
the stage's directory, held until `mark_done` or the process ends), and a run that finds the stage
claimed waits, then loads what the other produced (or, if the other died, resumes it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from bon_jax.provenance import host_info


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


# Stage path -> file descriptor of its lock file, for the stages this process has claimed.
_HELD: dict[str, int] = {}
# Stage path -> [(phase name or None for the claim, time.time())] of the stages this process produces.
_LAPS: dict[str, list[tuple[str | None, float]]] = {}


def _multi_process_run() -> bool:
    jax = sys.modules.get("jax")  # not imported: not a JAX run, let alone a multi-host one
    return jax is not None and jax.process_count() > 1


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

    def claim(self) -> bool:
        """Whether this process is to produce the stage: True once it holds the stage's lock and the stage
        is not done (it then calls `mark_done`, or `release` if it leaves the stage unproduced); False if
        the stage is done, after waiting for a run of another process that holds the lock to finish.

        The lock is per process (a second claim in the process that holds it returns True at once) and
        the operating system drops it when the process dies, so a killed run never blocks the next one.
        The processes of one multi-host run produce each stage together (its steps are collectives), so
        there none takes the lock: one holder would wait forever for the others it keeps out.
        """
        if self.done:
            return False
        if self.path in _HELD or _multi_process_run():
            _LAPS.setdefault(self.path, [(None, time.time())])
            return True
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(os.path.join(self.path, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"[bon_jax] waiting for another run producing {self.path}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if self.done:  # the run we waited for finished it
            os.close(fd)
            return False
        _HELD[self.path] = fd
        _LAPS.setdefault(self.path, [(None, time.time())])
        return True

    def phase_done(self, name: str) -> None:
        """Ends the stage's phase `name` now (it began at the claim or at the previous phase's end); its
        seconds go into done.json's `timing.phases_s`. Nothing happens for a stage this process did not claim."""
        if self.path in _LAPS:
            _LAPS[self.path].append((name, time.time()))

    def release(self) -> None:
        """Drops this process's lock on the stage, if it holds it (and its timing: a later claim restarts it)."""
        _LAPS.pop(self.path, None)
        fd = _HELD.pop(self.path, None)
        if fd is not None:
            os.close(fd)

    def mark_done(self, result: Mapping[str, Any] | None = None) -> None:
        """Writes `done.json` atomically (a crash leaves the stage incomplete, never half-done), then
        releases the stage's lock. It adds `timing`: `wall_s` from the claim to now and `phases_s`
        (`phase_done`), of this process's session (a resumed stage: the session that finished it), and the
        `host` that computed it (`bon_jax.provenance.host_info`)."""
        os.makedirs(self.path, exist_ok=True)
        result = dict(result or {})
        laps = _LAPS.pop(self.path, None)
        if laps:
            now = time.time()
            result["timing"] = {
                "wall_s": now - laps[0][1],
                "phases_s": {name: t - t_prev for (_, t_prev), (name, t) in zip(laps, laps[1:])},
                "finished": now,
                "host": host_info(),  # the CPU that computed it: results are bit-exact only on alike ones
            }
        tmp = os.path.join(self.path, "done.json.tmp")
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(tmp, os.path.join(self.path, "done.json"))
        self.release()

    def result(self) -> dict:
        with open(os.path.join(self.path, "done.json")) as f:
            return json.load(f)


def stage(root: str, name: str, *depends_on: Any) -> Stage:
    return Stage(name=name, key=config_key(name, *depends_on), root=root)
