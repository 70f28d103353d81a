"""A learned verifier with a backbone of its own (`verifier.backbone_sft_steps`, `verifier.model_overrides`):
pre-trained by SFT exactly as a base policy of that model would be, shared with such a run, and the
verifier's training starts from it; configs that would silently ignore the options are refused."""

import glob
import os

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from smoke import smoke_config

from bon_jax.config import validate
from bon_jax.errors import ConfigError
from bon_jax.pipeline import verifier as verifier_mod
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.policy import base_policy_stage, model_config, tokenizer_stage
from bon_jax.train.checkpoint import load_params

WIDER = {"embed_dim": 48, "mlp_dim": 96}  # the smoke policy ("tiny") is 32 wide


def _own_backbone_config(tmp_path, name="run", **overrides):
    c = smoke_config(
        tmp_path,
        name,
        **{"sft.steps": 3, "verifier.backbone_sft_steps": 4, "verifier.steps": 2, **overrides},
    )
    c.verifier.model_overrides = ConfigDict(WIDER)
    c.stages = ("tokenizer", "base_policy", "verifier")
    return c


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_own_backbone_resumes_is_the_base_policy_a_run_of_that_model_would_train_and_starts_the_verifier(
    tmp_path, monkeypatch
):
    from bon_jax.train.loop import Preempted

    c = _own_backbone_config(tmp_path, **{"checkpoint.every": 2})
    ctx = RunContext(validate(c))
    tok, tok_st = tokenizer_stage(ctx)
    model_cfg, base, base_st = base_policy_stage(ctx, tok, tok_st)
    # Preempted in the backbone's SFT (2 of its 4 steps), then resumed to the end.
    with pytest.raises(Preempted):
        verifier_mod.verifier_stage(ctx, tok, model_cfg, base, base_st.key, tok_stage=tok_st, stop_after=2)
    started_from = []
    real_train = verifier_mod.train_verifier

    def recording_train(cfg, *args, **kw):
        started_from.append((cfg, kw["init_params"]))
        return real_train(cfg, *args, **kw)

    monkeypatch.setattr(verifier_mod, "train_verifier", recording_train)
    verifier, ver_st = verifier_mod.verifier_stage(ctx, tok, model_cfg, base, base_st.key, tok_stage=tok_st)
    assert ver_st.done and verifier.params is not None

    stages = sorted(glob.glob(os.path.join(c.workdir, "stages", "base_policy-*")))
    assert len(stages) == 2, stages  # the policy's and the verifier's backbone
    ((cfg, init),) = started_from
    assert cfg.embed_dim == 48 and cfg.mlp_dim == 96

    # A run whose policy is that model, trained for backbone_sft_steps, finds the stage done: the same one.
    as_policy = smoke_config(tmp_path, "run", **{"sft.steps": 4})
    as_policy.model.overrides = ConfigDict(WIDER)
    ctx_policy = RunContext(validate(as_policy), allow_training=False)  # it must not train
    _, params, st = base_policy_stage(ctx_policy, tok, tok_st)
    assert st.path in stages
    assert init is not None and _leaves_equal(init, params)

    # The policy's own stage holds the 32-wide smoke model: the verifier did not start from it.
    (policy_stage,) = [s for s in stages if s != st.path]
    policy_cfg = model_config(c.model, tok)
    assert policy_cfg.embed_dim == 32
    load_params(os.path.join(policy_stage, "params"), policy_cfg)  # raises if it were another model's


@pytest.mark.parametrize(
    "change, key",
    [
        ({"verifier.model_overrides": ConfigDict({"embed_dim": 48})}, "verifier.model_overrides"),
        ({"verifier.model_overrides": ConfigDict({"embdim": 48}), "verifier.backbone_sft_steps": 4},
         "verifier.model_overrides.embdim"),
        ({"verifier.model": "huge", "verifier.backbone_sft_steps": 4}, "verifier.model"),
        ({"verifier.backbone_sft_steps": -1}, "verifier.backbone_sft_steps"),
        ({"verifier.backbone_sft_steps": 4, "model.checkpoint": "/x"}, "verifier.backbone_sft_steps"),
        ({"verifier.steps": 0}, "verifier.steps"),  # the smoke verifier's head is random ('last' pooling)
        ({"verifier.steps": 0, "verifier.pooling": "likelihood"}, "verifier.steps"),  # no zero head
    ],
)
def test_verifier_options_that_would_not_apply_are_refused_by_name(tmp_path, change, key):
    c = smoke_config(tmp_path)
    for k, v in change.items():
        section, field = k.split(".")
        c[section][field] = v
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert e.value.key == key, e.value


def test_the_default_verifier_s_cache_key_does_not_read_the_backbone_options_at_their_neutral_values(tmp_path):
    c = smoke_config(tmp_path)
    section = verifier_mod._stage_section(c.verifier)
    assert "model_overrides" not in section and "backbone_sft_steps" not in section
    c.verifier.backbone_sft_steps = 4
    c.verifier.model_overrides = ConfigDict(WIDER)
    section = verifier_mod._stage_section(c.verifier)
    assert section["backbone_sft_steps"] == 4 and section["model_overrides"] == WIDER
