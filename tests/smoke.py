"""The `smoke` experiment's config for the runner tests, with `section.field=value` overrides, and the check
that its fine-tuning did something (without it, "resumed == uninterrupted" could compare the base with itself)."""

import glob
import json
import os
import shutil
import tempfile

import jax
import numpy as np

from bon_jax.config import load_experiment


def smoke_config(tmp_path, name="run", **overrides):
    c = load_experiment("smoke").get_config()
    c.workdir = str(tmp_path / name)
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


UPSTREAM_STAGES = ("tokenizer", "base_policy", "verifier")


def copy_upstream_stages(c, shared_root):
    """Puts finished tokenizer, base-policy and verifier stages of config `c` into `c`'s own stage cache,
    copied from the stage cache under `shared_root`, where the first test of the session to ask for them
    trains them (stage_cache's locks let the two xdist workers train each stage once between them).

    For runner tests of the stages after these (fine-tuning, sweeps, preemption): they train their own
    fine-tuning from the same base policy a fresh run would train, without paying 150 SFT steps each.
    Call it before monkeypatching anything the upstream stages use, or the shared cache holds the patch."""
    from bon_jax.pipeline.run import run_experiment

    upstream = c.copy_and_resolve_references()
    upstream.stages = UPSTREAM_STAGES
    os.makedirs(shared_root, exist_ok=True)
    upstream.workdir = tempfile.mkdtemp(dir=shared_root)  # its summary.json only; the stages are shared
    summary = run_experiment(upstream, cache_root=os.path.join(shared_root, "stages"))
    for name in UPSTREAM_STAGES:
        src = summary["stages"][name]
        if not os.path.isdir(src):  # an oracle verifier's stage writes nothing
            continue
        shutil.copytree(src, os.path.join(c.workdir, "stages", os.path.basename(src)),
                        ignore=shutil.ignore_patterns(".lock"))


def _only(pattern):
    (path,) = glob.glob(pattern)
    return path


def assert_finetuning_moved(finetune_dir, config, *, moved_after=0):
    """The fine-tuning stage in `finetune_dir` (a `stages/finetune-*` directory of a run of `config`) had
    non-zero rewards and gradient norms (at some step > `moved_after` too) and its params differ from the
    base policy's (`stages/base_policy-*` beside it). Returns the logged rows."""
    from bon_jax.models import get_config
    from bon_jax.pipeline.policy import load_params

    with open(os.path.join(finetune_dir, "logs", "finetune.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows, finetune_dir
    assert any(r["reward_mean"] > 0 for r in rows), [r["reward_mean"] for r in rows]
    norms = [(r["step"], r["grad_norm"]) for r in rows]
    assert any(g > 0 for step, g in norms if step > moved_after), norms
    cfg = get_config(config.model.name, vocab_size=config.tokenizer.vocab_size)
    base = load_params(_only(os.path.join(os.path.dirname(finetune_dir), "base_policy-*", "params")), cfg)
    tuned = load_params(os.path.join(finetune_dir, "params"), cfg)
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), base, tuned)
    assert max(jax.tree.leaves(diff)) > 0, "the tuned params equal the base policy's"
    return rows
