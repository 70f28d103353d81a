"""The verifier stage: what Best-of-N selects by.

- `oracle`: the task's ground-truth reward (BoN-RL-S setting, pass@N).
- `sentiment`: the sentiment scorer (the vBoN setting: select by the reward model itself).
- `learned`: Chow et al.'s verifier: the policy backbone with a scalar head, trained by binary
  cross-entropy on samples of the base policy graded by the task (optionally also on the training
  prompts' reference solutions as correct examples, `verifier.reference_positives`, and on corrupted
  references as hard negatives, `verifier.corrupted_references`, for tasks that can corrupt), optionally plus
  a within-prompt ranking term (`verifier.ranking_weight`, see `bon_jax.verifiers.train`) and a choice of
  head (`verifier.pooling`; `'process'` trains on the task's step oracle, `Task.line_labels`); a held-out 20% of the prompts (from the validation split where there is one)
  gives AUC, within-prompt pairwise accuracy, BoN@k vs pass@k and calibration (ECE) on policy samples.

Returns the `Verifier` (`bon_jax.verifiers.base`: `score(examples_B, samples) -> scores_BM` over graded samples)
and the stage (for cache keys).

The learned verifier's stage is preemptible like the training stages: its samples are drawn in chunks of
prompts, each saved in the stage's directory as it is graded, and its training checkpoints there; a SIGTERM
raises `Preempted` once the chunk or step in flight is saved, and a rerun resumes from what was saved.
"""

from __future__ import annotations

import contextlib
import json
import os
import random

import numpy as np
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.policy import base_policy_stage, model_config
from bon_jax.pipeline.rollouts import draw_graded
from bon_jax.pipeline.stage_cache import stage
from bon_jax.train.loop import Preempted
from bon_jax.train.preemption import PreemptionGuard
from bon_jax.verifiers import (
    LearnedVerifier,
    OracleVerifier,
    SentimentVerifier,
    load_verifier,
    save_verifier,
    train_verifier,
)

# Part of the verifier stage's cache key: bumped whenever `_graded_samples` draws other data for the same
# config, so a cached verifier trained on the old data is not reused (2: held-out prompts from validation).
VERIFIER_DATA_VERSION = 2


def verifier_stage(
    ctx: RunContext,
    tokenizer,
    model_cfg,
    base_params,
    base_key: str,
    *,
    tok_stage=None,
    stop_after: int | None = None,
):
    """`tok_stage` (the tokenizer's stage) is needed where the verifier pre-trains a backbone of its own
    (`verifier.backbone_sft_steps`). `stop_after` (tests) stops the verifier's training, or its backbone's,
    after that many steps, as a preemption would."""
    c = ctx.config
    v = c.verifier
    st = stage(ctx.cache_root, "verifier", base_key, _stage_section(v), c.seed, VERIFIER_DATA_VERSION)
    if v.kind == "oracle":
        return OracleVerifier(), st
    if v.kind == "sentiment":
        return SentimentVerifier(), st
    if st.claim():
        ctx.require_training("verifier")
        prompts, completions, labels, groups, holdout = _graded_samples(
            ctx, tokenizer, model_cfg, base_params, chunk_dir=st.file("samples")
        )
        st.phase_done("data")  # the base policy's graded samples; then training (done.json's timing)
        vcfg, init_params = _backbone(ctx, tokenizer, model_cfg, base_params, tok_stage, stop_after)
        train = ~holdout
        pick = lambda xs, m: [x for x, keep in zip(xs, m) if keep]
        class_weight = None if v.class_weight == "none" else v.class_weight
        rate = float(labels[train].mean()) if train.any() else 0.0
        if class_weight == "balanced" and not 0.0 < rate < 1.0:
            # One class only (e.g. a base policy that never solves a problem): nothing to balance, and the
            # verifier can only learn a constant; the report's positive_rate says so.
            print(f"[bon_jax] warning: verifier training samples are {rate:.0%} correct; training unweighted")
            class_weight = None
        # One static width: the longest (prompt, completion) pair rounded up to 16, not a coarse bucket.
        longest = max(len(tokenizer.encode(p)) + len(tokenizer.encode(x)) + 2 for p, x in zip(prompts, completions))
        params, report = train_verifier(
            vcfg,
            tokenizer,
            pick(prompts, train),
            pick(completions, train),
            labels[train],
            steps=v.steps,
            batch_size=v.batch_size,
            lr=v.lr,
            seed=c.seed,
            warmup=min(50, v.steps // 10),
            init_params=init_params,
            class_weight=class_weight,
            width=-(-longest // 16) * 16,
            eval_data=(pick(prompts, holdout), pick(completions, holdout), labels[holdout], groups[holdout]),
            groups=groups[train] if v.ranking_weight else None,
            ranking_weight=v.ranking_weight,
            ranking=v.ranking,
            pooling=v.pooling,
            zero_init_head=v.zero_init_head,
            line_labels=[ctx.task.line_labels(x) for x in pick(completions, train)] if v.pooling == "process" else None,
            aggregate=v.process_aggregate,
            outcome_weight=v.process_outcome_weight,
            stage_dir=st.path,
            ckpt_every=c.checkpoint.every,
            keep=c.checkpoint.keep,
            log_every=c.log_every,
            stop_after=stop_after,
        )
        st.phase_done("train")
        report = {k: float(x) if np.ndim(x) == 0 else x for k, x in report.items()}
        save_verifier(st.file("verifier"), params, vcfg, tokenizer=tokenizer,
                      meta=dict(report, pooling=v.pooling, aggregate=v.process_aggregate,
                                outcome_weight=v.process_outcome_weight))
        st.mark_done(report)
    params, vcfg, _, _ = load_verifier(st.file("verifier"))
    return LearnedVerifier(params, vcfg, tokenizer, pooling=v.pooling, aggregate=v.process_aggregate,
                           outcome_weight=v.process_outcome_weight), st


def _backbone(ctx: RunContext, tokenizer, model_cfg, base_params, tok_stage, stop_after):
    """(ModelConfig, initial params or None) of the learned verifier's backbone (config.py, `verifier.model`):
    the base policy's own where the verifier is named like it (Chow et al.); a language model of its own,
    pre-trained by SFT as the base policy is, where `verifier.backbone_sft_steps` > 0; else a fresh one."""
    c = ctx.config
    v = c.verifier
    if v.model == c.model.name and not v.backbone_sft_steps:
        return model_cfg, base_params
    # The policy's model section with the verifier's model: what a run with it as its policy would read.
    model = ConfigDict(c.model.to_dict())
    model.name, model.overrides = v.model, ConfigDict(v.model_overrides.to_dict())
    if not v.backbone_sft_steps:
        return model_config(model, tokenizer), None
    if tok_stage is None:
        raise ValueError("verifier.backbone_sft_steps > 0 needs the tokenizer's stage (tok_stage=...)")
    sft = ConfigDict(c.sft.to_dict())
    sft.steps = v.backbone_sft_steps
    cfg, params, _ = base_policy_stage(ctx, tokenizer, tok_stage, model=model, sft=sft, stop_after=stop_after)
    return cfg, params


# The hard negatives' kinds of every verifier cached before `verifier.corruption_kinds` existed.
_FIRST_CORRUPTION_KINDS = ("answer", "propagate")


def _stage_section(v) -> dict:
    """The verifier section as the stage's cache key reads it: the `process_*` options only for the
    `'process'` pooling, which alone reads them, `corruption_kinds` only where corruptions are made, of
    other kinds than the first ones, and the backbone's and ranking's options only where they are set (so a cached
    verifier stays valid where an option changes nothing)."""
    section = v.to_dict()
    for key, neutral in (("model_overrides", {}), ("backbone_sft_steps", 0), ("ranking", "pairwise")):
        if section.get(key) == neutral:
            section.pop(key, None)
    if section.get("pooling") != "process":
        section = {k: x for k, x in section.items() if not k.startswith("process_")}
    kinds = tuple(section.get("corruption_kinds", _FIRST_CORRUPTION_KINDS))
    if not section.get("corrupted_references") or kinds == _FIRST_CORRUPTION_KINDS:
        section.pop("corruption_kinds", None)
    return section


def _graded_samples(ctx: RunContext, tokenizer, model_cfg, base_params, *, chunk_dir: str | None = None):
    """(prompts, completions, labels, prompt ids, holdout mask) from base-policy samples on `num_prompts`
    prompts, plus the references and corrupted references of the training prompts among them and of the
    `reference_only_prompts` training prompts after them (never held out).

    A fifth of the prompts are held out for the verifier's report. They come from the validation split
    when the task has enough of it: the base policy was fine-tuned on the training split, so its samples
    (and its likelihood, which the surprisal pooling reads) behave differently on prompts it has seen,
    and a report on those would not say how the verifier does on test prompts. Without a validation split,
    every fifth training prompt is held out.

    With `chunk_dir`, each chunk of prompts' samples and grades is saved there as it is drawn and read back
    instead of drawn again, and a SIGTERM raises `Preempted` once the chunk in flight is saved (the chunks
    are the same on every run: a chunk's randomness comes from its prompts' ids, not from the chunks
    drawn before it).
    """
    c = ctx.config
    v = c.verifier
    train_examples = list(ctx.task.examples("train"))
    num_held = v.num_prompts // 5
    validation = list(ctx.task.examples("validation"))[:num_held] if num_held else []
    if num_held and len(validation) == num_held:
        train_used = v.num_prompts - num_held
        examples = train_examples[:train_used] + validation
        is_held = lambda i: i >= train_used
    else:
        train_used = v.num_prompts
        examples = train_examples[:train_used]
        is_held = lambda i: i % 5 == 0
    key = ctx.rng("verifier")
    corrupt_rng = random.Random(c.seed)
    kinds = tuple(v.corruption_kinds)
    prompts, completions, labels, groups, holdout = [], [], [], [], []

    def add(prompt, text, label, group, held):
        prompts.append(prompt)
        completions.append(text)
        labels.append(label)
        groups.append(group)
        holdout.append(held)

    def add_references(e, group):
        # Training prompts only: the reference as a correct example, and/or hard negatives made from it
        # (same prompt, so the ranking term pairs them with the reference and the samples).
        if e.reference is None:
            return
        if v.reference_positives or v.corrupted_references:
            add(e.prompt, e.reference, 1.0, group, False)
        for _ in range(v.corrupted_references):
            add(e.prompt, ctx.task.corrupt(e.reference, corrupt_rng, kinds), 0.0, group, False)

    chunk = 16
    if chunk_dir:
        os.makedirs(chunk_dir, exist_ok=True)
    with PreemptionGuard() if chunk_dir else contextlib.nullcontext() as guard:
        starts = range(0, len(examples), chunk)
        for start in tqdm(starts, desc="verifier data", dynamic_ncols=True):
            ex = examples[start : start + chunk]
            path = os.path.join(chunk_dir, f"prompts_{start:06d}.json") if chunk_dir else None
            if path and os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                texts_BM, rewards_BM = saved["texts_BM"], np.asarray(saved["rewards_BM"], np.float32)
            else:
                toks, lens = tokenizer.encode_batch(
                    [e.prompt for e in ex],
                    pad_side="left",
                    add_bos=True,
                    max_len=c.model.max_len - c.rl.max_new_tokens,
                    truncate=True,
                )
                g = draw_graded(
                    base_params,
                    model_cfg,
                    tokenizer,
                    ctx.task,
                    OracleVerifier(),
                    ex,
                    toks,
                    lens,
                    v.samples_per_prompt,
                    key,
                    max_new_tokens=c.rl.max_new_tokens,
                    temperature=v.temperature,
                    prompt_ids_B=np.arange(start, start + len(ex)),
                )
                texts_BM = [[str(t) for t in row] for row in g.texts_BM]
                rewards_BM = np.asarray(g.rewards_BM, np.float32)
                if path:
                    with open(path + ".tmp", "w") as f:
                        json.dump({"texts_BM": texts_BM, "rewards_BM": rewards_BM.tolist()}, f)
                    os.replace(path + ".tmp", path)
            for b, e in enumerate(ex):
                for i in range(v.samples_per_prompt):
                    held = is_held(start + b)
                    add(e.prompt, texts_BM[b][i], float(rewards_BM[b, i] > 0.5), start + b, held)
                if not is_held(start + b):
                    add_references(e, start + b)
            if guard is not None and guard.requested():
                done = min(start + chunk, len(examples))
                raise Preempted(
                    f"verifier data: samples of {done} of {len(examples)} prompts saved; restart to resume"
                )
    # config requires corrupted_references > 0 with reference_only_prompts, so each adds its reference too
    for i, e in enumerate(train_examples[train_used : train_used + v.reference_only_prompts]):
        add_references(e, len(examples) + i)
    return prompts, completions, np.asarray(labels, np.float32), np.asarray(groups), np.asarray(holdout)
