"""`arith`: generated, MATH-like integer problems with worked solutions ending in `\\boxed{ANSWER}`.

The default experiment's data: offline, deterministic by seed, cheap to train on and to sample. Four kinds
of problem, each at difficulty levels 1-5 (more levels = more steps, larger numbers):

- `expr`   nested arithmetic with + - * and parentheses, `level + 1` operations, reduced one operation per
           line in the order a recursive evaluator takes (left operand, right operand, then the operation:
           parentheses first, * before + and -, left to right);
- `linear` linear equations in x (`x+a=b` ... `a(x+b)+e=c(x+f)`), solved by arithmetic on coefficients;
- `mod`    modular arithmetic (`(a*b+c) mod m` ...), reducing every factor mod m first;
- `word`   short word problems (`Ann has 12 apples. ...`), one line per event.

The default kinds are expr, linear and word; `mod` is opt-in (see DEFAULT_KINDS for why).

Format (one problem per example; the tokenizer must keep newlines, see `bon_jax.tokenizer`)::

    prompt:    "Problem: Compute 3*(4+5)-7.\\nSolution:\\n"
    reference: "4+5=9\\n3*9=27\\n27-7=20\\n\\\\boxed{20}"

Every line of a worked solution except the last is an arithmetic *step* `LHS=RHS` over integers with
+ - * / ( ) and `mod` (a negative right operand is parenthesised, `3*(-4)=-12`), so one checker,
`check_steps`, validates the steps of every kind: it is the oracle step verifier. Each step is small
(at most one multiplication of a two-digit by a one-digit number, sums below 300), so each is learnable by a
small model; the number of steps (1-8) is what makes a single sample unreliable at the higher levels.

Splits: a problem's split is a function of the hash of its canonical key only (the prompt text; for word
problems the arithmetic skeleton, so that two word problems that differ only in names and items never
straddle splits). The same problem lands in the same split for every seed and every requested size, and
problems are deduplicated by key. Generation walks a seeded stream of problems, cycling over the (kind,
level) cells, and fills each split in stream order: the test set does not change when `num_train` does.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence

from bon_jax.errors import ConfigError
from bon_jax.tasks.base import Example, Grade, Task
from bon_jax.tasks.text import last_boxed, normalize_integer

KINDS = ("expr", "linear", "mod", "word")
# `mod` is opt-in: its answers are residues in [0, m), m <= 12, so a policy that guesses answers from the
# marginal distribution, ignoring the problem, already has pass@32 ~ 0.93 on it: pass@k cannot show what
# Best-of-N adds there. On the default kinds that chance floor is 0.2-0.45 (expr, word lowest).
DEFAULT_KINDS = ("expr", "linear", "word")
LEVELS = (1, 2, 3, 4, 5)
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}

PROMPT_PREFIX = "Problem: "
PROMPT_SUFFIX = "\nSolution:\n"

# ------------------------------------------------------------------------------------------------
# Writing steps.


def _step(a: int, op: str, b: int) -> tuple[str, int]:
    """One step line `a op b=c` and its value c. Canonical spelling of a negative right operand:
    `a+(-b)` is written `a-b`, `a-(-b)` is `a+b`, and `a*(-b)` keeps the parentheses."""
    if op in "+-" and b < 0:
        op, b = ("-" if op == "+" else "+"), -b
    if op == "+":
        c = a + b
    elif op == "-":
        c = a - b
    elif op == "*":
        c = a * b
    elif op == "/":
        c, rem = divmod(a, b)
        if rem:
            raise AssertionError(f"inexact division {a}/{b}")  # a generator bug, never user input
    elif op == "mod":
        return f"{a} mod {b}={a % b}", a % b
    else:
        raise AssertionError(op)
    rhs = f"({b})" if b < 0 else str(b)
    return f"{a}{op}{rhs}={c}", c


class _Problem:
    __slots__ = ("kind", "level", "statement", "steps", "answer", "key")

    def __init__(self, kind, level, statement, steps, answer, key=None):
        self.kind = kind
        self.level = level
        self.statement = statement
        self.steps = steps
        self.answer = answer
        self.key = key if key is not None else statement


# ------------------------------------------------------------------------------------------------
# Generators: each takes (r, level), r = a seeded `random.Random().random`, and returns a _Problem.

_PREC = {"+": 1, "-": 1, "*": 2}
_EXPR_LEAF_MAX = {1: 12, 2: 12, 3: 20, 4: 20, 5: 20}
_EXPR_SUM_MAX = 300


def _expr_mult_ok(a: int, b: int, level: int) -> bool:
    if level <= 2:
        return a <= 12 and b <= 12  # the times table
    return min(a, b) <= 9 and a * b <= 200  # one digit times at most two digits


def _gen_expr(r, level: int) -> _Problem:
    leaf_max = _EXPR_LEAF_MAX[level]
    steps: list[str] = []

    def build(n_ops: int) -> tuple[int, str, int]:
        """(value, text, precedence) of a random tree with n_ops operators; appends its steps."""
        if n_ops == 0:
            v = 1 + int(r() * leaf_max)
            return v, str(v), 3
        k = int(r() * n_ops)
        left = build(k)
        right = build(n_ops - 1 - k)
        a, b = left[0], right[0]
        ops = []
        if a + b <= _EXPR_SUM_MAX:
            ops.append("+")
        if a >= b:
            ops.append("-")
        if _expr_mult_ok(a, b, level):
            ops.append("*")
        if not ops:  # a < b and a + b too large: swap the operands and subtract
            left, right, a, b = right, left, b, a
            ops.append("-")
        op = ops[int(r() * len(ops))]
        p = _PREC[op]
        lt = left[1] if left[2] >= p else f"({left[1]})"
        rt = right[1] if right[2] > p else f"({right[1]})"
        line, c = _step(a, op, b)
        steps.append(line)
        return c, lt + op + rt, p

    value, text, _ = build(level + 1)
    return _Problem("expr", level, f"Compute {text}.", steps, value)


def _coef(a: int) -> str:
    return "x" if a == 1 else f"{a}x"


def _signed(c: int) -> str:
    """`+c` or `-|c|`, for a constant that follows a term."""
    return f"+{c}" if c >= 0 else f"-{-c}"


def _gen_linear(r, level: int) -> _Problem:
    def ri(lo: int, hi: int) -> int:
        return lo + int(r() * (hi - lo + 1))

    steps: list[str] = []
    if level == 1:  # x+a=b, a+x=b, x-a=b
        x, a, form = ri(0, 99), ri(1, 99), ri(0, 2)
        if form == 2:
            b = x - a
            eq = f"x-{a}={b}"
            line, _ = _step(b, "+", a)
        else:
            b = x + a
            eq = f"x+{a}={b}" if form == 0 else f"{a}+x={b}"
            line, _ = _step(b, "-", a)
        steps.append(line)
    elif level == 2:  # ax+b=c
        a, x, b = ri(2, 9), ri(-20, 40), ri(-60, 60) or 1
        c = a * x + b
        eq = f"{a}x{_signed(b)}={c}"
        line, m = _step(c, "-", b)
        steps.append(line)
        steps.append(_step(m, "/", a)[0])
    elif level == 3:  # ax+b=cx+d, a>c
        c = ri(1, 8)
        a = c + ri(1, 6)
        x, b = ri(-30, 40), ri(-40, 40) or 5
        d = (a - c) * x + b
        eq = f"{_coef(a)}{_signed(b)}={_coef(c)}{_signed(d)}"
        line, k = _step(a, "-", c)
        steps.append(line)
        line, m = _step(d, "-", b)
        steps.append(line)
        steps.append(_step(m, "/", k)[0])
    elif level == 4:  # a(x+b)=cx+d, a>c
        c = ri(1, 7)
        a = c + ri(1, 5)
        x, b = ri(-25, 35), ri(-9, 9) or 2
        d = (a - c) * x + a * b
        eq = f"{a}(x{_signed(b)})={_coef(c)}{_signed(d)}"
        line, p = _step(a, "*", b)
        steps.append(line)
        line, k = _step(a, "-", c)
        steps.append(line)
        line, m = _step(d, "-", p)
        steps.append(line)
        steps.append(_step(m, "/", k)[0])
    else:  # a(x+b)+e=c(x+f), a>c
        while True:
            c = ri(1, 6)
            a = c + ri(1, 5)
            x, b, f = ri(-25, 30), ri(-9, 9) or 3, ri(-9, 9) or -2
            # a x + a b + e = c x + c f  <=>  (a - c) x = c f - (a b + e): e makes x the solution.
            e = c * f - a * b - (a - c) * x
            if e and abs(e) <= 99:
                break
        eq = f"{a}(x{_signed(b)}){_signed(e)}={c}(x{_signed(f)})"
        line, p = _step(a, "*", b)
        steps.append(line)
        line, left = _step(p, "+", e)
        steps.append(line)
        line, right = _step(c, "*", f)
        steps.append(line)
        line, k = _step(a, "-", c)
        steps.append(line)
        line, m = _step(right, "-", left)
        steps.append(line)
        steps.append(_step(m, "/", k)[0])
    return _Problem("linear", level, f"Solve {eq} for x.", steps, x)


def _gen_mod(r, level: int) -> _Problem:
    def ri(lo: int, hi: int) -> int:
        return lo + int(r() * (hi - lo + 1))

    steps: list[str] = []
    m = ri(3, 12)

    def reduce(v: int) -> int:
        line, r = _step(v, "mod", m)
        steps.append(line)
        return r

    def mul(u: int, v: int) -> int:
        line, p = _step(u, "*", v)
        steps.append(line)
        return p

    if level == 1:  # (a+b) mod m
        a, b = ri(1, 99), ri(1, 99)
        expr = f"({a}+{b})"
        line, s = _step(a, "+", b)
        steps.append(line)
        r = reduce(s)
    elif level == 2:  # (a*b) mod m
        a, b = ri(10, 99), ri(10, 99)
        expr = f"({a}*{b})"
        r = reduce(mul(reduce(a), reduce(b)))
    elif level == 3:  # (a*b+c) mod m
        a, b, c = ri(10, 99), ri(10, 99), ri(10, 99)
        expr = f"({a}*{b}+{c})"
        p = mul(reduce(a), reduce(b))
        line, s = _step(p, "+", reduce(c))
        steps.append(line)
        r = reduce(s)
    elif level == 4:  # (a*b*c) mod m
        a, b, c = ri(10, 99), ri(10, 99), ri(10, 99)
        expr = f"({a}*{b}*{c})"
        p = reduce(mul(reduce(a), reduce(b)))
        r = reduce(mul(p, reduce(c)))
    else:  # (a*b+c*d) mod m
        a, b, c, d = ri(10, 99), ri(10, 99), ri(10, 99), ri(10, 99)
        expr = f"({a}*{b}+{c}*{d})"
        p = mul(reduce(a), reduce(b))
        q = mul(reduce(c), reduce(d))
        line, s = _step(p, "+", q)
        steps.append(line)
        r = reduce(s)
    return _Problem("mod", level, f"Compute {expr} mod {m}.", steps, r)


_NAMES = (
    "Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kim", "Leo",
    "Mia", "Nora", "Omar", "Pia", "Ravi", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe",
)  # fmt: skip
_ITEMS = (
    "apples", "pencils", "marbles", "stickers", "cookies", "cards", "coins", "books",
    "shells", "stamps", "balloons", "candies", "buttons", "beads", "crayons", "toys",
)  # fmt: skip
_WORD_VALUE_MAX = 300


def _gen_word(r, level: int) -> _Problem:
    """`level` events after the start; multiplicative events take two steps."""

    def ri(lo: int, hi: int) -> int:
        return lo + int(r() * (hi - lo + 1))

    def choice(seq):
        return seq[int(r() * len(seq))]

    name = choice(_NAMES)
    other = choice(_NAMES)
    while other == name:
        other = choice(_NAMES)
    items = choice(_ITEMS)
    v = ri(5, 99)
    sentences = [f"{name} has {v} {items}."]
    skeleton = [str(v)]
    steps: list[str] = []
    for _ in range(level):
        events = []
        if v < _WORD_VALUE_MAX:
            events.append("gain")
        if v >= 1:
            events.append("lose")
        if v <= _WORD_VALUE_MAX - 24:
            events.append("bags")
        divisors = [k for k in (2, 3, 4, 5) if v >= 2 * k and v % k == 0]
        if divisors:
            events.append("split")
        event = choice(events)
        if event == "gain":
            k = ri(1, min(40, _WORD_VALUE_MAX - v))
            t = int(r() * 3)
            if t == 0:
                sentences.append(f"{name} finds {k} more.")
            elif t == 1:
                sentences.append(f"{other} gives {name} {k} more.")
            else:
                sentences.append(f"{name} buys {k} more.")
            line, v = _step(v, "+", k)
            skeleton.append(f"+{k}")
        elif event == "lose":
            k = ri(1, min(v, 60))
            t = int(r() * 3)
            if t == 0:
                sentences.append(f"{name} gives {k} to {other}.")
            elif t == 1:
                sentences.append(f"{name} loses {k}.")
            else:
                sentences.append(f"{name} sells {k}.")
            line, v = _step(v, "-", k)
            skeleton.append(f"-{k}")
        elif event == "bags":
            k = ri(2, 9)
            per = ri(2, min(12, (_WORD_VALUE_MAX - v) // k))
            if r() < 0.5:
                sentences.append(f"{name} buys {k} bags of {per} {items}.")
            else:
                sentences.append(f"{name} buys {k} boxes with {per} {items} each.")
            line, p = _step(k, "*", per)
            steps.append(line)
            line, v = _step(v, "+", p)
            skeleton.append(f"+{k}x{per}")
        else:
            k = choice(divisors)
            sentences.append(f"{name} splits them into {k} equal piles and keeps one pile.")
            line, v = _step(v, "/", k)
            skeleton.append(f"/{k}")
        steps.append(line)
    sentences.append(f"How many {items} does {name} have now?")
    return _Problem("word", level, " ".join(sentences), steps, v, key="word:" + " ".join(skeleton))


GENERATORS = {"expr": _gen_expr, "linear": _gen_linear, "mod": _gen_mod, "word": _gen_word}

# ------------------------------------------------------------------------------------------------
# The step checker (oracle step verifier).

_MAX_STEP_CHARS = 200
_MAX_TRIES = 200  # draws of one cell before it counts as exhausted


class _StepError(Exception):
    pass


def _tokenize(s: str) -> list[str]:
    tokens = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c.isspace():
            i += 1
        elif "0" <= c <= "9":
            j = i
            while j < n and "0" <= s[j] <= "9":
                j += 1
            tokens.append(s[i:j])
            i = j
        elif c in "+-*/()":
            tokens.append(c)
            i += 1
        elif s.startswith("mod", i):
            tokens.append("mod")
            i += 3
        else:
            raise _StepError(f"unexpected {c!r}")
    return tokens


class _Parser:
    """Recursive descent over integer expressions: + - (left assoc.) below * / mod, unary +/-.

    `/` must divide exactly and `mod` needs a positive modulus (mathematical remainder in [0, m)).
    """

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise _StepError("unexpected end")
        self.i += 1
        return tok

    def parse(self) -> int:
        v = self.expr()
        if self.peek() is not None:
            raise _StepError("trailing tokens")
        return v

    def expr(self) -> int:
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            w = self.term()
            v = v + w if op == "+" else v - w
        return v

    def term(self) -> int:
        v = self.unary()
        while self.peek() in ("*", "/", "mod"):
            op = self.take()
            w = self.unary()
            if op == "*":
                v = v * w
            elif op == "/":
                if w == 0 or v % w:
                    raise _StepError("inexact division")
                v = v // w
            else:
                if w <= 0:
                    raise _StepError("modulus must be positive")
                v = v % w
        return v

    def unary(self) -> int:
        tok = self.peek()
        if tok == "-":
            self.take()
            return -self.unary()
        if tok == "+":
            self.take()
            return self.unary()
        return self.atom()

    def atom(self) -> int:
        tok = self.take()
        if tok == "(":
            v = self.expr()
            if self.take() != ")":
                raise _StepError("unbalanced parentheses")
            return v
        if tok.isdigit():
            return int(tok)
        raise _StepError(f"unexpected {tok!r}")


def check_step(line: str) -> bool:
    """True iff `line` is `E1=E2[=E3...]` with integer expressions that all evaluate to the same value."""
    if not isinstance(line, str) or len(line) > _MAX_STEP_CHARS or "=" not in line:
        return False
    try:
        values = [_Parser(_tokenize(side)).parse() for side in line.split("=")]
    except (_StepError, RecursionError):
        return False
    return all(v == values[0] for v in values[1:])


def step_error(line: str) -> int | None:
    """For a step line `E1=E2`: the value of E2 minus the value of E1 (0 for a true step, +-10 for a slipped
    carry in the tens); None for a line that is not one equation of two integer expressions."""
    if not isinstance(line, str) or len(line) > _MAX_STEP_CHARS or line.count("=") != 1:
        return None
    try:
        left, right = (_Parser(_tokenize(side)).parse() for side in line.split("="))
    except (_StepError, RecursionError):
        return None
    return right - left


def step_lines(completion: str) -> list[str]:
    """The step lines of a completion: non-blank lines that do not contain a `\\boxed` answer."""
    if not isinstance(completion, str):
        return []
    return [ln.strip() for ln in completion.split("\n") if ln.strip() and "\\boxed" not in ln]


def step_labels(completion: str) -> list[bool]:
    """Per step line, whether it is a true arithmetic statement (see `check_step`)."""
    return [check_step(line) for line in step_lines(completion)]


def check_steps(completion: str) -> tuple[int, int]:
    """(number of step lines, number of arithmetically true ones) of a worked solution.

    A local truth oracle: `2+2=4` counts as correct even where it is not the step the problem needs, and a
    line that is not an equation counts as a wrong step. Never raises.
    """
    labels = step_labels(completion)
    return len(labels), sum(labels)


# ------------------------------------------------------------------------------------------------
# Corrupting worked solutions: wrong solutions of the reference's shape (hard negatives for a verifier).

CORRUPTIONS = ("answer", "step", "propagate", "carry")
_STEP_LINE = re.compile(r"^(-?\d+)(\+|-|\*|/| mod )(\(-\d+\)|\d+)=(-?\d+)$")


def _change_one_digit(value: int, r: random.Random) -> int:
    """Same number of digits and sign, one digit different (no new leading zero)."""
    s = str(abs(value))
    i = r.randrange(len(s))
    allowed = [d for d in "0123456789" if d != s[i] and not (d == "0" and i == 0 and len(s) > 1)]
    s = s[:i] + r.choice(allowed) + s[i + 1 :]
    return -int(s) if value < 0 else int(s)


def _slip_a_carry(value: int, r: random.Random) -> int:
    """`value` off by one in a digit above the units (+-10, +-100, ...: a carry or borrow dropped or added);
    +-1 for a one-digit value, which has no carry to slip."""
    digits = len(str(abs(value)))
    place = 10 ** r.randrange(1, digits) if digits > 1 else 1
    return value + r.choice((-1, 1)) * place


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "/":
        return a // b if b and a % b == 0 else None
    if op == " mod ":
        return a % b if b > 0 else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def corrupt_solution(reference: str, r: random.Random, kind: str = "propagate") -> str:
    """A wrong worked solution of the same shape as `reference` (a solution in this module's format):

    answer:    one digit of the boxed answer changed; every step still true;
    step:      one digit of one step's result changed, later lines untouched (they disagree with it);
    propagate: as `step`, with later steps recomputed from the wrong value and the answer following it,
               the way a policy's slip carries through a solution.
    carry:     as `propagate`, the slipped result off by one in a digit above the units (47+38=75): the
               slip behind most of the wrong answers a learned verifier ranks first on this task
               (docs/lab_notes/rl_diagnosis.md).
    `answer`, `carry` and (almost always) `propagate` grade 0; `step` keeps the right answer with a wrong
    process.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption kind must be one of {CORRUPTIONS}, got {kind!r}")
    *steps, boxed = reference.split("\n")
    answer = int(boxed[len("\\boxed{") : -1])
    if kind == "answer" or not steps:
        return "\n".join(steps + [f"\\boxed{{{_change_one_digit(answer, r)}}}"])
    i = r.randrange(len(steps))
    out, changed = list(steps), {}
    for j in range(i, len(steps)):
        a, op, b, c = _STEP_LINE.match(steps[j]).groups()
        a, b, c = int(a), int(b.strip("()")), int(c)
        if j == i:
            new = _slip_a_carry(c, r) if kind == "carry" else _change_one_digit(c, r)
        else:
            if kind == "step":
                break
            a, b = changed.get(a, a), changed.get(b, b)
            new = _apply(a, op, b)
            if new is None:  # an inexact division downstream: fall back to the unpropagated error
                return corrupt_solution(reference, r, "step")
        out[j] = f"{a}{op}{f'({b})' if b < 0 else b}={new}"
        if new != c:
            changed[c] = new
    if kind in ("propagate", "carry"):
        answer = changed.get(answer, answer)
    return "\n".join(out + [f"\\boxed{{{answer}}}"])


# ------------------------------------------------------------------------------------------------
# The task.


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"bonjax-arith").digest()


def split_of(key: str) -> str:
    """The split a problem with canonical key `key` belongs to, from its hash alone."""
    return _split_of_digest(_digest(key))


def _split_of_digest(digest: bytes) -> str:
    u = int.from_bytes(digest, "big") / 2.0**64
    acc = 0.0
    for split, frac in SPLIT_FRACTIONS.items():
        acc += frac
        if u < acc:
            return split
    return "test"


def grade_answer(completion: str, answer: str) -> Grade:
    """Reward 1 iff the last `\\boxed{}` of `completion` holds the integer `answer`. Never raises."""
    boxed = last_boxed(completion)
    if boxed is None:
        return Grade(0.0, None, "no_boxed_answer")
    got = normalize_integer(boxed)
    if got is None:
        return Grade(0.0, None, "not_an_integer")
    if got != normalize_integer(answer):
        return Grade(0.0, got, "wrong_answer")
    return Grade(1.0, got, None)


class ArithTask(Task):
    """Generated integer problems with worked solutions (see the module docstring).

    Examples: `id` (stable across seeds: a hash of the canonical key), `prompt`, `reference` (the worked
    solution), `answer` (the integer as a string), `meta` = {level, kind, num_steps, key}; `key` is the
    canonical problem key that decides the split and deduplication.
    """

    name = "arith"

    def __init__(
        self,
        seed: int = 0,
        num_train: int = 20_000,
        num_validation: int = 500,
        num_test: int = 1_000,
        levels: Sequence[int] = LEVELS,
        kinds: Sequence[str] = DEFAULT_KINDS,
    ):
        levels = tuple(int(lv) for lv in levels)
        kinds = tuple(kinds)
        if not levels or any(lv not in LEVELS for lv in levels):
            raise ConfigError("levels", f"levels must be a non-empty subset of {LEVELS}, got {levels}")
        if not kinds or any(k not in GENERATORS for k in kinds):
            raise ConfigError("kinds", f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        for key, n in (("num_train", num_train), ("num_validation", num_validation), ("num_test", num_test)):
            if not isinstance(n, int) or n < 0:
                raise ConfigError(key, f"must be a non-negative integer, got {n!r}")
        self.seed = seed
        self.levels = levels
        self.kinds = kinds
        self.sizes = {"train": num_train, "validation": num_validation, "test": num_test}
        self._examples: dict[str, tuple[Example, ...]] | None = None

    def _generate(self) -> dict[str, tuple[Example, ...]]:
        r = random.Random(self.seed).random
        cells = [(kind, level) for level in self.levels for kind in self.kinds]
        need = dict(self.sizes)
        out: dict[str, list[Example]] = {s: [] for s in self.splits}
        remaining = sum(need.values())
        seen: set[str] = set()
        slot = 0
        while remaining:
            # Each slot of the stream is a new problem of the next cell, so every cell contributes equally
            # to the stream even where one cell's problem space is small enough to produce duplicates.
            kind, level = cells[slot % len(cells)]
            slot += 1
            gen = GENERATORS[kind]
            for _ in range(_MAX_TRIES):
                prob = gen(r, level)
                if prob.key not in seen:
                    break
            else:
                raise ConfigError(
                    "num_train",
                    f"arith: no new {kind} problem at level {level} in {_MAX_TRIES} draws after "
                    f"{len(seen)} distinct problems; ask for fewer problems or more levels/kinds",
                )
            key = prob.key
            seen.add(key)
            digest = _digest(key)
            split = _split_of_digest(digest)
            bucket = out[split]
            if len(bucket) >= need[split]:
                continue
            remaining -= 1
            answer = str(prob.answer)
            bucket.append(
                Example(
                    id=f"arith-{kind}-{level}-{digest.hex()}",
                    prompt=PROMPT_PREFIX + prob.statement + PROMPT_SUFFIX,
                    reference="\n".join(prob.steps) + "\n\\boxed{" + answer + "}",
                    answer=answer,
                    meta={"level": level, "kind": kind, "num_steps": len(prob.steps), "key": key},
                )
            )
        return {s: tuple(v) for s, v in out.items()}

    def examples(self, split: str) -> tuple[Example, ...]:
        if split not in self.splits:
            raise ValueError(f"arith: unknown split {split!r}; expected one of {self.splits}")
        if self._examples is None:
            self._examples = self._generate()
        return self._examples[split]

    def corpus(self, split: str) -> Iterator[str]:
        """Prompt + worked solution of every example of `split` (tokenizer and SFT text)."""
        for ex in self.examples(split):
            yield ex.prompt + ex.reference

    def grade(self, example: Example, completion: str) -> Grade:
        return grade_answer(completion, example.answer)

    CORRUPTION_KINDS = CORRUPTIONS

    @staticmethod
    def corrupt(reference: str, r: random.Random, kinds: Sequence[str] = ("answer", "propagate")) -> str:
        """A solution of the reference's shape with a wrong final answer: a corruption (`corrupt_solution`)
        of one of `kinds`, equally likely; a slip that does not reach the answer falls back to an `answer`
        corruption."""
        kind = kinds[r.randrange(len(kinds))]
        bad = corrupt_solution(reference, r, kind)
        if last_boxed(bad) == last_boxed(reference):
            bad = corrupt_solution(reference, r, "answer")
        return bad

    @staticmethod
    def line_labels(completion: str) -> list[bool | None]:
        """Per line of `completion.split("\\n")`: `check_step` of a step line (see `step_lines`), None for
        a blank line or one holding the `\\boxed` answer."""
        if not isinstance(completion, str):
            return [None]
        return [check_step(ln.strip()) if ln.strip() and "\\boxed" not in ln else None
                for ln in completion.split("\n")]

    @staticmethod
    def check_steps(completion: str) -> tuple[int, int]:
        """See the module-level `check_steps`."""
        return check_steps(completion)
