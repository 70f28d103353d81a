"""experiments/across_seeds.py: per-seed and pooled tuned - base from the runs' per_prompt.json."""

import json

import numpy as np
import pytest

from experiments import across_seeds


def _run(tmp_path, name, base, tuned):
    d = tmp_path / name
    d.mkdir()
    (d / "per_prompt.json").write_text(json.dumps({"base": {"bon_at_32": base}, "tuned": {"bon_at_32": tuned}}))
    return str(d)


def test_pooled_difference_is_the_mean_over_seeds_and_prompts(tmp_path, capsys):
    a = _run(tmp_path, "seed0", [0.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 1.0])  # +0.375
    b = _run(tmp_path, "seed1", [1.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.5, 0.5])  # -0.125
    d = across_seeds.paired_differences([a, b], "bon_at_32")
    np.testing.assert_allclose(d, [[1.0, 0.0, 0.0, 0.5], [-1.0, 0.0, 0.5, 0.0]])
    across_seeds.main([a, b, "--metrics=bon_at_32"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| bon_at_32 | +0.375 [") and "| +0.125 [" in row and "-0.125 [" in row


def test_runs_on_different_prompts_are_refused(tmp_path):
    a = _run(tmp_path, "seed0", [0.0, 1.0], [1.0, 1.0])
    b = _run(tmp_path, "seed1", [0.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(SystemExit, match="different numbers of prompts"):
        across_seeds.paired_differences([a, b], "bon_at_32")
