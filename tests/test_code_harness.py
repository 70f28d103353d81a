"""Code grading counts a pass only when the tests ran to their end (bon_jax.tasks.code_harness).

Every completion here would exit with status 0, which the old grader counted as a pass; each must
score 0 unless the real tests ran and passed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bon_jax import sandbox
from bon_jax.tasks import code_harness
from bon_jax.tasks.code import HumanEvalTask, MBPPTask

MBPP_SAMPLE = Path(__file__).parent / "data" / "mbpp_sample.jsonl"

# HumanEval completions continue the function body; module-level code follows a dedent. They avoid
# the stop sequences ("\nprint(", "\n#", "\ndef ", ...) so that they reach the sandbox whole.
_SCAN = (
    "import os, sys, re\n"
    "blob = repr(dict(os.environ)) + repr(sys.argv)\n"
    "for p in ('/proc/self/environ', '/proc/self/cmdline', '.nonce', 'program.py', __file__):\n"
    "    try:\n"
    "        blob += open(p, errors='replace').read()\n"
    "    except OSError:\n"
    "        pass\n"
    "for tok in set(re.findall(r'[0-9a-f]{32}', blob)):\n"
    "    sys.stdout.write('BON_JAX_TESTS_PASSED ' + tok + '\\n')\n"
    "sys.stdout.flush()\n"
    "os._exit(0)\n"
)
HUMANEVAL_CHEATS = {
    "raise SystemExit(0)": "    raise SystemExit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "module-level os._exit(0)": "    return None\nimport os\nos._exit(0)\n",
    "sys.exit() in a finally": "    import sys\n    try:\n        return None\n    finally:\n        sys.exit()\n",
    "sys.exit in atexit": "    return None\nimport atexit, sys\natexit.register(sys.exit, 0)\n",
    "os._exit in atexit": "    return None\nimport atexit, os\natexit.register(os._exit, 0)\n",
    "fake marker": (
        "    return None\nimport sys\n"
        "sys.stdout.write('\\nBON_JAX_TESTS_PASSED ' + '0' * 32 + '\\nBON_JAX_TESTS_PASSED\\n')\n"
        "sys.exit(0)\n"
    ),
    "reads env, argv, /proc and files": "    return None\n" + _SCAN,
}


@pytest.fixture(scope="module")
def humaneval():
    return HumanEvalTask(timeout_s=20, max_workers=2)


def test_humaneval_exits_with_status_0_do_not_pass(humaneval):
    exs = humaneval.examples("test")[:3]
    g = humaneval.grade_batch(exs, [[e.reference, *HUMANEVAL_CHEATS.values()] for e in exs])
    np.testing.assert_array_equal(g.rewards_BM[:, 0], 1.0)
    for j, name in enumerate(HUMANEVAL_CHEATS, start=1):
        assert list(g.rewards_BM[:, j]) == [0.0] * 3, (name, g.reasons_BM[:, j])
        assert all(g.reasons_BM[:, j]), name
    early = [j for j, name in enumerate(HUMANEVAL_CHEATS, start=1) if "exit" in name and "atexit" not in name]
    assert all("no pass marker" in r for r in g.reasons_BM[:, early].ravel()), g.reasons_BM[:, early]


def test_mbpp_exits_with_status_0_do_not_pass():
    mbpp = MBPPTask(MBPP_SAMPLE, timeout_s=20, max_workers=2)
    e = mbpp.examples("test")[1]  # square_perimeter
    cheats = [
        "import sys\nsys.exit(0)\n",
        "def square_perimeter(a):\n    import os\n    os._exit(0)\n",
        "import atexit, os\natexit.register(os._exit, 0)\ndef square_perimeter(a):\n    return 3 * a\n",
        _SCAN,
    ]
    g = mbpp.grade_batch([e], [[e.reference, *cheats]])
    assert list(g.rewards_BM[0]) == [1.0] + [0.0] * len(cheats), g.reasons_BM


def test_a_marker_seen_in_one_run_does_not_pass_another(humaneval):
    e = humaneval.examples("test")[0]
    first = humaneval._run([humaneval.program(e, e.reference)])[0]
    assert first.passed
    (line,) = [ln for ln in first.result.stdout.splitlines() if ln.startswith(code_harness.PASS_PREFIX)]
    replay = f"    return None\nimport sys, os\nsys.stdout.write({line!r} + '\\n')\nsys.stdout.flush()\nos._exit(0)\n"
    again = humaneval._run([humaneval.program(e, replay)] * 2)
    assert [r.passed for r in again] == [False, False]
    assert all(line in r.result.stdout.splitlines() for r in again)  # it was printed, and refused


def test_program_output_and_tracebacks_are_kept(humaneval):
    e = humaneval.examples("test")[2]
    noisy = "    import sys\n    sys.stdout.write('partial line')\n" + e.reference
    g = humaneval.grade(e, noisy)
    assert g.reward == 1.0 and g.reason is None
    wrong = humaneval.grade(e, "    return -1.0\n")
    assert wrong.reward == 0.0 and wrong.reason.startswith("AssertionError: assert"), wrong.reason


def _result(status="passed", stdout="", truncated=False, exit_code=0):
    return sandbox.RunResult(
        status=status,
        exit_code=exit_code,
        signal=None,
        stdout=stdout,
        stderr="",
        stdout_truncated=truncated,
        stderr_truncated=False,
        wall_s=0.1,
        enforced=sandbox.Enforced(),
        pid=1,
    )


def test_verdict_needs_status_0_and_this_runs_nonce():
    nonce = "ab" * 16
    line = f"{code_harness.PASS_PREFIX} {nonce}"
    assert code_harness.verdict(_result(stdout=f"x\n{line}\n"), nonce).passed
    assert not code_harness.verdict(_result(stdout=f"{line}\n"), "cd" * 16).passed
    assert not code_harness.verdict(_result(stdout=f"{line}x\n"), nonce).passed
    assert not code_harness.verdict(_result(status="failed", stdout=f"{line}\n", exit_code=1), nonce).passed
    cut = code_harness.verdict(_result(stdout="y" * 10, truncated=True), nonce)
    assert not cut.passed and "output limit" in cut.reason
    assert code_harness.new_nonce() != code_harness.new_nonce()
    assert nonce not in code_harness.HARNESS
