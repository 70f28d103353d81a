"""HumanEval and MBPP: loading, prompts, splits, stop-sequence truncation, grading in the sandbox."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bon_jax.errors import DataError
from bon_jax.tasks.code import (
    HUMANEVAL_STOP,
    MBPP_STOP,
    HumanEvalTask,
    MBPPTask,
    mbpp_entry_point,
    mbpp_prompt,
    read_mbpp,
    truncate_at_stop,
)

MBPP_SAMPLE = Path(__file__).parent / "data" / "mbpp_sample.jsonl"


@pytest.fixture(scope="module")
def humaneval():
    return HumanEvalTask(timeout_s=20, max_workers=2)


@pytest.fixture(scope="module")
def mbpp():
    return MBPPTask(MBPP_SAMPLE, timeout_s=20, max_workers=2)


# --- stop sequences ---------------------------------------------------------------------------


def test_truncate_at_stop_cuts_at_the_earliest_stop():
    body = "    return x + 1\n"
    assert truncate_at_stop(body) == body
    assert truncate_at_stop(body + "\n\ndef g():\n    pass\n") == body + "\n"
    assert truncate_at_stop(body + "\n# tests\nprint(f(1))\n") == body
    assert truncate_at_stop(body + "\nprint(f(1))\n\ndef g(): pass") == body
    assert truncate_at_stop(body + "\nif __name__ == '__main__':\n    f(1)") == body
    assert truncate_at_stop(body + "\nclass A:\n    pass") == body
    # Indented defs and comments are part of the body, not stops.
    nested = "    def helper(y):\n        # double\n        return 2 * y\n    return helper(x)\n"
    assert truncate_at_stop(nested) == nested
    assert truncate_at_stop("abc", stop=()) == "abc"
    assert set(HUMANEVAL_STOP) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"}
    program = "def f(x):\n    return x\n\nassert f(1) == 1\n"
    assert truncate_at_stop(program, MBPP_STOP) == "def f(x):\n    return x\n"


# --- HumanEval --------------------------------------------------------------------------------


def test_humaneval_examples(humaneval):
    exs = humaneval.examples("test")
    assert len(exs) == 164 and len({e.id for e in exs}) == 164
    assert humaneval.splits == ("test",)
    e0 = exs[0]
    assert e0.id == "HumanEval/0"
    assert e0.prompt.startswith("from typing import List") and "def has_close_elements(" in e0.prompt
    assert e0.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate):" in e0.meta["test"]
    assert e0.reference.startswith("    ")  # the body that continues the prompt
    with pytest.raises(ValueError, match="only 'test'"):
        humaneval.examples("train")


def test_humaneval_program_layout(humaneval):
    e = humaneval.examples("test")[0]
    prog = humaneval.program(e, "    return True\n\ndef junk():\n    pass\n")
    assert prog == e.prompt + "    return True\n" + "\n" + e.meta["test"] + "\ncheck(has_close_elements)\n"


def test_humaneval_canonical_subset_passes_and_wrong_ones_fail(humaneval):
    exs = humaneval.examples("test")[:4]
    wrong = ["    return None\n", "    return (\n", "    while True:\n        pass\n"]
    completions = [[e.reference, *wrong] for e in exs]
    task = HumanEvalTask(timeout_s=1.5, max_workers=2)
    g = task.grade_batch(exs, completions)
    assert g.rewards_BM.shape == (4, 4) and g.rewards_BM.dtype == np.float32
    np.testing.assert_array_equal(g.rewards_BM[:, 0], 1.0)
    np.testing.assert_array_equal(g.rewards_BM[:, 1:], 0.0)
    assert list(g.reasons_BM[:, 0]) == [None] * 4
    assert all(r.startswith("AssertionError: assert") for r in g.reasons_BM[:, 1]), g.reasons_BM[:, 1]
    assert all(r.startswith("SyntaxError") for r in g.reasons_BM[:, 2]), g.reasons_BM[:, 2]
    assert list(g.reasons_BM[:, 3]) == ["timeout"] * 4
    assert list(g.answers_BM.ravel()) == [None] * 16


def test_humaneval_grade_truncates_trailing_code(humaneval):
    e = humaneval.examples("test")[2]
    tail = "\n\ndef unrelated():\n    pass\n\nprint(undefined_name)\n"
    assert humaneval.grade(e, e.reference + tail).reward == 1.0
    raw = HumanEvalTask(truncate=False, timeout_s=20)
    g = raw.grade(e, e.reference + tail)
    assert g.reward == 0.0 and g.reason == "NameError: name 'undefined_name' is not defined"


def test_hostile_completion_text_is_graded_not_raised(humaneval):
    e = humaneval.examples("test")[0]
    for junk in ("    return '\ud800'\n", "    \x00\n", "\x1b[2J" * 1000, ""):
        g = humaneval.grade(e, junk)
        assert g.reward == 0.0 and g.reason, (junk, g)


def test_grade_batch_checks_shapes(humaneval):
    exs = humaneval.examples("test")[:2]
    with pytest.raises(ValueError, match="2 examples but 1 rows"):
        humaneval.grade_batch(exs, [["x"]])
    with pytest.raises(ValueError, match="different lengths"):
        humaneval.grade_batch(exs, [["x"], ["x", "y"]])


@pytest.mark.slow
def test_all_164_humaneval_canonical_solutions_pass(humaneval):
    exs = humaneval.examples("test")
    g = humaneval.grade_batch(exs, [[e.reference] for e in exs])
    failed = {e.id: r for e, r in zip(exs, g.reasons_BM[:, 0]) if r is not None}
    assert failed == {}
    assert g.rewards_BM.shape == (164, 1) and g.rewards_BM.sum() == 164


# --- MBPP -------------------------------------------------------------------------------------


def test_mbpp_loads_with_standard_splits(mbpp):
    ids = {s: [e.id for e in mbpp.examples(s)] for s in mbpp.splits}
    assert ids == {
        "prompt": ["MBPP/3"],
        "test": ["MBPP/12", "MBPP/17"],
        "validation": ["MBPP/520"],
        "train": ["MBPP/601", "MBPP/602"],
    }
    with pytest.raises(ValueError, match="unknown split"):
        mbpp.examples("dev")


def test_mbpp_prompt_reference_and_meta(mbpp):
    e = mbpp.examples("test")[0]
    assert e.prompt == (
        '"""\n'
        "Write a function to sort a given matrix in ascending order according to the sum of its rows.\n"
        "assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]\n"
        "Signature: def sort_matrix(M):\n"
        '"""\n'
    )
    assert e.reference == "def sort_matrix(M):\n    result = sorted(M, key=sum)\n    return result"
    assert e.meta["entry_point"] == "sort_matrix" and len(e.meta["test_list"]) == 3
    train = mbpp.examples("train")
    assert train[0].meta["entry_point"] == "max_chain_length"  # not the Pair class it also calls
    assert "Signature: def max_chain_length(arr, n):" in train[0].prompt
    assert train[1].meta["test_setup_code"] == "COUNTS = {'a': 3, 'b': 4, 'c': -2}"


def test_mbpp_entry_point_and_prompt_helpers():
    code = "import math\ndef helper(x):\n    return x\ndef area(r, *, pi=math.pi):\n    return pi * r * r"
    assert mbpp_entry_point(code, "assert round(area(1), 2) == 3.14") == (
        "area",
        "def area(r, *, pi=math.pi):",
    )
    assert mbpp_entry_point("def f(:", "assert g(1) == 2") == ("g", None)
    assert mbpp_prompt("Do it.", "assert f(1) == 1", None) == '"""\nDo it.\nassert f(1) == 1\n"""\n'


def test_mbpp_reference_solutions_pass_and_wrong_ones_fail(mbpp):
    exs = [e for s in mbpp.splits for e in mbpp.examples(s)]
    wrong = "def nothing():\n    return None\n"
    g = mbpp.grade_batch(exs, [[e.reference, wrong] for e in exs])
    assert list(g.reasons_BM[:, 0]) == [None] * len(exs)
    np.testing.assert_array_equal(g.rewards_BM[:, 0], 1.0)
    np.testing.assert_array_equal(g.rewards_BM[:, 1], 0.0)
    assert all(r.startswith("NameError") for r in g.reasons_BM[:, 1]), g.reasons_BM[:, 1]
    # A completion that goes on past the program is cut at the stop sequence.
    e = mbpp.examples("test")[1]
    assert mbpp.grade(e, e.reference + "\nassert square_perimeter(1) == 5\n").reward == 1.0
    # A plausible but wrong solution names the failing assert.
    g1 = mbpp.grade(e, "def square_perimeter(a):\n    return 3 * a\n")
    assert g1.reward == 0.0 and g1.reason == "AssertionError: assert square_perimeter(10)==40"


def test_mbpp_setup_code_and_challenge_tests(mbpp):
    e = mbpp.examples("train")[1]
    prog = mbpp.program(e, e.reference)
    assert prog.index("COUNTS = {") < prog.index("assert positive_total(COUNTS) == 7")
    assert "10**6" not in prog
    hard = MBPPTask(MBPP_SAMPLE, challenge_tests=True, timeout_s=20)
    assert "assert positive_total({'a': 10**6, 'b': 1}) == 1000001" in hard.program(e, e.reference)
    assert hard.grade(e, e.reference).reward == 1.0
    # Passes the normal tests but not the challenge test.
    capped = "def positive_total(counts):\n    return min(7, sum(v for v in counts.values() if v > 0))"
    assert mbpp.grade(e, capped).reward == 1.0
    assert hard.grade(e, capped).reward == 0.0


# --- malformed MBPP files ---------------------------------------------------------------------


def _rows():
    return [json.loads(line) for line in MBPP_SAMPLE.read_text().splitlines()]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "mutate, line, message",
    [
        (lambda ls: ls.__setitem__(2, '{"task_id": 17, "text": '), 3, "invalid JSON"),
        (lambda ls: ls.__setitem__(1, json.dumps({**json.loads(ls[1]), "code": None})), 2, "code must"),
        (lambda ls: ls.__setitem__(3, "[1, 2]"), 4, "expected a JSON object"),
        (lambda ls: ls.append(ls[0]), 7, "duplicate task_id 3 (first on line 1)"),
        (lambda ls: ls.append(json.dumps({**json.loads(ls[0]), "task_id": 975})), 7, "outside"),
        (lambda ls: ls.append(json.dumps({**json.loads(ls[0]), "task_id": "4"})), 7, "integer"),
        (lambda ls: ls.append(json.dumps({**json.loads(ls[0]), "task_id": 4, "test_list": []})), 7, "empty"),
    ],
)
def test_mbpp_malformed_rows_name_file_and_line(tmp_path, mutate, line, message):
    lines = MBPP_SAMPLE.read_text().splitlines()
    mutate(lines)
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        MBPPTask(path)
    assert info.value.path == str(path) and info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_mbpp_missing_field_blank_lines_and_empty_file(tmp_path):
    row = _rows()[0]
    del row["test_setup_code"], row["challenge_test_list"]
    path = _write(tmp_path / "missing.jsonl", ["", json.dumps(_rows()[1]), "  ", json.dumps(row)])
    with pytest.raises(DataError, match="missing field") as info:
        read_mbpp(path)
    assert info.value.line == 4  # blank lines count
    assert "test_setup_code, challenge_test_list" in str(info.value)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty file") as info:
        MBPPTask(empty)
    assert info.value.path == str(empty)

    with pytest.raises(DataError, match="cannot read"):
        MBPPTask(tmp_path / "absent.jsonl")

    binary = tmp_path / "latin1.jsonl"
    binary.write_bytes(MBPP_SAMPLE.read_bytes() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8") as info:
        MBPPTask(binary)
    assert info.value.line == 7


def test_mbpp_reads_blank_line_separated_file(tmp_path):
    lines = MBPP_SAMPLE.read_text().splitlines()
    path = _write(tmp_path / "spaced.jsonl", [x for ln in lines for x in (ln, "")])
    assert len(read_mbpp(path)) == len(lines)
