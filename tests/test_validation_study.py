"""experiments.validation_study: its runs read validation prompts only, and its choice follows its rule."""

import json

import numpy as np
import pytest

from experiments import validation_study as study
from experiments.reproduce.stats import Estimate


def test_every_candidate_is_evaluated_on_validation_prompts_at_its_seed():
    for name, overrides in study.CANDIDATES.items():
        c = study.study_config(name, 3)
        assert c.eval.split == "validation" and c.seed == 3 and c.workdir == study.run_dir(name, 3)
        for key, value in overrides.items():
            section, field = key.split(".")
            assert c[section][field] == value
    assert study.cache_root(0) == "runs/arith_bo32/stages"
    assert study.cache_root(2) == "runs/arith_bo32_seed2/stages"  # what `make train` at seed 2 writes


def _est(mean, half):
    return Estimate(mean, mean - half, mean + half, seeds=2, prompts=128, dof=100.0)


def test_choice_takes_the_best_bon32_gain_or_a_close_one_with_less_kl():
    table = {
        "a": {"bon_at_32": _est(0.05, 0.02), "kl": _est(0.5, 0)},
        "b": {"bon_at_32": _est(0.02, 0.02), "kl": _est(0.1, 0)},  # overlaps a's interval, less KL
        "c": {"bon_at_32": _est(-0.03, 0.005), "kl": _est(0.01, 0)},  # clearly worse, least KL
    }
    assert study.choose(table) == "b"
    table["b"]["bon_at_32"] = _est(0.01, 0.01)  # no longer reaches a's lower end (0.03)
    assert study.choose(table) == "a"
    assert study.choose({}) is None


def test_pooled_reads_the_finished_runs_paired_over_seeds_and_prompts(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "run_dir", lambda name, seed, split="validation": str(tmp_path / f"{name}_s{seed}"))
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        d = tmp_path / f"V3_s{seed}"
        d.mkdir()
        base = {m: rng.uniform(size=40).tolist() for m in study.METRICS}
        shift = 0.1 if seed == 0 else 0.3  # on every prompt of that seed
        tuned = {m: (np.asarray(v) + shift).tolist() for m, v in base.items()}
        (d / "per_prompt.json").write_text(json.dumps({"base": base, "tuned": tuned}))
        (d / "summary.json").write_text("{}")
    table = study.pooled(["V3", "V2"], [0, 1])
    assert list(table) == ["V3"]  # V2 has no finished runs
    assert table["V3"]["bon_at_32"].mean == pytest.approx(0.2)  # both seeds, paired within each
    assert table["V3"]["bon_at_32"].seeds == 2 and table["V3"]["bon_at_32"].prompts == 40


def test_results_flag_moves_every_run_of_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "RESULTS", study.RESULTS)  # main sets it; restored after the test
    study.main(["--results", str(tmp_path / "elsewhere"), "--only=VL16", "--seeds=0", "--list"])
    assert "to do  VL16 seed 0" in capsys.readouterr().out
    assert study.study_config("VL16", 0).workdir == str(tmp_path / "elsewhere" / "VL16_s0")



def test_test_flag_reads_test_prompts_for_the_rules_choice_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "RESULTS", study.RESULTS)  # main sets it; restored after the test
    results = tmp_path / "r"
    rng = np.random.default_rng(1)
    for name, shift in (("P16", 0.0), ("VL16", 0.2)):  # VL16's BoN@32 gain is far ahead: the rule's choice
        d = results / f"{name}_s0"
        d.mkdir(parents=True)
        base = {m: rng.uniform(size=40).tolist() for m in study.METRICS}
        tuned = {m: (np.asarray(v) + shift).tolist() for m, v in base.items()}
        (d / "per_prompt.json").write_text(json.dumps({"base": base, "tuned": tuned}))
        (d / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"RULE's choice over seeds \[0\] only \(VL16.*named \['P16'\]"):
        study.main(["--results", str(results), "--only=P16", "--seeds=0", "--test", "--list"])
    study.main(["--results", str(results), "--only=VL16", "--seeds=0", "--test", "--list"])
    assert "to do  VL16 seed 0" in capsys.readouterr().out
    c = study.study_config("VL16", 0, "test")
    assert c.eval.split == "test" and c.workdir == str(results / "test" / "VL16_s0")
    assert study.study_config("VL16", 0).eval.split == "validation"  # the study itself never reads test
