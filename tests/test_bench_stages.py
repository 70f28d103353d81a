"""What `make bench` adds for issue 14: the verifier phase's FLOP model, and the stages' timings (recorded
in each stage's done.json, read back into shares of the run's wall time)."""

import json
import time

import jax
import jax.numpy as jnp
import pytest

from benchmarks.run import bench_config, bench_stages, non_embedding_params, verifier_forward_flops
from bon_jax.pipeline.stage_cache import stage
from bon_jax.verifiers.learned import init_verifier_params, score_completion_tokens


@pytest.mark.parametrize("pooling, surprisal", [("last", False), ("likelihood", True)])
def test_verifier_scoring_flops_match_xla_cost_analysis(pooling, surprisal):
    """Matmuls and attention contractions only: a little below XLA's count (elementwise work too)."""
    cfg = bench_config()
    params, _ = init_verifier_params(cfg, jax.random.key(0))
    B, M, T_p, T_new = 2, 8, 32, 16
    prompts_BT = jnp.ones((B, T_p), jnp.int32)
    completions_BMT = jnp.ones((B, M, T_new), jnp.int32)
    lengths_BM = jnp.full((B, M), T_new, jnp.int32)
    score = lambda p: score_completion_tokens(p, cfg, prompts_BT, completions_BMT, lengths_BM, pooling=pooling)
    analysis = jax.jit(score).lower(params).compile().cost_analysis()
    xla = float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])
    model = verifier_forward_flops(cfg, non_embedding_params(cfg, params), B, M, T_p, T_new, surprisal)
    assert 0.95 * xla <= model <= xla


def test_stage_timing_is_recorded_in_done_json(tmp_path):
    st = stage(str(tmp_path), "verifier", {"a": 1})
    assert st.claim()
    time.sleep(0.05)
    st.phase_done("data")
    time.sleep(0.1)
    st.phase_done("train")
    st.mark_done({"auc": 0.7})
    done = st.result()
    assert done["auc"] == 0.7
    timing = done["timing"]
    assert 0.05 <= timing["phases_s"]["data"] < timing["phases_s"]["train"]
    assert timing["wall_s"] >= sum(timing["phases_s"].values())
    # A stage another process produced is only read: no phases recorded, done.json unchanged.
    again = stage(str(tmp_path), "verifier", {"a": 1})
    assert not again.claim()
    again.phase_done("data")
    assert again.result() == done


def test_bench_reads_each_stages_share_of_the_run(tmp_path):
    def done(name, wall, phases=None, **result):
        path = tmp_path / "stages" / name
        path.mkdir(parents=True)
        timing = {"wall_s": wall, "phases_s": phases or {}, "finished": 0.0}
        (path / "done.json").write_text(json.dumps(dict(result, timing=timing)))
        return str(path)

    stages = {"tokenizer": done("tokenizer-1", 10.0), "base_policy": done("base_policy-1", 90.0),
              "verifier": done("verifier-1", 60.0, {"data": 20.0, "train": 35.0}),
              "finetune": done("finetune-1", 150.0), "eval_base": done("eval_base-1", 40.0)}
    (tmp_path / "summary.json").write_text(json.dumps({"experiment": "x", "wall_s": 351.0, "stages": stages}))
    out = bench_stages(tmp_path)
    got = {r["stage"]: (r["wall_s"], r["share"]) for r in out["rows"]}
    assert out["stages_wall_s"] == 350.0
    assert got == {"tokenizer": (10.0, 10 / 350), "sft": (90.0, 90 / 350), "verifier data": (20.0, 20 / 350),
                   "verifier training": (35.0, 35 / 350), "verifier other": (5.0, 5 / 350),
                   "finetune": (150.0, 150 / 350), "eval (base)": (40.0, 40 / 350)}
    assert bench_stages(tmp_path / "missing") is None


def test_a_stage_records_the_host_that_computed_it(tmp_path):
    """Numbers are bit-exact only on CPUs that round alike (bon_jax/provenance.py): each stage says which."""
    from bon_jax.provenance import _cpuinfo, host_info

    st = stage(str(tmp_path), "base_policy", {"a": 1})
    assert st.claim()
    st.mark_done()
    assert st.result()["timing"]["host"] == host_info()
    assert host_info()["cpu"] and host_info()["jax"]
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 fma avx512f amx_tile\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: sse\n")
    assert _cpuinfo(str(info)) == ("Some Xeon", ("avx2", "fma", "avx512f", "amx_tile"))
