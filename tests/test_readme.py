"""The README's Python example runs as written, so it cannot fall behind the API it shows."""

from __future__ import annotations

import math
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- readme-example -->"


def example_code(text: str) -> str:
    """The ```python block right after the marker comment; a clear error if either is missing."""
    if MARKER not in text:
        raise ValueError(f"README.md has no {MARKER!r} line before its Python example")
    after = text.split(MARKER, 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"README.md: no ```python block directly after {MARKER!r}")
    return match.group(1)


def test_example_is_found_or_refused():
    assert "import" in example_code(f"x\n{MARKER}\n```python\nimport jax\n```\n")
    with pytest.raises(ValueError, match="no '<!-- readme-example -->'"):
        example_code("```python\nimport jax\n```")
    with pytest.raises(ValueError, match="no ```python block"):
        example_code(f"{MARKER}\ntext\n```python\nimport jax\n```")


def test_readme_example_runs_and_learns(capsys):
    code = example_code(README.read_text())
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README}:readme-example", "exec"), namespace)
    # It says it trains the toy policy towards the correct answers: starting at P(correct) = 1/5, the BoN@4
    # objective must have moved it well above that, and its metrics must be finite.
    assert namespace["p_correct"] > 0.5
    assert math.isfinite(float(namespace["metrics"]["bon_reward"]))
    assert "BoN@4 reward" in capsys.readouterr().out
