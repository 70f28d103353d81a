import pytest

from bon_jax import config as cfg
from bon_jax.errors import ConfigError


def test_base_config_validates():
    cfg.validate(cfg.base_config())


def test_unknown_key_is_named_with_a_suggestion():
    c = cfg.base_config()
    c.rl.lr_rate = 1e-3  # typo of rl.lr
    with pytest.raises(ConfigError, match=r"config\.rl\.lr_rate: unknown key\. Did you mean 'rl\.lr'"):
        cfg.validate(c)


def test_free_form_sections_accept_any_key():
    c = cfg.base_config()
    c.rl.options.clip_weight = 5.0
    c.task.kwargs.levels = (1, 2)
    cfg.validate(c)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rl.m", 4, "must be >= n"),
        ("rl.temperature", 0.0, "must be > 0"),
        ("rl.top_p", 1.5, r"must be in \(0, 1\]"),
        ("rl.grad_accum", 3, "must divide rl.batch_size"),
        ("model.dtype", "float16", "float32' or 'bfloat16"),
        ("verifier.kind", "magic", "learned | oracle | sentiment"),
        ("verifier.ranking_weight", -1.0, "must be >= 0"),
        ("verifier.ranking", "pointwise", "must be pairwise | listwise"),
        ("verifier.pooling", "mean", r"must be last \| noisy_or \| noisy_or_surprisal \| likelihood"),
        ("verifier.corrupted_references", -1, "must be >= 0"),
        ("verifier.reference_only_prompts", 100, "set verifier.corrupted_references > 0"),
        ("rl.max_new_tokens", 400, "must be < model.max_len"),
    ],
)
def test_impossible_values_are_refused(key, value, message):
    c = cfg.base_config()
    section, field = key.split(".")
    c[section][field] = value
    with pytest.raises(ConfigError, match=message) as err:
        cfg.validate(c)
    assert err.value.key.startswith(section)


def test_missing_path_names_key_and_content(tmp_path):
    c = cfg.base_config()
    c.model.checkpoint = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"config\.model\.checkpoint = .*nope.* does not exist"):
        cfg.validate(c)


def test_required_paths_are_all_named_at_once():
    c = cfg.base_config()
    c.requires = (("model.checkpoint", "Get Gemma 2 2B."), ("task.data_dir", "Get MATH."))
    with pytest.raises(ConfigError) as err:
        cfg.validate(c)
    msg = str(err.value)
    assert "config.model.checkpoint is not set" in msg and "Get Gemma 2 2B." in msg
    assert "config.task.data_dir is not set" in msg and "Get MATH." in msg


def test_missing_experiment_lists_known_ones():
    with pytest.raises(ConfigError, match="no experiment file"):
        cfg.load_experiment("definitely_not_an_experiment")


@pytest.mark.parametrize("name", ["arith_pass32", "arith_bon_sft", "sentiment_vbon", "smoke"])
def test_every_sweep_point_of_the_shipped_grids_is_a_valid_config(name):
    import inspect

    from bon_jax.pipeline.sweep import point_config

    module = cfg.load_experiment(f"experiments/{name}.py")
    grids = [module.get_sweep()]
    if inspect.signature(module.get_sweep).parameters:
        grids.append(module.get_sweep("small"))
        assert 0 < len(grids[1]) < len(grids[0])
    for grid in grids:
        for overrides in grid:
            c = point_config(module.get_config(), overrides, "/tmp/unused")
            if not c.requires:
                cfg.validate(c)


@pytest.mark.parametrize("key", ["beta", "anchor_ema"])
def test_bon_distill_sft_with_a_kl_term_is_refused_before_compute(key):
    c = cfg.base_config()
    c.rl.objective = "bon_distill_sft"
    c.rl.beta = 0.0
    c.rl[key] = 0.1
    with pytest.raises(ConfigError, match=rf"rl\.{key}: must be 0 for bon_distill_sft"):
        cfg.validate(c)


def test_corrupted_references_need_a_task_that_can_corrupt():
    c = cfg.base_config()
    c.verifier.corrupted_references = 2
    cfg.validate(c)  # arith can
    c.task.name = "sentiment"
    with pytest.raises(ConfigError, match=r"verifier\.corrupted_references: task 'sentiment' cannot corrupt"):
        cfg.validate(c)


@pytest.mark.parametrize("kinds", [("carry", "flip"), ()])
def test_corruption_kinds_must_be_the_tasks(kinds):
    c = cfg.base_config()
    c.verifier.corrupted_references = 2
    c.verifier.corruption_kinds = ("answer", "propagate", "carry")
    cfg.validate(c)
    c.verifier.corruption_kinds = kinds
    with pytest.raises(ConfigError, match=r"verifier\.corruption_kinds: must be a non-empty tuple of answer \| step"):
        cfg.validate(c)


# ---------------------------------------------------------------- issue 13, defect 11: refused before compute


@pytest.mark.parametrize(
    "key, value",
    [
        ("sft.lr", -1e-3),
        ("verifier.lr", float("nan")),
        ("rl.lr", -1.0),
        ("rl.lr", float("nan")),
        ("rl.lr", float("inf")),
        ("rl.lr", 0.0),
        ("seed", -1),
        ("rl.temperature", float("nan")),
        ("eval.temperature", 0.0),
        ("eval.temperature", -0.5),
        ("verifier.temperature", 0.0),
        ("rl.max_grad_norm", -1.0),
        ("rl.max_grad_norm", float("nan")),
        ("sft.warmup", -1),
        ("rl.warmup", -5),
        ("rl.weight_decay", -0.1),
        ("eval.bootstrap", 0),
        ("eval.bootstrap", 1),
        ("rl.objective", "bon_rl_vv"),
        ("eval.split", "dev"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    c = cfg.base_config()
    *parents, field = key.split(".")
    section = c
    for p in parents:
        section = section[p]
    section[field] = value
    with pytest.raises(ConfigError) as err:
        cfg.validate(c)
    assert err.value.key == key
    assert str(err.value).startswith(f"config.{key}: ") and len(str(err.value)) < 300


def test_in_range_edge_values_are_accepted():
    c = cfg.base_config()
    c.seed, c.rl.max_grad_norm, c.rl.warmup, c.sft.warmup, c.eval.bootstrap = 0, 0.0, 0, 0, 2
    c.eval.temperature = 1e-3
    cfg.validate(c)


def _cli(*args, timeout=240):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, key",
    [
        # an unknown key: ml_collections' 57-line traceback before
        (("bon_jax.cli.train", "--config=experiments/smoke.py", "--config.rl.lrr=1"), "config.rl.lrr"),
        (("bon_jax.cli.sweep", "--config=experiments/smoke.py", "--config.rl.optionz.x=1"), "config.rl.optionz"),
        # `make train EXP=nope`: a traceback before, not the list of experiments
        (("bon_jax.cli.train", "--config=experiments/nope.py"), "no experiment file experiments/nope.py"),
        # a full run exited 0 with a negative learning rate
        (("bon_jax.cli.train", "--config=experiments/smoke.py", "--config.rl.lr=-1"), "config.rl.lr"),
    ],
)
def test_command_line_errors_are_one_short_message(tmp_path, args, key):
    out = _cli(*args, f"--workdir={tmp_path}")
    assert out.returncode not in (0, None), out.stderr[-2000:]
    assert key in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3, out.stderr[-2000:]
    assert not any(tmp_path.iterdir())  # nothing was computed
    if "nope" in key:
        assert "smoke" in out.stderr and "arith_bo32" in out.stderr
    elif "lrr" in key:
        assert "Did you mean --config.rl.lr?" in out.stderr


def test_corruption_kinds_key_the_verifier_stage_only_where_they_change_it():
    from bon_jax.pipeline.verifier import _stage_section

    c = cfg.base_config()
    c.verifier.corrupted_references = 2
    first = _stage_section(c.verifier)
    assert "corruption_kinds" not in first  # verifiers cached before the option existed stay valid
    c.verifier.corruption_kinds = ("answer", "propagate", "carry")
    assert _stage_section(c.verifier)["corruption_kinds"] == ("answer", "propagate", "carry")
    c.verifier.corrupted_references = 0  # no corruptions made: the kinds change nothing
    assert "corruption_kinds" not in _stage_section(c.verifier)


def test_the_ranking_kind_keys_the_verifier_stage_only_where_it_is_not_the_first_one():
    from bon_jax.pipeline.verifier import _stage_section

    c = cfg.base_config()
    assert "ranking" not in _stage_section(c.verifier)  # verifiers cached before the option stay valid
    c.verifier.ranking = "listwise"
    assert _stage_section(c.verifier)["ranking"] == "listwise"
