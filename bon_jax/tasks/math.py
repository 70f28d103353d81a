"""MATH (Hendrycks et al., 2021): competition problems graded by their final `\\boxed{}` answer.

Data (all local, nothing is downloaded; `data_dir` is detected in this order):

1. a TFDS data dir holding `hendrycks_math/<version>/` prepared in array_record format by
   `bon_jax.data.tfds_builders.HendrycksMath` (read with `tfds.data_source`, no TensorFlow);
2. the official release layout: `<data_dir>/train/<subject>/<n>.json` and `<data_dir>/test/...`,
   each file one JSON object with `problem`, `level` ("Level 3"), `type` ("Algebra"), `solution`;
3. jsonl files `<data_dir>/train.jsonl` and `<data_dir>/test.jsonl`, one problem per line with
   `problem`, `solution`, and optionally `answer`, `level` ("Level 3" or 3), `type` or `subject`,
   `unique_id` -- the format of Lightman et al.'s PRM800K `math_splits/*.jsonl` and of MATH-500,
   whose `unique_id` ("test/precalculus/807.json") is the official file's path.

Example ids are the official relative paths ("train/algebra/1.json"), the `unique_id` of a jsonl
row, or "<split>.jsonl:<line>" when a row has neither. Every split is sorted by id, whatever the
source (TFDS stores rows shuffled), so all layouts of the same data give the same example list.

Splits. `test` is the official test split. `validation` is carved from the official train split:
a problem goes to validation iff `holdout_fraction("math", id) < validation_fraction` (a hash of its
id, see `bon_jax.data.sources.holdout_fraction`), so the carve is deterministic, does not depend
on file order, and a problem never moves when others are added or removed; `train` is the rest.

MATH-500 (`subset="math500"`, the 500-problem test subset of Lightman et al., "Let's Verify Step by
Step"): `test` becomes those 500 problems. Give the subset with `subset_file=`, or put it in
`data_dir` as `math500.jsonl` (checked first) or `math500_ids.txt`:
- a jsonl of full problems (MATH-500's `test.jsonl`): its rows *are* the test split, so the
  official test split need not be present;
- a list of ids, one `unique_id` per line (a `.txt`), or a jsonl whose rows hold only `unique_id`:
  the official test split is filtered to those ids, and an id it lacks is a DataError.
train/validation are unaffected by the subset.

Grading. The gold answer is the row's `answer` field when present, else the last `\\boxed{}` of the
solution. A completion's answer is the content of its last `\\boxed{}` / `\\fbox{}` (none: reward 0,
reason "no boxed answer"; extraction is `bon_jax.tasks.text.last_boxed`). Equivalence, cheapest first:
1. `strip_string` (our rewrite of the MATH paper's normalisation) of both sides is equal;
2. `math_verify.verify(parse(gold), parse(pred))` (gold first: the check is not symmetric).
math_verify interrupts slow sympy work with `signal.alarm`, which works only in the main thread:
there we pass its timeouts (`timeout_s`); in any other thread we turn them off and rely on the guard
that runs everywhere: answers that could make sympy build astronomically large numbers (nested
exponents, exponents or factorials of 7+ digits, over `_MAX_SYMBOLIC_CHARS` characters) skip
step 2 and are graded by step 1 alone, with reason "too complex for symbolic check" when it fails.
Grading never raises on completion text.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bon_jax.errors import DataError
from bon_jax.tasks.base import Example, Grade, Task
from bon_jax.tasks.splits import decode_record, holdout_fraction, open_tfds_split
from bon_jax.tasks.text import braced_group, last_boxed

log = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = (
    "Solve the problem. Put the final answer in \\boxed{{}}.\n\nProblem:\n{problem}\n\nSolution:\n"
)
TFDS_NAME = "hendrycks_math"
RECORD_FIELDS = ("id", "problem", "solution", "answer", "level", "type")

# ---------------------------------------------------------------------------------------------------
# String normalisation (after Hendrycks et al.'s `is_equiv` / `strip_string`, rewritten).


def _group_or_char(s: str, i: int) -> tuple[str, int] | None:
    """The argument of a macro at `s[i]`: a `{...}` group's content or one character."""
    if i >= len(s):
        return None
    if s[i] == "{":
        return braced_group(s, i)
    if s[i] == "\\":  # a command argument like \pi: take the whole command name
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + len(m.group(0))
    return s[i], i + 1


def _fix_macro_args(s: str, macro: str, n_args: int) -> str:
    """Brace the arguments of `macro`: `\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`."""
    out = []
    i = 0
    while True:
        j = s.find(macro, i)
        if j < 0:
            out.append(s[i:])
            break
        k = j + len(macro)
        if k < len(s) and s[k].isalpha():  # a longer command, e.g. \fracx is not \frac
            out.append(s[i:k])
            i = k
            continue
        out.append(s[i:k])
        args = []
        for _ in range(n_args):
            got = _group_or_char(s, k)
            if got is None:
                break
            args.append(got[0])
            k = got[1]
        if len(args) < n_args:  # malformed: keep the rest as it is
            out.append(s[j + len(macro) :])
            break
        out.append("".join("{" + a + "}" for a in args))
        i = k
    return "".join(out)


_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
_TEXT_MACROS = ("\\text", "\\textbf", "\\textrm", "\\mathrm", "\\mbox")


def _unwrap_whole_text(s: str) -> str:
    """`\\text{Monday}` -> `Monday` when the whole answer is one text macro."""
    for macro in _TEXT_MACROS:
        if s.startswith(macro + "{"):
            got = braced_group(s, len(macro))
            if got is not None and got[1] == len(s):
                return got[0]
    return s


def _drop_trailing_units(s: str) -> str:
    """`5\\text{ cm}` -> `5`: a text macro at the end of a non-text answer is a unit."""
    for macro in _TEXT_MACROS:
        k = s.rfind(macro + "{")
        if k > 0:
            got = braced_group(s, k + len(macro))
            if got is not None and got[1] == len(s):
                return s[:k].rstrip()
    return s


def strip_string(s: str) -> str:
    """Canonical string form of a MATH answer; equal forms mean equivalent answers.

    Removes layout (`\\left`/`\\right`, `\\!`, `\\,`, spaces, `\\displaystyle`), `\\dfrac`/`\\tfrac`
    -> `\\frac`, degrees (`^\\circ`), dollars (`\\$`), percent signs, trailing text units, a short
    left-hand side (`x = 3` -> `3`), thousands separators (`1,000` -> `1000`), a trailing period;
    braces the arguments of `\\frac`/`\\sqrt`; writes `a/b` of integers and `0.5` as `\\frac{a}{b}`
    and a leading `.5` as `0.5`. Total: never raises.
    """
    if not isinstance(s, str):
        return ""
    s = s.replace("\n", "").replace("\\!", "").strip()
    s = s.replace("\\\\", "\\")
    for thin in ("\\,", "\\;", "\\:", "\\ ", "\\quad", "\\qquad", "\\displaystyle"):
        s = s.replace(thin, " ")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.strip()
    s = _unwrap_whole_text(s)
    s = _drop_trailing_units(s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.strip().rstrip(".").strip()
    if s.startswith("."):
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:  # "x = 3", "k=3" -> "3"
        s = parts[1]
    s = s.replace(" ", "")
    s = s.replace("{,}", ",")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = _fix_macro_args(s, "\\sqrt", 1)
    s = _fix_macro_args(s, "\\frac", 2)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    return s


# ---------------------------------------------------------------------------------------------------
# Equivalence with math_verify, guarded.

_MAX_SYMBOLIC_CHARS = 400
_EXPLOSIVE = (
    re.compile(r"\^\s*\{[^{}]*\^"),  # a power inside an exponent group: 10^{10^{10}}
    re.compile(r"\^\s*\d+\s*\^"),  # 10^10^10 written without braces
    re.compile(r"(\^|\*\*)\s*\{?\s*-?\d{7,}"),  # exponent of 7+ digits
    re.compile(r"\d{7,}\s*!"),  # factorial of a 7+ digit number
)


def too_complex_for_sympy(answer: str) -> bool:
    """Whether an answer could make sympy build astronomically large numbers (or is very long)."""
    return len(answer) > _MAX_SYMBOLIC_CHARS or any(p.search(answer) for p in _EXPLOSIVE)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _BoundedCache:
    """A thread-safe dict that forgets its oldest entries beyond `size`."""

    def __init__(self, size: int):
        self._size = size
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


_PARSE_CACHE = _BoundedCache(8192)
_EQUIV_CACHE = _BoundedCache(65536)


def _mv_parse(answer: str, timeout_s: int | None) -> list:
    """math_verify's parse of a boxed answer (sympy objects and the raw string); [] on failure."""
    key = (answer, timeout_s is not None)
    got = _PARSE_CACHE.get(key)
    if got is not None:
        return got
    from math_verify import parse

    try:
        parsed = parse("$\\boxed{" + answer + "}$", parsing_timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a bad answer must not crash training
        log.debug("math_verify.parse failed on %r", answer, exc_info=True)
        parsed = []
    _PARSE_CACHE.put(key, parsed)
    return parsed


def check_equivalence(gold: str, pred: str, *, timeout_s: int | None = 5) -> tuple[bool, str | None]:
    """Whether `pred` is a correct final answer for `gold`; (False, reason) when not.

    `timeout_s` bounds each math_verify parse/comparison (whole seconds, via `signal.alarm`); it is
    used in the main thread only -- elsewhere math_verify runs without timeouts behind the
    `too_complex_for_sympy` guard. Never raises.
    """
    try:
        if strip_string(gold) == strip_string(pred) and strip_string(gold) != "":
            return True, None
    except Exception:  # noqa: BLE001 - belt and braces: strip_string is meant to be total
        log.debug("strip_string failed", exc_info=True)
    if too_complex_for_sympy(gold) or too_complex_for_sympy(pred):
        return False, "too complex for symbolic check"
    timeout = timeout_s if (timeout_s and _in_main_thread()) else None
    key = (gold, pred)
    cached = _EQUIV_CACHE.get(key)
    if cached is not None:
        return cached
    from math_verify import verify
    from math_verify.errors import TimeoutException

    gold_parsed = _mv_parse(gold, timeout)
    pred_parsed = _mv_parse(pred, timeout)
    if not pred_parsed:
        return False, "unparsable answer"
    if not gold_parsed:
        return False, "not equivalent (gold answer unparsable by math_verify)"
    timed_out = False
    for g, p in itertools.product(gold_parsed, pred_parsed):
        try:
            if verify(g, p, timeout_seconds=timeout, raise_on_error=True):
                _EQUIV_CACHE.put(key, (True, None))
                return True, None
        except TimeoutException:
            timed_out = True
        except Exception:  # noqa: BLE001
            log.debug("math_verify.verify failed on %r vs %r", gold, pred, exc_info=True)
    if timed_out:  # not cached: a retry with more time may succeed
        return False, "verifier timed out"
    parsed_to_maths = any(not isinstance(x, str) for x in pred_parsed)
    result = (False, "not equivalent" if parsed_to_maths else "unparsable answer")
    _EQUIV_CACHE.put(key, result)
    return result


def answers_equivalent(a: str, b: str, *, timeout_s: int | None = 5) -> bool:
    """Whether two final answers are the same answer: each is graded correct with the other as the gold
    answer (`check_equivalence` both ways, since math_verify's check is not symmetric). Never raises."""
    if a == b:
        return True
    return check_equivalence(a, b, timeout_s=timeout_s)[0] and check_equivalence(b, a, timeout_s=timeout_s)[0]


# ---------------------------------------------------------------------------------------------------
# Reading the data.


def _level_number(level: Any) -> int | None:
    if isinstance(level, bool):
        return None
    if isinstance(level, int):
        return level
    m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", str(level))
    return int(m.group(1)) if m else None


def _require_str(obj: dict, field: str, path, line: int | None) -> str:
    if field not in obj:
        raise DataError(path, f"missing field {field!r}", line)
    value = obj[field]
    if not isinstance(value, str) or not value.strip():
        raise DataError(path, f"field {field!r} must be a non-empty string, got {value!r}", line)
    return value


def _make_record(obj: Any, default_id: str, path, line: int | None) -> dict[str, str]:
    """A canonical record (all strings: id, problem, solution, answer, level, type) from a row."""
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line)
    problem = _require_str(obj, "problem", path, line)
    solution = _require_str(obj, "solution", path, line)
    answer = obj.get("answer")
    if answer is None:
        answer = last_boxed(solution)
        if answer is None:
            raise DataError(path, "no 'answer' field and no \\boxed{} answer in 'solution'", line)
    elif not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise DataError(path, f"field 'answer' must be a string, got {answer!r}", line)
    answer = str(answer)
    if not answer.strip():
        raise DataError(path, "empty answer", line)
    level = obj.get("level", "")
    if isinstance(level, int) and not isinstance(level, bool):
        level = f"Level {level}"
    subject = obj.get("type", obj.get("subject", ""))
    uid = obj.get("unique_id", default_id)
    for name, value in (("level", level), ("type", subject), ("unique_id", uid)):
        if not isinstance(value, str):
            raise DataError(path, f"field {name!r} must be a string, got {value!r}", line)
    return {
        "id": uid,
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "level": level,
        "type": subject,
    }


def read_official_split(root: str | os.PathLike, split: str) -> list[dict[str, str]]:
    """Records of `<root>/<split>/<subject>/<n>.json`, sorted by path (ids are the paths)."""
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(split_dir, "no such directory (expected the official MATH layout)")
    files = sorted(split_dir.glob("*/*.json"), key=lambda f: f.relative_to(root).as_posix())
    if not files:
        raise DataError(split_dir, "no <subject>/<n>.json files")
    records = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f, f"cannot read: {e}") from e
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f, f"bad JSON: {e.msg}", e.lineno) from e
        records.append(_make_record(obj, rel, f, None))
    _check_unique(records, split_dir)
    return records


def _read_jsonl_objects(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed object) of each non-blank line of a jsonl file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read: {e}") from e
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(path, f"bad JSON: {e.msg}", n) from e
    if not rows:
        raise DataError(path, "empty file")
    return rows


def read_jsonl_split(path: str | os.PathLike) -> list[dict[str, str]]:
    """Records of a MATH jsonl file, in file order. Rows without `unique_id` get "<file>:<line>"."""
    path = Path(path)
    records = [_make_record(obj, f"{path.name}:{n}", path, n) for n, obj in _read_jsonl_objects(path)]
    _check_unique(records, path)
    return records


def _check_unique(records: Sequence[dict], where) -> None:
    seen = set()
    for r in records:
        if r["id"] in seen:
            raise DataError(where, f"duplicate id {r['id']!r}")
        seen.add(r["id"])


def read_id_list(path: str | os.PathLike) -> list[tuple[int, str]]:
    """(line, id) of a subset file: one id per line (.txt), or a jsonl of rows with `unique_id`."""
    path = Path(path)
    if path.suffix == ".jsonl":
        out = []
        for n, obj in _read_jsonl_objects(path):
            if not isinstance(obj, dict) or not isinstance(obj.get("unique_id"), str):
                raise DataError(path, "row has no string 'unique_id'", n)
            out.append((n, obj["unique_id"]))
        return out
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read: {e}") from e
    out = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not out:
        raise DataError(path, "empty file")
    return out


def detect_layout(data_dir: str | os.PathLike) -> str:
    """'tfds', 'official' or 'jsonl' (see the module docstring); DataError if none fits."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(d, "MATH data_dir does not exist or is not a directory")
    if (d / TFDS_NAME).is_dir():
        return "tfds"
    if (d / "train").is_dir() or (d / "test").is_dir():
        return "official"
    if (d / "train.jsonl").is_file() or (d / "test.jsonl").is_file():
        return "jsonl"
    if (d / "math500.jsonl").is_file():
        return "jsonl"  # MATH-500 alone: only the test split exists
    raise DataError(
        d,
        f"no MATH data found: expected {TFDS_NAME}/ (TFDS), train/ and test/ (official layout), "
        "or train.jsonl / test.jsonl",
    )


def read_raw_split(data_dir: str | os.PathLike, split: str, layout: str) -> list[dict[str, str]]:
    """Records of the official 'train' or 'test' split in the 'official' or 'jsonl' layout."""
    d = Path(data_dir)
    if layout == "official":
        return read_official_split(d, split)
    if layout == "jsonl":
        path = d / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(path, "no such file")
        return read_jsonl_split(path)
    raise ValueError(f"unknown raw layout {layout!r}")


def _read_tfds_split(data_dir: str | os.PathLike, split: str) -> list[dict[str, str]]:
    source = open_tfds_split(TFDS_NAME, data_dir, split)
    return [decode_record(source[i]) for i in range(len(source))]


def find_subset_file(data_dir: str | os.PathLike) -> Path:
    d = Path(data_dir)
    for name in ("math500.jsonl", "math500_ids.txt"):
        if (d / name).is_file():
            return d / name
    raise DataError(d, "subset='math500' needs math500.jsonl or math500_ids.txt here, or subset_file=")


def read_math500(subset_file: str | os.PathLike, full_test: Any) -> list[dict[str, str]]:
    """The MATH-500 test records: the file's own rows if it holds problems, else `full_test()`
    filtered to its ids."""
    path = Path(subset_file)
    if path.suffix == ".jsonl":
        rows = _read_jsonl_objects(path)
        if any(isinstance(obj, dict) and "problem" in obj for _, obj in rows):
            return read_jsonl_split(path)
    wanted = read_id_list(path)
    by_id = {r["id"]: r for r in full_test()}
    out = []
    for line, uid in wanted:
        if uid not in by_id:
            raise DataError(path, f"id {uid!r} is not in the MATH test split", line)
        out.append(by_id[uid])
    _check_unique(out, path)
    return out


# ---------------------------------------------------------------------------------------------------
# The task.


def record_to_example(record: dict[str, str], prompt_template: str) -> Example:
    return Example(
        id=record["id"],
        prompt=prompt_template.format(problem=record["problem"]),
        reference=record["solution"],
        answer=record["answer"],
        meta={
            "problem": record["problem"],
            "level": _level_number(record["level"]),
            "subject": record["type"],
        },
    )


@dataclasses.dataclass
class MathTask(Task):
    """MATH with `\\boxed{}` answers graded by string normalisation, then math_verify.

    Args:
      data_dir: a TFDS data dir, the official layout, or jsonl files (module docstring).
      subset: None, or "math500" (test becomes the MATH-500 subset).
      subset_file: the MATH-500 jsonl or id list (default: found in `data_dir`).
      validation_fraction: share of the official train split carved out (by id hash) as validation.
      prompt_template: `str.format` template with a `{problem}` field.
      timeout_s: math_verify timeout per parse/comparison, in whole seconds (main thread only).
    """

    data_dir: str | os.PathLike
    subset: str | None = None
    subset_file: str | os.PathLike | None = None
    validation_fraction: float = 0.05
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    timeout_s: int | None = 5

    name = "math"
    splits = ("train", "validation", "test")

    def __post_init__(self):
        if self.subset not in (None, "math500"):
            raise ValueError(f"subset must be None or 'math500', got {self.subset!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if "{problem}" not in self.prompt_template:
            raise ValueError("prompt_template needs a {problem} field")
        self.layout = detect_layout(self.data_dir)
        self._raw: dict[str, list[dict[str, str]]] = {}
        self._examples: dict[str, list[Example]] = {}
        self._lock = threading.Lock()

    def _official(self, split: str) -> list[dict[str, str]]:
        if split not in self._raw:
            if self.layout == "tfds":
                self._raw[split] = _read_tfds_split(self.data_dir, split)
            else:
                self._raw[split] = read_raw_split(self.data_dir, split, self.layout)
        return self._raw[split]

    def records(self, split: str) -> list[dict[str, str]]:
        """The canonical records (dicts of strings) of `split`, sorted by id (as `examples`)."""
        return sorted(self._records(split), key=lambda r: r["id"])

    def _records(self, split: str) -> list[dict[str, str]]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; expected one of {self.splits}")
        if split == "test":
            if self.subset == "math500":
                if self.layout == "tfds" and self.subset_file is None:
                    return self._official("math500")  # the split prepare_math wrote
                subset_file = self.subset_file or find_subset_file(self.data_dir)
                return read_math500(subset_file, lambda: self._official("test"))
            return self._official("test")
        held = [holdout_fraction("math", r["id"]) < self.validation_fraction for r in self._official("train")]
        want = split == "validation"
        return [r for r, h in zip(self._official("train"), held) if h == want]

    def examples(self, split: str) -> Sequence[Example]:
        with self._lock:
            if split not in self._examples:
                self._examples[split] = [
                    record_to_example(r, self.prompt_template) for r in self.records(split)
                ]
            return self._examples[split]

    def grade(self, example: Example, completion: str) -> Grade:
        pred = last_boxed(completion) if isinstance(completion, str) else None
        if pred is None:
            return Grade(0.0, None, "no boxed answer")
        if not pred.strip():
            return Grade(0.0, None, "empty boxed answer")
        gold = example.answer
        if gold is None:
            gold = last_boxed(example.reference or "") or ""
        normalized = strip_string(pred)
        ok, reason = check_equivalence(gold, pred, timeout_s=self.timeout_s)
        return Grade(1.0 if ok else 0.0, normalized, reason)

    def same_answer(self, a: str, b: str) -> bool:
        """Majority voting's equivalence: `answers_equivalent` ("0.25", "\\frac{1}{4}" and "1/4" are one)."""
        return answers_equivalent(a, b, timeout_s=self.timeout_s)
