"""MATH task: reading the official / jsonl / MATH-500 layouts, splits, malformed data, and grading."""

import json
import threading
from pathlib import Path

import pytest
from math_verify import parse, verify

from bon_jax.errors import DataError
from bon_jax.tasks.base import Example
from bon_jax.tasks.math import (
    MathTask,
    check_equivalence,
    last_boxed,
    strip_string,
    too_complex_for_sympy,
)

SAMPLE = Path(__file__).parent / "data" / "math_sample"
OFFICIAL, JSONL, MATH500 = SAMPLE / "official", SAMPLE / "jsonl", SAMPLE / "math500"

# --------------------------------------------------------------------------------------------------
# Answer pairs: (gold, prediction, a human grader's judgement, what math_verify alone returns).
# The grader accepts a pair iff strip_string makes both sides equal or math_verify accepts it.
# Rows where the grader and the human disagree are listed in DISAGREEMENTS, with the reason.

PAIRS = [
    # Equivalent forms.
    (r"\frac{1}{2}", "0.5", True, True),
    (r"\dfrac{3}{4}", r"\frac34", True, True),
    (r"\tfrac{3}{4}", r"\frac{3}{4}", True, True),
    (r"10\%", "10", True, True),
    (r"5\text{ cm}", "5", True, True),
    (r"12\text{ inches}", "12", True, True),
    (r"90^\circ", "90", True, True),
    (r"10^\circ", r"10^{\circ}", True, True),
    (r"(-\infty, 3]", r"(-\infty,3]", True, True),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", True, True),
    (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt{2}}", True, True),
    (r"\frac{1}{\sqrt{3}}", r"\frac{\sqrt{3}}{3}", True, True),
    ("(1,2)", "(1, 2)", True, True),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})", True, True),
    ("(-2,1)", r"\left(-2, 1\right)", True, True),
    ("3", "x=3", True, True),
    ("x=3", "3", True, True),
    (r"y=2x+3", "2x+3", True, True),
    (r"\$5", "5", True, True),
    (r"5\text{ dollars}", r"\$5", True, True),
    (r"\$18.90", "18.90", True, True),
    (r"\$1.50", "1.5", True, True),
    ("1000", "1,000", True, True),
    ("1,000", "1000", True, True),
    (r"1{,}000{,}000", "1000000", True, True),
    (r"\$32,348", "32348", True, True),
    (r"2\pi", r"2 \pi", True, True),
    (r"4\pi", r"4 \cdot \pi", True, True),
    (r"\frac{\pi}{2}", r"\pi/2", True, True),
    (r"\frac{\pi}{2}", r"\dfrac{1}{2}\pi", True, True),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix}1\\-2\end{pmatrix}", True, True),
    (r"\{1,2\}", r"\{2,1\}", True, True),
    ("1,2", "2,1", True, True),
    (r"\pm 2", "2, -2", True, True),
    (r"2\sqrt{3}", r"\sqrt{12}", True, True),
    (r"3\sqrt{2}", r"\sqrt{18}", True, True),
    (r"9\sqrt{2}", r"9 \sqrt 2", True, True),
    (r"\sqrt[3]{2}", "2^{1/3}", True, True),
    (r"-\frac{\sqrt{3}}{2}", r"-\frac{1}{2}\sqrt{3}", True, True),
    (r"\frac{1}{2}", r"\frac{2}{4}", True, True),
    (r"\frac{-1}{2}", r"-\frac{1}{2}", True, True),
    (r"\frac{7}{2}", r"3\frac{1}{2}", True, True),
    (r"\frac{9}{4}", "2.25", True, True),
    ("0.75", r"\frac34", True, True),
    ("1.5", r"\frac{3}{2}", True, True),
    ("2", "2.0", True, True),
    ("6", "6.00", True, True),
    ("-1", "-1.0", True, True),
    ("12", "012", True, True),
    ("0", "-0", True, True),
    (r"2^{10}", "1024", True, True),
    ("x^2+2x+1", "(x+1)^2", True, True),
    (r"3+2i", "2i+3", True, True),
    (r"5\%", "0.05", True, True),
    (r"\frac{1}{4}", r"25\%", True, True),
    (r"x \in [2,5)", "[2,5)", True, True),
    (r"\infty", r"\infty", True, True),
    (r"\emptyset", r"\{\}", True, True),
    (r"\text{Monday}", "Monday", True, True),
    (r"\text{(C)}", "C", True, True),
    # Not equivalent.
    ("[0,3]", "(0,3]", False, False),
    (r"(-\infty,3)", r"(-\infty,3]", False, False),
    ("(1,2)", "(2,1)", False, False),
    ("2", "1/2", False, False),
    (r"\frac{1}{2}", "2", False, False),
    ("0.5", r"\frac{1}{3}", False, False),
    (r"\frac{3}{4}", "0.7", False, False),
    ("0.333", r"\frac13", False, False),
    ("7", "7.0000001", False, False),
    ("-1", "1", False, False),
    ("10", "100", False, False),
    ("1,2", "12", False, False),
    (r"\sqrt{2}", "1.41", False, False),
    (r"\sqrt{2}", "1.4142", False, False),
    (r"2\pi", r"\pi", False, False),
    ("90", r"\frac{\pi}{2}", False, False),
    (r"\{1,2\}", r"\{1,2,3\}", False, False),
    (r"x^2+1", "x^2-1", False, False),
    ("3", "x=4", False, False),
    ("3", "3x", False, False),
    (r"3+2i", "3-2i", False, False),
    (r"\infty", r"-\infty", False, False),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix} 2 \\ 1 \end{pmatrix}", False, False),
    (r"\text{Monday}", "Tuesday", False, False),
    (r"\text{(A)}", r"\text{(B)}", False, False),
    (r"\frac{1}{2}", r"\frac{1}{2}+", False, False),
    # Where math_verify 0.9.0 and a human disagree (see DISAGREEMENTS).
    (r"\sqrt{2}", "1.414214", False, True),
    (r"\frac{1}{3}", r"0.\overline{3}", True, False),
    (r"[3,\infty)", r"x \ge 3", True, False),
    (r"\sqrt{-1}", "i", True, False),
]

DISAGREEMENTS = {
    (r"\sqrt{2}", "1.414214"): "math_verify compares numbers rounded to 6 decimals, so a 6-digit "
    "decimal approximation of an exact answer is accepted",
    (r"\frac{1}{3}", r"0.\overline{3}"): "math_verify does not parse repeating decimals",
    (r"[3,\infty)", r"x \ge 3"): "math_verify compares an interval with a relation only when the "
    "prediction is the set (allow_set_relation_comp=False); the reverse pair is accepted",
    (r"\sqrt{-1}", "i"): "sympy keeps sqrt(-1) and the symbol i apart",
}


def _boxed(gold: str) -> Example:
    return Example(id="t", prompt="p", reference=f"so $\\boxed{{{gold}}}$.", answer=gold)


@pytest.fixture(scope="module")
def task():
    return MathTask(OFFICIAL)


def test_table_is_large_and_disagreements_are_listed():
    assert len(PAIRS) >= 40
    assert len({(g, p) for g, p, _, _ in PAIRS}) == len(PAIRS)
    graded_differently = {
        (g, p) for g, p, human, mv in PAIRS if (mv or strip_string(g) == strip_string(p)) != human
    }
    assert graded_differently == set(DISAGREEMENTS)


@pytest.mark.parametrize("gold,pred,human,mv", PAIRS)
def test_math_verify_returns_what_the_table_says(gold, pred, human, mv):
    assert verify(parse(f"$\\boxed{{{gold}}}$"), parse(f"$\\boxed{{{pred}}}$")) == mv


@pytest.mark.parametrize("gold,pred,human,mv", PAIRS)
def test_grade_table(task, gold, pred, human, mv):
    g = task.grade(_boxed(gold), f"Working... hence the answer is $\\boxed{{{pred}}}$.")
    expected = human != ((gold, pred) in DISAGREEMENTS)
    assert g.reward == float(expected), (gold, pred, g)
    assert g.answer == strip_string(pred)
    assert (g.reason is None) == expected


def test_grade_failures_have_reasons_and_never_raise(task):
    ex = _boxed(r"\frac{1}{2}")
    cases = {
        "the answer is 1/2": "no boxed answer",
        r"\boxed{1/2": "no boxed answer",  # cut off by the length limit
        r"\boxed{}": "empty boxed answer",
        r"\boxed{3}": "not equivalent",
        r"\boxed{\frac{1}{2}+}": "unparsable answer",
        r"\boxed{10^{10^{10}}}": "too complex for symbolic check",
    }
    for completion, reason in cases.items():
        g = task.grade(ex, completion)
        assert (g.reward, g.reason) == (0.0, reason), completion
    for junk in ["", "\\boxed", "\\boxed{\\frac{", "}}}{{{", "\x00\\boxed{\x00}", None, 42]:
        assert task.grade(ex, junk).reward == 0.0


def test_last_boxed():
    assert last_boxed(r"a \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\boxed{\left( 3, \frac{\pi}{2} \right)}.") == r"\left( 3, \frac{\pi}{2} \right)"
    assert last_boxed(r"so \fbox{$\frac{1}{4}$}") == r"$\frac{1}{4}$"
    assert last_boxed(r"$\boxed 5$") == "5"
    assert last_boxed(r"\boxed{2} and \boxed{3") is None  # only the last box counts
    assert last_boxed("no box") is None


def test_strip_string_examples():
    assert strip_string(r"\left( 3, \dfrac{\pi}{2} \right)") == r"(3,\frac{\pi}{2})"
    assert strip_string(r"\frac12") == r"\frac{1}{2}"
    assert strip_string(r"\frac1{2}") == r"\frac{1}{2}"
    assert strip_string(r"\sqrt2/2") == r"\sqrt{2}/2"
    assert strip_string("x = 3.") == "3"
    assert strip_string(".5") == r"\frac{1}{2}"
    assert strip_string(r"\$1{,}234") == "1234"
    assert strip_string(r"5\ \text{cm}^2") != "5"  # a unit with an exponent is not dropped
    assert strip_string(r"\text{east}") == "east"


def test_guard_and_thread_safety(task):
    assert too_complex_for_sympy("10^{10^{10}}") and too_complex_for_sympy("2^10^10")
    assert too_complex_for_sympy("9^{123456789}") and too_complex_for_sympy("1234567!")
    assert not too_complex_for_sympy(r"\sin(x)^{2}+\cos(x)^{2}")
    assert not too_complex_for_sympy("2^{10}")
    # math_verify's signal-based timeouts fail off the main thread; grading must not.
    ex = _boxed(r"\frac{\sqrt{2}}{2}")
    out = {}

    def run():
        out["ok"] = task.grade(ex, r"\boxed{\frac{1}{\sqrt{2}}}")
        out["bad"] = task.grade(ex, r"\boxed{\frac{1}{\sqrt{3}}}")
        out["huge"] = task.grade(ex, r"\boxed{10^{10^{10}}}")

    th = threading.Thread(target=run)
    th.start()
    th.join(timeout=60)
    assert not th.is_alive()
    assert out["ok"].reward == 1.0 and out["bad"].reward == 0.0
    assert out["huge"].reason == "too complex for symbolic check"


def test_main_thread_timeout_reports_a_reason_and_is_not_cached(monkeypatch):
    # A real sympy blow-up takes a machine-dependent time (a fast CI machine finished one such comparison
    # inside its 1 s budget), so the timeout is raised the way math_verify raises it.
    import math_verify
    from math_verify.errors import TimeoutException

    seen = []

    def timing_out(gold, pred, *, timeout_seconds, raise_on_error):
        seen.append(timeout_seconds)
        raise TimeoutException("timed out")

    gold, pred = r"(x+1)^{3}", r"x^3+3x^2+3x+1"
    monkeypatch.setattr(math_verify, "verify", timing_out)
    assert check_equivalence(gold, pred, timeout_s=1) == (False, "verifier timed out")
    assert seen and set(seen) == {1}  # the main thread passes its budget on
    monkeypatch.undo()
    assert check_equivalence(gold, pred, timeout_s=1) == (True, None)  # a timeout was not cached as a verdict


# --------------------------------------------------------------------------------------------------
# Data.


def test_official_and_jsonl_layouts_agree():
    a, b = MathTask(OFFICIAL), MathTask(JSONL)
    assert (a.layout, b.layout) == ("official", "jsonl")
    for split in ("train", "validation", "test"):
        assert a.examples(split) == b.examples(split)  # both sorted by id
    test = {e.id: e for e in a.examples("test")}
    assert len(test) == 5
    ex = test["test/precalculus/807.json"]
    assert ex.answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert ex.meta == {"problem": ex.meta["problem"], "level": 2, "subject": "Precalculus"}
    assert "{problem}" not in ex.prompt and ex.meta["problem"] in ex.prompt
    assert test["test/geometry/9.json"].meta["level"] is None  # "Level ?" as in the real data
    fbox = {e.id: e for e in a.examples("train") + a.examples("validation")}
    assert fbox["train/counting_and_probability/41.json"].answer == r"$\frac{1}{4}$"


def test_validation_carve_is_a_deterministic_partition(tmp_path):
    from bon_jax.data.sources import holdout_fraction

    task = MathTask(OFFICIAL, validation_fraction=0.4)
    train = [e.id for e in task.examples("train")]
    val = [e.id for e in task.examples("validation")]
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(
        p.relative_to(OFFICIAL).as_posix() for p in (OFFICIAL / "train").glob("*/*.json")
    )
    assert val and train
    assert all((holdout_fraction("math", i) < 0.4) == (i in val) for i in train + val)
    # Independent of file order: a reversed jsonl gives the same carve.
    lines = (JSONL / "train.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    rev = MathTask(tmp_path, validation_fraction=0.4)
    assert {e.id for e in rev.examples("validation")} == set(val)
    assert MathTask(OFFICIAL, validation_fraction=0.0).examples("validation") == []


def test_math500_subset_from_ids_and_from_rows(tmp_path):
    want = ["test/algebra/2.json", "test/prealgebra/7.json", "test/precalculus/807.json"]  # by id
    by_ids = MathTask(OFFICIAL, subset="math500")  # finds official/math500_ids.txt
    assert [e.id for e in by_ids.examples("test")] == want
    alone = MathTask(MATH500, subset="math500")  # MATH-500's own jsonl, no full test split
    assert [e.id for e in alone.examples("test")] == want
    assert [e.answer for e in alone.examples("test")] == [e.answer for e in by_ids.examples("test")]
    assert len(by_ids.examples("train")) + len(by_ids.examples("validation")) == 8
    # A jsonl with only unique_id rows is an id list.
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(json.dumps({"unique_id": u}) + "\n" for u in want[:2]))
    assert [e.id for e in MathTask(OFFICIAL, subset="math500", subset_file=ids).examples("test")] == want[:2]
    bad = tmp_path / "bad_ids.txt"
    bad.write_text("test/algebra/2.json\ntest/algebra/999.json\n")
    with pytest.raises(DataError, match=r"bad_ids.txt:2: id 'test/algebra/999.json'"):
        MathTask(OFFICIAL, subset="math500", subset_file=bad).examples("test")
    with pytest.raises(DataError, match="math500"):
        MathTask(JSONL, subset="math500").examples("test")


def _official_copy(tmp_path):
    root = tmp_path / "MATH"
    for f in OFFICIAL.rglob("*.json"):
        dst = root / f.relative_to(OFFICIAL)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(f.read_text())
    return root


def test_malformed_official_files(tmp_path):
    root = _official_copy(tmp_path)
    bad = root / "train" / "algebra" / "1.json"
    bad.write_text('{\n  "problem": "x",\n  "level": "Level 1",\n  oops\n}')
    with pytest.raises(DataError, match=r"algebra/1.json:4: bad JSON") as e:
        MathTask(root).examples("train")
    assert e.value.line == 4 and e.value.path.endswith("1.json")
    bad.write_text(json.dumps({"problem": "x", "level": "Level 1", "type": "Algebra"}))
    with pytest.raises(DataError, match=r"1.json: missing field 'solution'"):
        MathTask(root).examples("train")
    bad.write_text(json.dumps({"problem": "x", "solution": "no box here", "level": "L", "type": "A"}))
    with pytest.raises(DataError, match="no \\\\boxed"):
        MathTask(root).examples("train")
    bad.write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(DataError, match="expected a JSON object"):
        MathTask(root).examples("train")
    for f in (root / "test").rglob("*.json"):
        f.unlink()
    with pytest.raises(DataError, match="no <subject>/<n>.json files"):
        MathTask(root).examples("test")


def test_malformed_jsonl(tmp_path):
    lines = (JSONL / "test.jsonl").read_text().splitlines()
    (tmp_path / "test.jsonl").write_text("\n".join(lines[:2] + ['{"problem": "x", "solution": '] + lines[2:]))
    with pytest.raises(DataError, match=r"test.jsonl:3: bad JSON"):
        MathTask(tmp_path).examples("test")
    row = json.loads(lines[0])
    del row["problem"]
    (tmp_path / "test.jsonl").write_text(lines[1] + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"test.jsonl:3: missing field 'problem'"):
        MathTask(tmp_path).examples("test")
    (tmp_path / "test.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(DataError, match="duplicate id"):
        MathTask(tmp_path).examples("test")
    (tmp_path / "test.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="test.jsonl: empty file"):
        MathTask(tmp_path).examples("test")
    with pytest.raises(DataError, match=r"train.jsonl: no such file"):
        MathTask(tmp_path).examples("train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no MATH data found"):
        MathTask(empty)
    with pytest.raises(DataError, match="does not exist"):
        MathTask(tmp_path / "nowhere")


def test_grade_batch_shapes(task):
    exs = list(task.examples("test"))[:2]
    rows = [[f"\\boxed{{{e.answer}}}", "no answer", r"\boxed{0}"] for e in exs]
    g = task.grade_batch(exs, rows)
    assert g.rewards_BM.shape == (2, 3)
    assert g.rewards_BM.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert g.reasons_BM[0, 1] == "no boxed answer" and g.answers_BM[0, 1] is None
