from ml_collections import ConfigDict

from bon_jax.pipeline.stage_cache import config_key, stage


def test_key_depends_only_on_given_sections():
    a = ConfigDict({"rl": {"n": 4}, "sft": {"steps": 10}})
    b = ConfigDict({"rl": {"n": 8}, "sft": {"steps": 10}})
    assert config_key(a.sft) == config_key(b.sft)
    assert config_key(a.rl) != config_key(b.rl)
    assert config_key({"x": 1, "y": 2}) == config_key({"y": 2, "x": 1})


def test_stage_done_marker_roundtrip(tmp_path):
    s = stage(str(tmp_path), "verifier", {"steps": 3})
    assert not s.done
    s.mark_done({"auc": 0.8})
    assert s.done and s.result() == {"auc": 0.8}
    assert s.path.startswith(str(tmp_path / "verifier-"))
    assert stage(str(tmp_path), "verifier", {"steps": 4}).path != s.path


_CLAIM = """
import sys, time
from bon_jax.pipeline.stage_cache import stage

st = stage(sys.argv[1], "base_policy", {"steps": 3})
if st.claim():
    print("producing", flush=True)
    time.sleep(float(sys.argv[2]))
    with open(st.file("params"), "a") as f:
        f.write("x")
    st.mark_done({"by": sys.argv[3]})
else:
    print("loaded", flush=True)
print(open(st.file("params")).read(), st.result()["by"], flush=True)
"""


def test_a_run_waits_for_a_stage_another_run_is_producing_then_loads_it(tmp_path):
    """Two runs sharing a stage cache (two sweep shards): the second to claim a stage waits for the first
    to finish it, then loads its output; the stage is produced once."""
    import subprocess
    import sys

    run = lambda seconds, name: subprocess.Popen(
        [sys.executable, "-c", _CLAIM, str(tmp_path), str(seconds), name], stdout=subprocess.PIPE, text=True
    )
    first = run(1.5, "first")
    assert first.stdout.readline() == "producing\n"  # it holds the stage now
    second = run(0.0, "second")
    out_first, _ = first.communicate(timeout=60)
    out_second, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0
    assert out_first == "x first\n"
    assert out_second == "loaded\nx first\n"


def test_a_claim_of_a_stage_whose_producer_died_is_granted(tmp_path):
    """The lock dies with its process: a run killed while producing a stage never blocks the next one."""
    import subprocess
    import sys

    code = (
        "import sys; from bon_jax.pipeline.stage_cache import stage; "
        "assert stage(sys.argv[1], 'finetune').claim(); print('claimed', flush=True); import os; os._exit(1)"
    )
    died = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert died.stdout == "claimed\n" and died.returncode == 1
    st = stage(str(tmp_path), "finetune")
    assert st.claim() and st.claim()  # granted, and again in the process that holds it
    st.mark_done()
    assert st.done and not st.claim()


def test_processes_of_one_multi_host_run_do_not_lock_each_other_out(tmp_path, monkeypatch):
    """Every process of a multi-host run produces the stage (its steps are collectives): none waits."""
    import subprocess
    import sys
    import time

    import jax

    hold = (
        "import sys, time; from bon_jax.pipeline.stage_cache import stage; "
        "assert stage(sys.argv[1], 'finetune').claim(); print('claimed', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "claimed\n"
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        t0 = time.monotonic()
        assert stage(str(tmp_path), "finetune").claim()
        assert time.monotonic() - t0 < 10
    finally:
        other.kill()
        other.wait()
