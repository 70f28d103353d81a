"""The sweep runner (issue 5): shards of a grid, skipping finished points, results table and plots."""

import os

import pytest
from smoke import assert_finetuning_moved, copy_upstream_stages, smoke_config


@pytest.mark.slow
def test_sweep_runs_shards_skips_done_points_and_plots(tmp_path, shared_stage_root):
    from bon_jax.pipeline.sweep import pareto_front, run_sweep

    c = smoke_config(tmp_path, **{"verifier.kind": "oracle", "rl.steps": 2, "eval.num_prompts": 4})
    copy_upstream_stages(c, shared_stage_root)  # the points' shared base policy, trained once per session
    grid = [{"rl.objective": "kl_rl", "rl.beta": 0.1}, {"rl.objective": "bon_rl", "rl.n": 2}]
    first = run_sweep(c, grid, shard=1, num_shards=2)
    assert [r["objective"] for r in first] == ["bon_rl"]
    rows = run_sweep(c, grid, shard=0, num_shards=2)
    assert {r["objective"] for r in rows} == {"kl_rl", "bon_rl"}
    root = tmp_path / "run"
    assert (root / "results.csv").exists() and "| point |" in (root / "results.md").read_text()
    assert (root / "reward_vs_kl.png").stat().st_size > 1000
    stages = os.listdir(root / "stages")
    assert sum(s.startswith("base_policy-") for s in stages) == 1  # shared by both points
    tuned = [s for s in stages if s.startswith("finetune-")]
    assert len(tuned) == 2
    for s in tuned:  # each point's fine-tuning moved the shared base (else the table compares the base with itself)
        assert_finetuning_moved(str(root / "stages" / s), c)
    assert pareto_front([(0.0, 0.1), (1.0, 0.5), (2.0, 0.4), (0.5, 0.1)]) == [0, 1]
