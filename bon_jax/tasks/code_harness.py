"""Runs a code task's test program so that a pass means its tests ran to their end.

An exit status of 0 alone proves nothing: a completion that calls `raise SystemExit(0)`, `os._exit(0)`,
or `sys.exit()` from an `atexit` hook or a `finally` ends the process with status 0 before (or
instead of) the failing assertion. An execution oracle that counted that as a pass would hand RL a
reward it can learn to take, and would inflate pass@k.

So each test program runs under a small trusted harness, with a fresh random nonce per run:

  program.py   the harness (fixed text, no secret): reads the nonce from `.nonce` and unlinks that
               file, then compiles `tests.py` and executes it in a fresh `__main__` namespace (the
               harness's own names are not in it). Only when that execution returns normally, i.e.
               the last assertion has run and passed, does it write the line `PASS_PREFIX <nonce>`
               to file descriptor 1.
  tests.py     the task's test program (completion + tests), unchanged; tracebacks name it, so
               `sandbox.failure_reason` still quotes the failing assert.
  .nonce       32 hex digits from `secrets`, made in the trainer for this one run.

The grade is a pass only if the run exited with status 0 and its stdout holds that exact line.
The completion runs after `.nonce` is gone, the nonce is not in any file the program can read, in
its environment, its command line or its source text, and it differs from run to run, so printing a
remembered or guessed marker fails.

What this does not stop: the completion shares the harness's interpreter, so a program written to
search the interpreter's memory (the harness's frame via `sys._getframe`, `gc`, `ctypes`) can find
the nonce. No scheme inside one process can prevent that; it takes code aimed at this harness, not
an early exit a policy stumbles on. Likewise tests that a program defeats from inside (an object
whose `__eq__` is always true) are the tests' weakness, not the harness's.

A program that writes more than `Limits.output_bytes` to stdout loses the marker to truncation and
fails, with the reason saying so.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence

from bon_jax import sandbox

PASS_PREFIX = "BON_JAX_TESTS_PASSED"
TESTS_FILE = "tests.py"
NONCE_FILE = ".nonce"

HARNESS = f"""\
def _bon_jax_harness():
    import os, sys
    fd = os.open({NONCE_FILE!r}, os.O_RDONLY)
    try:
        nonce = os.read(fd, 64)
    finally:
        os.close(fd)
    os.unlink({NONCE_FILE!r})
    path = os.path.abspath({TESTS_FILE!r})
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    exec(code, {{"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}})
    try:  # the program may have closed or replaced sys.stdout; the marker goes to fd 1 regardless
        sys.stdout.flush()
    except Exception:
        pass
    line = b"\\n{PASS_PREFIX} " + nonce + b"\\n"
    while line:
        line = line[os.write(1, line):]


_bon_jax_harness()
"""


@dataclasses.dataclass(frozen=True)
class TestRun:
    """One graded test program: `passed` is the verdict, `reason` why not (None when it passed)."""

    result: sandbox.RunResult
    passed: bool
    reason: str | None


def new_nonce() -> str:
    return secrets.token_hex(16)


def verdict(result: sandbox.RunResult, nonce: str) -> TestRun:
    """A pass needs exit status 0 and the line `PASS_PREFIX nonce` on stdout."""
    marked = f"{PASS_PREFIX} {nonce}" in result.stdout.splitlines()
    if result.status == "passed" and marked:
        return TestRun(result, True, None)
    if result.status != "passed":
        return TestRun(result, False, sandbox.failure_reason(result))
    if result.stdout_truncated:
        reason = "stdout over the output limit: the tests' pass marker was cut off"
    else:
        reason = "exited with status 0 before the tests finished (no pass marker)"
    return TestRun(result, False, reason)


def run_tests(
    programs: Sequence[str],
    *,
    timeout_s: float,
    limits: sandbox.Limits | None = None,
    max_workers: int | None = None,
) -> list[TestRun]:
    """Runs each test program under the harness (in parallel, `sandbox.run_many`), one nonce each."""
    programs = list(programs)
    nonces = [new_nonce() for _ in programs]
    files = [{TESTS_FILE: p, NONCE_FILE: n} for p, n in zip(programs, nonces)]
    results = sandbox.run_many(
        [HARNESS] * len(programs), timeout_s=timeout_s, limits=limits, max_workers=max_workers, files=files
    )
    return [verdict(r, n) for r, n in zip(results, nonces)]


__all__ = [
    "HARNESS",
    "NONCE_FILE",
    "PASS_PREFIX",
    "TESTS_FILE",
    "TestRun",
    "new_nonce",
    "run_tests",
    "verdict",
]
