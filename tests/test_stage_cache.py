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
