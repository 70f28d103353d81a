"""The generated `arith` task: determinism, disjoint splits, exact grading, the step checker."""

import collections
import random
import re

import pytest

from bon_jax.errors import ConfigError
from bon_jax.tasks import arith, registry
from bon_jax.tasks.arith import ArithTask, check_step, check_steps, split_of, step_error, step_labels
from bon_jax.tasks.base import Example, Task
from bon_jax.tasks.text import last_boxed, normalize_integer

ALL = dict(levels=arith.LEVELS, kinds=arith.KINDS)


def small(seed=0, n=(400, 100, 100), **kw):
    kw = {**ALL, **kw}
    return ArithTask(seed=seed, num_train=n[0], num_validation=n[1], num_test=n[2], **kw)


@pytest.fixture(scope="module")
def task():
    return small(0, n=(2000, 400, 400))


def all_examples(t):
    return [ex for s in t.splits for ex in t.examples(s)]


# --------------------------------------------------------------------------------------------------
# Independent reference solvers: they read the problem *text* and compute the answer another way.


def _py_expr(text):
    return eval(text.replace(" mod ", "%"), {"__builtins__": {}})  # only digits, + - * ( ) % here


def solve_independently(ex):
    statement = ex.prompt[len(arith.PROMPT_PREFIX) : -len(arith.PROMPT_SUFFIX)]
    kind = ex.meta["kind"]
    if kind in ("expr", "mod"):
        m = re.fullmatch(r"Compute (.+)\.", statement)
        return _py_expr(m.group(1))
    if kind == "linear":
        m = re.fullmatch(r"Solve (.+)=(.+) for x\.", statement)
        lhs, rhs = (re.sub(r"(\d)([x(])", r"\1*\2", side) for side in m.groups())
        f = eval(f"lambda x: ({lhs}) - ({rhs})", {"__builtins__": {}})  # linear in x
        slope = f(1) - f(0)
        assert slope != 0 and f(0) % slope == 0, statement
        x = -f(0) // slope
        assert f(x) == 0
        return x
    # word: replay the sentences.
    sentences = re.findall(r"[^.?]+[.?]", statement)
    v = int(re.search(r"has (\d+)", sentences[0]).group(1))
    for s in sentences[1:-1]:
        if m := re.search(r"buys (\d+) (?:bags of|boxes with) (\d+)", s):
            v += int(m.group(1)) * int(m.group(2))
        elif m := re.search(r"(?:finds|buys) (\d+) more|gives \w+ (\d+) more", s):
            v += int(m.group(1) or m.group(2))
        elif m := re.search(r"(?:gives|loses|sells) (\d+)", s):
            v -= int(m.group(1))
        elif m := re.search(r"into (\d+) equal piles", s):
            assert v % int(m.group(1)) == 0
            v //= int(m.group(1))
        else:
            raise AssertionError(f"unparsed sentence {s!r}")
    return v


# --------------------------------------------------------------------------------------------------
# Generation.


def test_is_a_task_with_the_documented_fields(task):
    assert isinstance(task, Task) and task.name == "arith"
    ex = task.examples("train")[0]
    assert isinstance(ex, Example)
    assert ex.prompt.startswith("Problem: ") and ex.prompt.endswith("\nSolution:\n")
    assert ex.reference.endswith("\\boxed{" + ex.answer + "}")
    assert set(ex.meta) == {"level", "kind", "num_steps", "key"}
    assert [len(task.examples(s)) for s in task.splits] == [2000, 400, 400]


def test_answers_match_an_independent_solver(task):
    for ex in all_examples(task):
        assert str(solve_independently(ex)) == ex.answer, ex


def test_deterministic_by_seed():
    a, b, c = small(3), small(3), small(4)
    for s in a.splits:
        assert a.examples(s) == b.examples(s)
    assert [e.prompt for e in a.examples("train")] != [e.prompt for e in c.examples("train")]
    assert list(a.corpus("validation")) == list(b.corpus("validation"))


def test_splits_disjoint_deduplicated_and_hash_assigned(task):
    keys = {s: [e.meta["key"] for e in task.examples(s)] for s in task.splits}
    for s, ks in keys.items():
        assert len(set(ks)) == len(ks), f"duplicates in {s}"
        assert all(split_of(k) == s for k in ks)
    sets = [set(v) for v in keys.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    prompts = [{e.prompt for e in task.examples(s)} for s in task.splits]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    ids = [e.id for e in all_examples(task)]
    assert len(set(ids)) == len(ids)


def test_no_problem_crosses_splits_between_seeds():
    a, b = small(0, n=(1500, 300, 300)), small(1, n=(1500, 300, 300))
    for s in a.splits:
        others = {e.meta["key"] for t in a.splits if t != s for e in b.examples(t)}
        assert not {e.meta["key"] for e in a.examples(s)} & others


def test_test_split_does_not_depend_on_num_train():
    a, b = small(0, n=(100, 50, 80)), small(0, n=(900, 50, 80))
    assert a.examples("test") == b.examples("test")
    assert a.examples("train") == b.examples("train")[:100]


def test_word_problem_key_is_the_arithmetic_skeleton():
    # Same numbers and events -> same key (and so the same split), whatever the names and phrasing.
    r = random.Random(0).random
    by_key = collections.defaultdict(set)
    for _ in range(20_000):
        p = arith._gen_word(r, 1)
        by_key[p.key].add((p.statement, tuple(p.steps), p.answer))
    assert all(len({(st, a) for _, st, a in v}) == 1 for v in by_key.values())
    assert sum(len(v) > 1 for v in by_key.values()) > 100  # surface variants do collide


def test_cells_are_balanced(task):
    counts = collections.Counter((e.meta["kind"], e.meta["level"]) for e in task.examples("train"))
    assert len(counts) == 20
    assert max(counts.values()) < 2 * min(counts.values())


def test_default_kinds_and_level_subsets():
    t = ArithTask(num_train=60, num_validation=10, num_test=10)
    assert {e.meta["kind"] for e in t.examples("train")} == set(arith.DEFAULT_KINDS)
    t = ArithTask(num_train=50, num_validation=0, num_test=0, levels=(5,), kinds=("mod",))
    assert {(e.meta["kind"], e.meta["level"]) for e in t.examples("train")} == {("mod", 5)}
    assert t.examples("validation") == ()


def test_harder_levels_have_longer_solutions(task):
    lengths = collections.defaultdict(list)
    for e in all_examples(task):
        lengths[e.meta["kind"], e.meta["level"]].append((len(e.reference), e.meta["num_steps"]))
    for kind in arith.KINDS:
        means = [
            [sum(x[i] for x in lengths[kind, lv]) / len(lengths[kind, lv]) for lv in arith.LEVELS]
            for i in (0, 1)
        ]
        for m in means:
            assert all(a < b for a, b in zip(m, m[1:])), (kind, m)
    assert max(len(e.reference) for e in all_examples(task)) <= 110


def test_bad_config_is_refused():
    with pytest.raises(ConfigError, match="levels"):
        ArithTask(levels=(0, 6))
    with pytest.raises(ConfigError, match="kinds"):
        ArithTask(kinds=("calculus",))
    with pytest.raises(ConfigError, match="num_test"):
        ArithTask(num_test=-1)
    with pytest.raises(ValueError, match="unknown split"):
        small().examples("dev")


def test_exhausted_problem_space_is_a_clear_error():
    # linear level 1 has 3 x 100 x 99 distinct problems; asking for more must fail, not spin.
    t = ArithTask(num_train=40_000, num_validation=0, num_test=0, levels=(1,), kinds=("linear",))
    with pytest.raises(ConfigError, match="no new linear problem at level 1"):
        t.examples("train")


def test_registry_builds_arith():
    t = registry.get_task("arith", seed=1, num_train=5, num_validation=1, num_test=1)
    assert isinstance(t, ArithTask) and len(t.examples("train")) == 5
    assert "arith" in registry.task_names() and "sentiment" in registry.task_names()
    with pytest.raises(ConfigError, match="unknown task"):
        registry.get_task("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task("arith", "somewhere:Else")


# --------------------------------------------------------------------------------------------------
# Grading.


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_grader_accepts_every_reference(seed):
    t = small(seed, n=(300, 100, 100))
    for ex in all_examples(t):
        g = t.grade(ex, ex.reference)
        assert (g.reward, g.answer, g.reason) == (1.0, ex.answer, None), ex
        # With the prompt in front, and with trailing text after the box.
        assert t.grade(ex, ex.prompt + ex.reference + "\n").reward == 1.0


def test_grader_rejects_corrupted_solutions(task):
    rng = random.Random(0)
    for ex in task.examples("validation"):
        ref = ex.reference
        body = ref[: ref.rindex("\\boxed")]
        wrong = str(int(ex.answer) + rng.choice([-2, -1, 1, 7]))
        g = task.grade(ex, body + "\\boxed{" + wrong + "}")
        assert (g.reward, g.answer, g.reason) == (0.0, wrong, "wrong_answer")
        assert task.grade(ex, body + ex.answer).reason == "no_boxed_answer"  # box removed
        assert task.grade(ex, body + "\\boxed{" + ex.answer).reason == "no_boxed_answer"  # cut off
        garbled = body + "\\boxed{" + ex.answer.replace("1", "l").replace("0", "o") + "x}"
        assert task.grade(ex, garbled).reason == "not_an_integer"
        # The last box counts, not an earlier one.
        assert task.grade(ex, ref + "\n\\boxed{" + wrong + "}").reward == 0.0
        assert task.grade(ex, "\\boxed{" + wrong + "}\n" + ref).reward == 1.0


def test_grader_normalises_the_extracted_answer():
    ex = Example(id="t", prompt="", answer="-7")
    t = small()
    for text in ["\\boxed{-7}", "\\boxed{ - 7 }", "\\boxed{-007}", "\\boxed{\u22127}", "\\boxed -7$"]:
        assert t.grade(ex, text).reward == 1.0, text
    zero = Example(id="z", prompt="", answer="0")
    for text in ["\\boxed{0}", "\\boxed{-0}", "\\boxed{+000}"]:
        g = t.grade(zero, text)
        assert (g.reward, g.answer) == (1.0, "0")
    for text in ["\\boxed{7}", "\\boxed{-7.0}", "\\boxed{--7}", "\\boxed{x=-7}"]:
        assert t.grade(ex, text).reward == 0.0, text


def test_grader_never_raises_on_garbage(task):
    rng = random.Random(1234)
    pieces = ["\\boxed{", "\\boxed", "\\fbox{", "{", "}", "\\", "\\{", "-", "+", "0", "7", " ", "\n",
              "=", "mod", "(", ")", "*", "/", "é", "\u2212", "\x00", "abc", "\\boxed ", "$"]  # fmt: skip
    exs = task.examples("test")[:10]
    for i in range(3000):
        if i % 2:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))
        else:
            text = "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(0, 80)))
        ex = exs[i % len(exs)]
        g = task.grade(ex, text)
        assert g.reward in (0.0, 1.0)
        assert g.reason in (None, "no_boxed_answer", "not_an_integer", "wrong_answer")
        n, c = check_steps(text)
        assert 0 <= c <= n
    grades = task.grade_batch(exs[:2], [["\\boxed{", "}"], [exs[1].reference, 5 * "\\boxed{{"]])
    assert grades.rewards_BM.tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_normalize_integer():
    cases = {"7": "7", "+7": "7", "007": "7", " - 5 ": "-5", "-0": "0", "+0": "0", "00": "0",
             "-007": "-7", "1 2": "12", "\u22123": "-3", "": None, "--5": None, "5.0": None,
             "1,000": None, "1_000": None, "x": None, "\u0665": None, "+": None, "-": None}  # fmt: skip
    for s, want in cases.items():
        assert normalize_integer(s) == want, s
    assert normalize_integer(None) is None


def test_last_boxed():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed{3} then \\boxed{4") is None  # the last box is unclosed
    assert last_boxed("$\\boxed 5$") == "5"
    assert last_boxed("\\fbox{x+1}") == "x+1"
    assert last_boxed("\\boxed{}") == ""
    assert last_boxed("no box") is None and last_boxed("\\boxed") is None
    assert last_boxed("\\boxed{a{b}c}d}") == "a{b}c"


# --------------------------------------------------------------------------------------------------
# The step checker.


def test_references_have_only_true_steps(task):
    for ex in all_examples(task):
        assert check_steps(ex.reference) == (ex.meta["num_steps"],) * 2, ex


def test_check_steps_finds_a_corrupted_step(task):
    rng = random.Random(7)
    for ex in task.examples("test"):
        lines = ex.reference.split("\n")
        i = rng.randrange(len(lines) - 1)
        lhs, rhs = lines[i].rsplit("=", 1)
        off = rng.choice([-3, -1, 1, 10])
        lines[i] = f"{lhs}={int(rhs) + off}"
        labels = step_labels("\n".join(lines))
        assert labels == [j != i for j in range(len(lines) - 1)], (ex.reference, lines)
        assert [step_error(ln) for ln in lines[:-1]] == [off if j == i else 0 for j in range(len(lines) - 1)]


def test_check_step_semantics():
    true = ["3*(-4)=-12", "17 mod 5=2", "-3 mod 5=2", "-14/2=-7", "1=1=1", "2*3+4=10", "(2+3)*4=20",
            " 4 + 5 = 9 ", "-9-12=-21", "-16+21=5", "10=2*5"]  # fmt: skip
    false = ["3+4=8", "7/2=3", "5/0=0", "4 mod 0=0", "4 mod -3=1", "1=1=2", "abc", "", "3+4",
             "(3+4=7", "3+4)=7", "x+1=2", "9=", "=9", "3**2=9",
             "2" * 300 + "=1", "(" * 150 + "1=1"]  # fmt: skip
    for s in true:
        assert check_step(s), s
    for s in false:
        assert not check_step(s), s
    assert check_steps("1+1=2\n\n2+2=5\nhello\n\\boxed{4}") == (3, 1)
    assert check_steps("") == (0, 0)
    assert [step_error(s) for s in ("170-81=99", "-29+56=27", "3*(-4)=-13", "10=2*5", "7/2=3", "1=1=1", "abc")] == [
        10, 0, -1, 0, None, None, None]  # fmt: skip
