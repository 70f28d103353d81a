"""experiments.verifier_study: its runs train no policy and read validation prompts only; its differences
are paired against the default verifier on the same samples; its choice follows its rule."""

import json

import numpy as np
import pytest

from experiments import verifier_study as study
from experiments.reproduce.stats import Estimate


def test_every_candidate_trains_a_verifier_only_and_evaluates_on_validation():
    for name, overrides in study.CANDIDATES.items():
        c = study.study_config(name, 2)
        assert c.eval.split == "validation" and c.seed == 2 and c.workdir == study.run_dir(name, 2)
        assert "finetune" not in c.stages and "verifier" in c.stages and "eval" in c.stages
        for key, value in overrides.items():
            section, field = key.split(".")
            assert c[section][field] == value
    assert study.cache_root(1) == "runs/arith_bo32_seed1/stages"


def _est(mean, half):
    return Estimate(mean, mean - half, mean + half, seeds=2, prompts=128, dof=100.0)


def test_choice_needs_an_interval_above_zero():
    table = {"default": {"bon_at_32": _est(0.0, 0.0)}, "a": {"bon_at_32": _est(0.05, 0.06)},
             "b": {"bon_at_32": _est(0.03, 0.02)}}  # fmt: skip
    assert study.choose(table) == "b"  # a's mean is higher, but its interval reaches below 0
    table["b"]["bon_at_32"] = _est(0.03, 0.04)
    assert study.choose(table) == "default"


def test_pooled_pairs_each_candidate_with_the_default_on_its_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "run_dir", lambda name, seed: str(tmp_path / f"{name}_s{seed}"))
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        default = {f"bon_at_{k}": rng.uniform(size=40).tolist() for k in study.KS}
        shift = 0.1 if seed == 0 else -0.3  # on every prompt of that seed
        samples = {"mean_reward": rng.uniform(size=40).tolist()}  # the base samples' rewards: shared
        for name, base in (
            ("default", {**default, **samples}),
            ("more", {**{m: (np.asarray(v) + shift).tolist() for m, v in default.items()}, **samples}),
        ):
            d = tmp_path / f"{name}_s{seed}"
            d.mkdir()
            (d / "per_prompt.json").write_text(json.dumps({"base": base}))
            (d / "summary.json").write_text("{}")
    table = study.pooled(["default", "more", "carry_more"], [0, 1])
    assert list(table) == ["default", "more"]  # carry_more has no finished runs
    assert table["more"]["bon_at_32"].mean == pytest.approx(-0.1)  # both seeds, each against its own default
    assert table["default"]["bon_at_32"].mean == 0.0


def test_runs_on_other_base_samples_are_refused_not_paired(tmp_path, monkeypatch):
    """A host whose CPU rounds differently trains another base policy: its runs do not pair with the
    committed ones, and pooling them would compare scores of different samples."""
    monkeypatch.setattr(study, "run_dir", lambda name, seed: str(tmp_path / f"{name}_s{seed}"))
    for name, rewards in (("default", [0.5, 0.25]), ("more", [0.5, 0.5])):
        d = tmp_path / f"{name}_s0"
        d.mkdir()
        base = {"mean_reward": rewards, **{f"bon_at_{k}": [1.0, 0.0] for k in study.KS}}
        (d / "per_prompt.json").write_text(json.dumps({"base": base}))
        (d / "summary.json").write_text("{}")
    with pytest.raises(SystemExit, match="scored different base samples"):
        study.pooled(["default", "more"], [0])


def test_results_flag_moves_every_run_of_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "RESULTS", study.RESULTS)  # main sets it; restored after the test
    study.main(["--results", str(tmp_path / "elsewhere"), "--only=larger", "--seeds=0", "--list"])
    assert "to do  larger seed 0" in capsys.readouterr().out
    assert study.run_dir("larger", 0) == str(tmp_path / "elsewhere" / "larger_s0")
    assert study.study_config("larger", 0).workdir == str(tmp_path / "elsewhere" / "larger_s0")


def test_a_finished_run_made_with_other_settings_is_refused_before_compute(tmp_path, monkeypatch, capsys):
    from bon_jax.errors import ConfigError
    from experiments import study_runs

    monkeypatch.setattr(study, "run_dir", lambda name, seed: str(tmp_path / f"{name}_s{seed}"))
    stored = study.study_config("more", 0).to_dict()
    d = tmp_path / "more_s0"
    d.mkdir()
    (d / "per_prompt.json").write_text("{}")
    (d / "summary.json").write_text(json.dumps({"config": stored}, default=str))
    args = (["more"], [0], study.CANDIDATES, study.study_config, study.run_dir, "verifier study", True)
    study_runs.run_unfinished(*args)
    assert "done   more seed 0" in capsys.readouterr().out
    stored["verifier"]["steps"] = 599  # made under another setting than the candidate's today
    (d / "summary.json").write_text(json.dumps({"config": stored}, default=str))
    with pytest.raises(ConfigError, match=r"verifier\.steps was 599, would now be 600"):
        study_runs.run_unfinished(*args)


@pytest.mark.parametrize("study", ["verifier_study", "validation_study"])
def test_every_committed_run_of_both_studies_matches_its_config_now(study):
    """A changed default must not strand the studies' committed runs (results/<study>/): each finished run's
    stored config equals what its study would give it now, so the study command runs instead of refusing
    (the default's switch to 16 x 120 did strand the verifier study's runs until they pinned rl.*)."""
    import importlib

    from experiments.reproduce.runs import refuse_drifted, run_finished

    mod = importlib.import_module(f"experiments.{study}")
    runs = [
        (mod.run_dir(n, s), mod.study_config(n, s))
        for n in mod.CANDIDATES
        for s in range(3)
        if run_finished(mod.run_dir(n, s))
    ]
    assert len(runs) >= 10
    refuse_drifted(runs, "")


def test_fall_from_peak_is_the_drop_from_the_best_k_to_k_32(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "run_dir", lambda name, seed: str(tmp_path / f"{name}_s{seed}"))
    curves = {"rising": [0.1, 0.2, 0.3, 0.3, 0.4, 0.5], "peaks_at_4": [0.1, 0.2, 0.6, 0.5, 0.45, 0.4]}
    for name, curve in curves.items():
        d = tmp_path / f"{name}_s0"
        d.mkdir()
        base = {f"bon_at_{k}": [v, v] for k, v in zip((1, 2, 4, 8, 16, 32), curve)}
        (d / "per_prompt.json").write_text(json.dumps({"base": base}))
    assert study.fall_from_peak("rising", 0) == 0.0
    assert study.fall_from_peak("peaks_at_4", 0) == pytest.approx(0.2)
