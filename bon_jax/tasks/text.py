"""Answer extraction shared by the tasks: the last `\\boxed{...}` of a text, and integer normalisation.

`last_boxed(text)` follows the convention of Hendrycks et al.'s MATH grader (`last_boxed_only_string`):
it looks at the *last* occurrence of `\\boxed` (or `\\fbox`) only, and returns its content with braces
matched, or None if that last box is malformed (unclosed, e.g. a completion cut off by the length limit).
It does not fall back to an earlier box: a sample that restarts its answer and runs out of tokens did not
give one. Escaped braces (`\\{`, `\\}`) inside the box are content, not delimiters, so
`\\boxed{\\{1,2\\}}` yields `\\{1,2\\}`. Both functions are total: they never raise on any string.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_INT_RE = re.compile(r"[+-]?[0-9]+")
# Characters that denote a minus sign in text a model or a dataset may produce.
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def braced_group(text: str, start: int) -> tuple[str, int] | None:
    """`text[start]` is '{': returns (content, index after the matching '}'), or None if unclosed."""
    depth = 0
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":  # an escaped character (\{ \} \\ or a command) never opens or closes a group
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def last_boxed_span(text: str) -> tuple[int, int, str] | None:
    """The last `\\boxed{...}` / `\\fbox{...}` / `\\boxed x` of `text` as (start, end, content), or None.

    `\\boxed 5` (a space, then a token up to whitespace or `$`) is the short form MATH solutions sometimes
    use. None if there is no box command, or if the last one has no well-formed argument.
    """
    if not isinstance(text, str):
        return None
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    i = start + len(cmd)
    if i < len(text) and text[i] == "{":
        got = braced_group(text, i)
        if got is None:
            return None
        content, end = got
        return start, end, content
    if cmd == "\\boxed" and i < len(text) and text[i] == " ":
        j = i
        while j < len(text) and text[j] == " ":
            j += 1
        k = j
        while k < len(text) and not text[k].isspace() and text[k] != "$":
            k += 1
        if k == j:
            return None
        return start, k, text[j:k]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` of `text` (nested braces matched), or None."""
    span = last_boxed_span(text)
    return None if span is None else span[2]


def normalize_integer(s: str | None) -> str | None:
    """Canonical decimal form of an integer written in `s`, or None if `s` is not exactly one integer.

    Removes all whitespace (`- 5`, `1 2` as a split-digit tokenizer may detokenise them), reads Unicode
    minus signs as '-', drops a leading '+' and leading zeros, and maps '-0' to '0'. Only ASCII digits
    count (no `1_000`, no `1,000`, no `5.0`): the tasks that use it have integer answers written plainly.
    """
    if not isinstance(s, str):
        return None
    t = "".join(s.split()).translate(_MINUS_SIGNS)
    if len(t) > 4096 or not _INT_RE.fullmatch(t):
        return None
    negative = t[0] == "-"
    digits = t.lstrip("+-").lstrip("0") or "0"
    if digits == "0":
        return "0"
    return "-" + digits if negative else digits
