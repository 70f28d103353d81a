"""experiments/across_seeds.py: per-seed and pooled tuned - base from the runs' per_prompt.json."""

import json

import numpy as np
import pytest

from experiments import across_seeds


def _run(tmp_path, name, base, tuned):
    d = tmp_path / name
    d.mkdir(parents=True)
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


def test_versus_pairs_two_tuned_policies_on_the_same_base_samples(tmp_path, capsys):
    base = [0.0, 1.0, 0.5, 0.5]
    a = [_run(tmp_path, "a/seed0", base, [1.0, 1.0, 0.5, 1.0]), _run(tmp_path, "a/seed1", base, [0.0, 1.0, 1.0, 1.0])]
    b = [_run(tmp_path, "b/seed0", base, [0.0, 1.0, 0.5, 1.0]), _run(tmp_path, "b/seed1", base, [0.0, 0.0, 1.0, 1.0])]
    d = across_seeds.tuned_differences(a, b, "bon_at_32")
    np.testing.assert_allclose(d, [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    across_seeds.main([*a, "--versus", *b, "--metrics=bon_at_32"])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| tuned - tuned of --versus |") and out[-1].startswith("| bon_at_32 | +0.250 [")
    other = _run(tmp_path, "c/seed0", [1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 1.0])  # another base policy
    with pytest.raises(SystemExit, match="different base samples"):
        across_seeds.tuned_differences([a[0]], [other], "bon_at_32")
    with pytest.raises(SystemExit, match="one --versus run per run"):
        across_seeds.tuned_differences(a, b[:1], "bon_at_32")
