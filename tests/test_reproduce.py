"""`make reproduce` (issue 15, item 3): the CI over seeds x prompts, the verdict rule, the run list, the
runner's skip / resume / timing, the analysis and the report on synthetic runs, and the tiny profile end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from scipy import stats as sps

from bon_jax.errors import ConfigError
from experiments.reproduce import analysis, figures, runner, stats, writer
from experiments.reproduce.claims import CLAIMS
from experiments.reproduce.runs import method_run, runs_for
from experiments.reproduce.settings import FULL, TINY


def _reference_ci(d):
    """The crossed-design interval of stats.py's docstring, written out with loops in float64."""
    S, P = len(d), len(d[0])
    grand = sum(sum(row) for row in d) / (S * P)
    r = [sum(row) / P for row in d]
    c = [sum(d[s][p] for s in range(S)) / S for p in range(P)]
    var_r = sum((x - sum(r) / S) ** 2 for x in r) / (S - 1)
    var_c = sum((x - sum(c) / P) ** 2 for x in c) / (P - 1)
    v = var_r / S + var_c / P
    nu = v**2 / ((var_r / S) ** 2 / (S - 1) + (var_c / P) ** 2 / (P - 1))
    half = sps.t.ppf(0.975, nu) * v**0.5
    return grand, grand - half, grand + half


def test_crossed_ci_matches_a_float64_reference():
    rng = np.random.default_rng(1)
    d = 0.1 + rng.normal(size=(3, 1)) * 0.2 + rng.normal(size=(3, 17))
    est = stats.crossed_ci(d)
    np.testing.assert_allclose((est.mean, est.low, est.high), _reference_ci(d.tolist()), rtol=1e-12)
    assert (est.seeds, est.prompts) == (3, 17)
    one = stats.crossed_ci(d[:1])  # one seed: the paired t interval over prompts
    half = sps.t.ppf(0.975, 16) * d[0].std(ddof=1) / np.sqrt(17)
    np.testing.assert_allclose((one.low, one.high), (d[0].mean() - half, d[0].mean() + half), rtol=1e-12)
    with pytest.raises(ValueError, match="non-finite"):
        stats.crossed_ci(np.array([[0.0, np.nan]]))


@pytest.mark.parametrize("seed_sd,prompt_sd,noise_sd", [(1.0, 0.0, 0.5), (0.0, 1.0, 1.0), (0.3, 0.3, 1.0)])
def test_crossed_ci_covers_the_mean_over_new_seeds_and_prompts(seed_sd, prompt_sd, noise_sd):
    """d = mu + seed effect + prompt effect + noise, 3 seeds x 64 prompts: the 95% interval holds mu about
    95% of the time, whichever variance dominates (an interval over prompts only covers ~40% in the first)."""
    rng = np.random.default_rng(0)
    hits, sims = 0, 1500
    for _ in range(sims):
        d = (
            0.5
            + seed_sd * rng.normal(size=(3, 1))
            + prompt_sd * rng.normal(size=(1, 64))
            + noise_sd * rng.normal(size=(3, 64))
        )
        e = stats.crossed_ci(d)
        hits += e.low <= 0.5 <= e.high
    assert 0.9 <= hits / sims <= 0.995, hits / sims


def test_verdict_rule():
    E = lambda lo, hi: stats.Estimate((lo + hi) / 2, lo, hi, 3, 64, 10.0)  # noqa: E731
    R, N, I = stats.REPRODUCED, stats.NOT_REPRODUCED, stats.INCONCLUSIVE
    assert [stats.verdict(E(*ci), ">") for ci in [(0.01, 0.2), (-0.2, -0.01), (-0.1, 0.1), (0.0, 0.1)]] == [
        R,
        N,
        I,
        I,
    ]
    assert [stats.verdict(E(*ci), "<") for ci in [(0.01, 0.2), (-0.2, -0.01), (-0.1, 0.1)]] == [N, R, I]
    eq = [
        stats.verdict(E(*ci), "=", margin=0.05)
        for ci in [(-0.04, 0.04), (0.06, 0.1), (-0.2, -0.06), (0.0, 0.1)]
    ]
    assert eq == [R, N, N, I]
    assert stats.claim_verdict([R, R]) == R
    assert stats.claim_verdict([R, I]) == I
    assert stats.claim_verdict([R, None]) == I  # a comparison without data
    assert stats.claim_verdict([I, N, R]) == N
    assert stats.claim_verdict([]) == I
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(E(0, 1), "!=")


def test_run_list_is_deduplicated_and_named_by_its_settings():
    runs = runs_for(FULL)
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids))
    arith = [r for r in runs if r.family == "arith"]
    assert len(arith) == len(FULL.families["arith"].methods) * len(FULL.seeds)  # standard_rl once per seed
    assert {r.seed for r in runs} == {0, 1, 2}
    assert {r.objective() for r in arith} >= {
        "bon_rl_v",
        "grpo",
        "bon_rl_s",
        "bon_rlbp",
        "bon_rlb",
        "bon_rlb_printed",
        "pkpo",
        "sft",
        "bon_sft",
    }
    one = runs_for(FULL, ["claim1", "claim2"])
    assert sorted({r.label for r in one}) == ["bon_rl_s", "bon_rl_v", "grpo", "standard_rl"]
    changed = dataclasses.replace(
        FULL,
        families={
            **FULL.families,
            "arith": dataclasses.replace(
                FULL.families["arith"],
                methods={
                    **FULL.families["arith"].methods,
                    "grpo": {"rl.objective": "grpo", "rl.n": 1, "rl.lr": 3e-4},
                },
            ),
        },
    )
    assert method_run(changed, "arith", "grpo", 0).run_id != method_run(FULL, "arith", "grpo", 0).run_id
    with pytest.raises(KeyError, match="unknown claims"):
        runs_for(FULL, ["claim10"])


def test_every_full_run_config_validates(tmp_path):
    from bon_jax.config import validate

    for run in runs_for(FULL):
        c = runner.run_config(run, str(tmp_path))
        validate(c)
        assert c.seed == run.seed and c.eval.split == "test"


def _fake_per_prompt(run, rng, prompts=12):
    """Synthetic evaluations: every tuned arith policy beats the base by 0.02 + N' / 50, sentiment
    points move along a reward-vs-KL line."""
    o = dict(run.overrides)
    ks = (1, 2, 4)
    base = {
        "mean_reward": rng.uniform(0, 1, prompts).tolist(),
        "kl": [0.0] * prompts,
        "neg_logp": rng.uniform(5, 6, prompts).tolist(),
        "distinct_answers": rng.integers(1, 4, prompts).tolist(),
    }
    for k in ks:
        base[f"bon_at_{k}"] = (0.2 + 0.05 * k + rng.normal(0, 0.02, prompts)).tolist()
        base[f"pass_at_{k}"] = (0.3 + 0.1 * k + rng.normal(0, 0.02, prompts)).tolist()
        base[f"bon_kl_at_{k}"] = (0.6 * np.log(k) + rng.normal(0, 0.01, prompts)).clip(0).tolist()
    lift = 0.02 + o.get("rl.n", 1) / 50
    tuned = {key: (np.asarray(v) + lift + rng.normal(0, 0.005, prompts)).tolist() for key, v in base.items()}
    tuned["kl"] = (lift * 10 + rng.uniform(0, 0.1, prompts)).tolist()
    return {"base": base, "tuned": tuned}


def _write_fake_runs(profile, root, rng):
    for run in runs_for(profile):
        d = run.workdir(root)
        os.makedirs(d)
        with open(os.path.join(d, "per_prompt.json"), "w") as f:
            json.dump(_fake_per_prompt(run, rng), f)
        with open(os.path.join(d, "summary.json"), "w") as f:
            json.dump({}, f)


def test_analysis_and_report_on_synthetic_runs(tmp_path):
    root = str(tmp_path / "runs")
    _write_fake_runs(TINY, root, np.random.default_rng(0))
    results = analysis.analyse(TINY, list(CLAIMS), root)
    by_id = {r.claim.id: r for r in results}
    assert list(by_id) == [f"claim{i}" for i in range(1, 10)]
    # claim 1: bon_rl_v (N' = 4) - base lifts BoN@4 by 0.1 with tiny noise: reproduced; bon_rl_v vs
    # standard_rl / grpo (N' = 1) by 0.06.
    c1 = by_id["claim1"]
    first = c1.rows[0]
    assert first.label == "BoN@4: bon_rl_v - base" and first.verdict == stats.REPRODUCED
    assert first.estimate.seeds == len(TINY.seeds) and abs(first.estimate.mean - 0.1) < 0.01
    assert c1.verdict == stats.REPRODUCED
    # claim 2: standard RL lifts pass@4 by 0.04 although the claim says it does not: not reproduced.
    assert by_id["claim2"].verdict == stats.NOT_REPRODUCED
    assert by_id["claim9"].rows and by_id["claim7"].extra["on_front"]
    runs_json = runner.log_path(root, "tiny")
    os.makedirs(os.path.dirname(runs_json), exist_ok=True)
    log = {
        method_run(TINY, "arith", "bon_rl_v", 0).run_id: {"wall_s": 7200.0, "status": "done"},
        "arith/old-123/seed0": {"wall_s": 60.0, "status": "done", "overrides": {"rl.lr": 0.1}},
    }
    # the verifier check: the base policies' BoN@k / pass@k, against the per-prompt data written above
    verifier = analysis.verifier_check(TINY, root)
    first_label = next(iter(TINY.families["arith"].methods))  # real runs of a seed share one base evaluation
    bases = [
        json.load(open(os.path.join(method_run(TINY, "arith", first_label, s).workdir(root), "per_prompt.json")))["base"]
        for s in TINY.seeds
    ]
    mean = lambda m: np.mean([b[m] for b in bases])  # noqa: E731
    assert verifier.seeds == list(TINY.seeds) and sorted(verifier.levels) == [1, 2, 4]
    np.testing.assert_allclose(verifier.levels[4]["pass@k"].mean, mean("pass_at_4"))
    np.testing.assert_allclose(verifier.ratio, mean("bon_at_4") / mean("pass_at_4"))
    assert [(a, b) for a, b, _ in verifier.steps] == [(1, 2), (2, 4)]
    np.testing.assert_allclose(verifier.steps[1][2].mean, mean("bon_at_4") - mean("bon_at_2"))
    fig_dir = str(tmp_path / "figures")
    for r in results:
        figures.plot_claim(r, os.path.join(fig_dir, f"reproduce_{r.claim.id}.png"))
    doc = writer.write(
        results,
        profile=TINY,
        log=log,
        root=root,
        doc_path=str(tmp_path / "reproduction.md"),
        figure_dir=fig_dir,
        command="make reproduce",
        verifier=verifier,
    )
    text = open(doc).read()
    for i in range(1, 10):
        assert f"## claim{i}" in text and f"figures/reproduce_claim{i}.png" in text
        assert os.path.getsize(os.path.join(fig_dir, f"reproduce_claim{i}.png")) > 5000
    # the current settings' runs (7200 s) apart from every run tried (+ 60 s of an old setting's run)
    assert "runs the current settings use: **2.00 h**" in text and "included: 2.02 h over 2 runs" in text
    assert "arith/old-123/seed0" in text and "lr=0.1" in text  # a run tried under old settings is listed
    assert "Verdict rule" in text
    assert "## The learned verifier" in text and f"= **{verifier.ratio:.2f}**" in text
    tries = text.split("## claim4")[1].split("## claim5")[0]
    assert "Validation tries (seed 0" in tries and "`arith/sft~try0-" in tries and "lr=0.003" in tries
    # README's claims table: one row per claim with its verdict, between the markers, the rest kept
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{writer.BEGIN}\nold table\n{writer.END}\n\n## after\n")
    writer.update_readme(str(readme), results, "docs/reproduction.md", "The claims:")
    new = readme.read_text()
    assert new.startswith("# top\n") and new.endswith(f"{writer.END}\n\n## after\n") and "old table" not in new
    rows = [line for line in new.splitlines() if line.startswith("| [claim")]
    assert len(rows) == 9 and all(f"**{r.verdict}**" in row for r, row in zip(results, rows))
    assert rows[0].startswith("| [claim1](docs/reproduction.md#claim1)") and "BoN@4: bon_rl_v - base 0.1" in rows[0]
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no <!-- claims-table:begin -->"):
        writer.update_readme(str(readme), results, "docs/reproduction.md", "The claims:")


def test_runner_skips_finished_runs_records_wall_time_and_keeps_interrupted_ones(tmp_path):
    root = str(tmp_path)
    profile = dataclasses.replace(TINY, seeds=(0,))
    runs = runs_for(profile, ["claim4"])
    calls = []

    def fake(config, cache_root, fail=None):
        calls.append(config.workdir)
        assert cache_root.endswith(os.path.join("tiny", "arith", "stages")) and config.seed == 0
        if fail:
            raise fail
        os.makedirs(config.workdir, exist_ok=True)
        for name in ("summary.json", "per_prompt.json"):
            open(os.path.join(config.workdir, name), "w").write("{}")

    with pytest.raises(KeyboardInterrupt):
        runner.run_all(runs, root, run_fn=lambda c, r: fake(c, r, fail=KeyboardInterrupt()))
    log = runner.read_log(root, "tiny")
    assert [e["status"] for e in log.values()] == ["interrupted"]
    runner.run_all(runs, root, run_fn=fake)
    assert len(calls) == 1 + len(runs)
    log = runner.read_log(root, "tiny")
    assert all(e["status"] == "done" for e in log.values()) and len(log) == len(runs)
    runner.run_all(runs, root, run_fn=fake)  # all finished: nothing runs
    assert len(calls) == 1 + len(runs)


def test_runner_refuses_finished_runs_made_under_another_default(tmp_path, monkeypatch):
    """A run's directory is named by its overrides; a default changed in the experiment file since must not
    pass the old run off as the new setting's."""
    root = str(tmp_path)
    runs = runs_for(dataclasses.replace(TINY, seeds=(0,)), ["claim4"])

    def fake(config, cache_root):
        os.makedirs(config.workdir, exist_ok=True)
        with open(os.path.join(config.workdir, "summary.json"), "w") as f:
            json.dump({"config": config.to_dict()}, f)
        open(os.path.join(config.workdir, "per_prompt.json"), "w").write("{}")

    runner.run_all(runs, root, run_fn=fake)
    runner.run_all(runs, root, run_fn=lambda c, r: pytest.fail("finished runs must be skipped"))
    build = runner.run_config

    def changed_default(run, root):
        c = build(run, root)
        c.rl.warmup = c.rl.warmup + 3
        return c

    monkeypatch.setattr(runner, "run_config", changed_default)
    with pytest.raises(ConfigError, match=r"rl\.warmup was 0, would now be 3") as e:
        runner.run_all(runs, root, run_fn=lambda c, r: pytest.fail("refused before any compute"))
    assert e.value.key == "rl.warmup" and runs[0].workdir(root) in str(e.value)


def test_tiny_profile_end_to_end(tmp_path, monkeypatch):
    """The pipeline, not the science: the tiny profile cut to one seed, one arith claim of two methods
    (claim4: sft, bon_sft) and one sentiment claim (claim9, one run), each run through run_experiment (every
    stage; a family's runs share its stage cache), then the analysis, the markdown and the figures; a
    rerun finds every run finished and runs nothing. The whole tiny profile: `make reproduce
    ARGS=--profile=tiny` (~34 runs). Most of the time is XLA compiling; the runs of a family share their
    programs through the persistent compilation cache (tests/conftest.py), which also serves later suites."""
    import experiments.reproduce.settings as settings
    from experiments.reproduce.__main__ import main

    arith = dataclasses.replace(TINY.families["arith"], tuning={})  # the synthetic test covers the tries
    sentiment = TINY.families["sentiment"]
    sentiment = dataclasses.replace(
        sentiment,
        overrides={**sentiment.overrides, "sft.steps": 4, "rl.ref_samples": 16, "eval.bootstrap": 10},
    )
    reduced = dataclasses.replace(TINY, seeds=(0,), families={"arith": arith, "sentiment": sentiment})
    monkeypatch.setitem(settings.PROFILES, "tiny", reduced)
    args = ["--profile=tiny", "--only=claim4,claim9", f"--workdir={tmp_path}"]
    assert main(args) == 0
    log = runner.read_log(str(tmp_path), "tiny")
    assert sorted(e["label"] for e in log.values()) == ["bon_sft", "n=2_objective=vbon", "sft"]
    assert all(e["status"] == "done" and e["wall_s"] > 0 for e in log.values())
    runs = runs_for(reduced, ["claim4", "claim9"])
    for run in runs:  # real evaluations: the base and the tuned policy on the same prompts
        pp = json.loads(open(os.path.join(run.workdir(str(tmp_path)), "per_prompt.json")).read())
        assert len(pp["base"]["bon_at_4"]) == len(pp["tuned"]["bon_at_4"]) == 8
    summaries = {
        r.run_id: os.path.getmtime(os.path.join(r.workdir(str(tmp_path)), "summary.json")) for r in runs
    }
    walls = {k: e["wall_s"] for k, e in log.items()}
    assert main(args) == 0  # finds every run finished: nothing reruns, the report is rewritten
    assert {k: e["wall_s"] for k, e in runner.read_log(str(tmp_path), "tiny").items()} == walls
    assert {
        r.run_id: os.path.getmtime(os.path.join(r.workdir(str(tmp_path)), "summary.json")) for r in runs
    } == summaries
    text = (tmp_path / "tiny" / "reproduction.md").read_text()
    verdicts = (stats.REPRODUCED, stats.NOT_REPRODUCED, stats.INCONCLUSIVE)
    for cid in ("claim4", "claim9"):
        section = text.split(f"## {cid}")[1].split("\n## ")[0]
        assert any(f"**Verdict: {v}.**" in section for v in verdicts), cid
        assert f"figures/reproduce_{cid}.png" in section
        assert (tmp_path / "tiny" / "figures" / f"reproduce_{cid}.png").stat().st_size > 5000
    assert "BoN@4: bon_sft - sft" in text and "1 x 8" in text
    assert "KL(BoN@2) measured - bound" in text
