"""Runs an experiment end to end: tokenizer -> base policy -> verifier -> fine-tuning -> evaluation -> report.

Each stage's output is cached under `<workdir>/stages/<stage>-<hash of what it depends on>`, so a rerun
skips finished stages, an interrupted stage resumes from its checkpoint, and the points of a sweep share
the tokenizer, base policy and verifier they have in common.
"""

from __future__ import annotations

import json
import os
import time

import jax
from ml_collections import ConfigDict

from bon_jax.config import validate
from bon_jax.errors import ConfigError
from bon_jax.pipeline import report
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.evaluate import evaluate_policy
from bon_jax.pipeline.finetune import finetune_stage
from bon_jax.pipeline.policy import base_policy_stage, tokenizer_stage
from bon_jax.pipeline.stage_cache import stage
from bon_jax.pipeline.verifier import verifier_stage
from bon_jax.provenance import host_info


def run_experiment(
    config: ConfigDict,
    *,
    only: str | None = None,
    stop_after: int | None = None,
    cache_root: str | None = None,
) -> dict:
    """Runs (or resumes) every stage of `config`; returns the summary dict (also in summary.json).

    `only="eval"` trains nothing: the training stages must be cached, evaluation and report are (re)done.
    `stop_after` (tests) stops each training stage after that many steps, as a preemption would.
    """
    if only not in (None, "eval"):
        raise ConfigError("only", f"must be 'eval' or unset, got {only!r}")
    validate(config)
    t0 = time.time()
    ctx = RunContext(config, allow_training=only != "eval", shared_cache_root=cache_root)
    ctx.load_tasks()  # reads the data: a bad file fails here, before a checkpoint is loaded
    c = config
    print(
        f"[bon_jax] {c.name}: workdir {ctx.workdir}, devices {jax.device_count()} x {jax.devices()[0].platform}"
    )
    tok, tok_st = tokenizer_stage(ctx)
    model_cfg, base_params, base_st = base_policy_stage(ctx, tok, tok_st, stop_after=stop_after)
    verifier, ver_st = verifier_stage(
        ctx, tok, model_cfg, base_params, base_st.key, tok_stage=tok_st, stop_after=stop_after
    )
    policies = {"base": base_params}
    stage_paths = {"tokenizer": tok_st.path, "base_policy": base_st.path, "verifier": ver_st.path}
    if "finetune" in c.stages and c.rl.steps > 0:
        tuned, ft_st = finetune_stage(
            ctx, tok, model_cfg, base_params, base_st.key, verifier, ver_st.key, stop_after=stop_after
        )
        policies["tuned"] = tuned
        stage_paths["finetune"] = ft_st.path
    evals = {}
    if "eval" in c.stages:
        examples = list(ctx.eval_task.examples(c.eval.split))[: c.eval.num_prompts]
        for name, params in policies.items():
            key = base_st.key if name == "base" else ft_st.key
            st = stage(ctx.cache_root, f"eval_{name}", key, ver_st.key, c.eval, c.seed)
            stage_paths[f"eval_{name}"] = st.path
            if st.claim():
                print(
                    f"[bon_jax] evaluating {name} policy on {len(examples)} {ctx.eval_task.name} {c.eval.split} "
                    f"prompts x {c.eval.m}"
                )
                ev = evaluate_policy(
                    params,
                    model_cfg,
                    base_params,
                    tok,
                    ctx.eval_task,
                    verifier,
                    examples,
                    ctx.rng("eval"),
                    m=c.eval.m,
                    ks=tuple(c.eval.ks),
                    max_new_tokens=c.eval.max_new_tokens,
                    temperature=c.eval.temperature,
                    max_prompt_len=c.model.max_len - c.eval.max_new_tokens,
                    bootstrap=c.eval.bootstrap,
                    chunk_dir=st.file("chunks"),  # a preempted evaluation resumes from its saved chunks
                )
                with open(st.file("eval.json"), "w") as f:
                    json.dump(ev, f)
                st.mark_done()
            with open(st.file("eval.json")) as f:
                evals[name] = json.load(f)
    summary = {
        "experiment": c.name,
        "config": c.to_dict(),
        "wall_s": time.time() - t0,
        "host": host_info(),  # bon_jax/provenance.py: numbers are bit-exact only on alike CPUs
        "stages": stage_paths,  # each done.json holds the stage's timing (`Stage.mark_done`)
        "verifier": ver_st.result() if ver_st.done else {"kind": c.verifier.kind},
        "eval_task": {"name": ctx.eval_task.name, "split": c.eval.split},
        "eval": evals,
        "compare": report.paired_differences(evals),
    }
    path = report.write_summary(ctx.workdir, summary)
    if evals:
        evaluated_on = f"{ctx.eval_task.name} {c.eval.split}"
        print(f"[bon_jax] evaluation on {evaluated_on} (trained on {ctx.task.name}):")
        print(report.table(evals))
        if summary["compare"]:
            print("paired differences over the same prompts (* = 95% CI above 0):")
            print(report.difference_table(summary["compare"]))
        plot = os.path.join(ctx.workdir, "accuracy_vs_n.png")
        report.plot_accuracy_vs_n(evals, plot, f"{c.name}: {evaluated_on}")
    print(f"[bon_jax] done in {summary['wall_s']:.0f} s; summary: {path}")
    return summary


__all__ = ["run_experiment"]
