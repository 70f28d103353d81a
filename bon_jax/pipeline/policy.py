"""Stages that produce a policy: the tokenizer, and the base policy (supervised from scratch).

Tokenizer: the config's `.model` file, or sentencepiece trained on the task's training corpus.
Base policy: SFT on the task's reference solutions (`bon_jax.train.lm.sft_loss`), jitted and sharded
(params over `fsdp`, batch over `data`), checkpointed and resumable; its batches are a function of the
step (a per-epoch permutation of the training set drawn from the seed), so a resumed run sees exactly
the batches an uninterrupted one would.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from ml_collections import ConfigDict

from bon_jax import parallel
from bon_jax.models import get_config, init_params, make_model
from bon_jax.models.checkpoints import load_checkpoint
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.stage_cache import stage
from bon_jax.tokenizer import Tokenizer, sequence_batch
from bon_jax.train.checkpoint import load_params, save_params
from bon_jax.train.lm import sft_loss, take_rows, trim_width
from bon_jax.train.loop import LoopConfig, run_loop
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step


def task_corpus(task, split: str = "train"):
    """Texts to train a tokenizer on: the task's own corpus, else prompt + reference of each example."""
    if hasattr(task, "corpus"):
        return task.corpus(split)
    return (ex.prompt + (ex.reference or "") for ex in task.examples(split))


def tokenizer_stage(ctx: RunContext):
    c = ctx.config
    st = stage(ctx.cache_root, "tokenizer", c.task, c.tokenizer)
    if c.tokenizer.path:
        if c.tokenizer.path.endswith(".gguf"):
            return Tokenizer.from_gguf(c.tokenizer.path), st
        return Tokenizer.load(c.tokenizer.path), st
    if c.model.checkpoint.endswith(".gguf"):
        return Tokenizer.from_gguf(c.model.checkpoint), st  # the vocabulary inside the GGUF
    if st.claim():
        texts = itertools.islice(task_corpus(ctx.task), c.tokenizer.max_corpus_texts)
        tok = Tokenizer.train(texts, vocab_size=c.tokenizer.vocab_size, model_type=c.tokenizer.model_type)
        tok.save(st.file("tokenizer.model"))
        st.mark_done({"vocab_size": tok.vocab_size})
    return Tokenizer.load(st.file("tokenizer.model")), st


def model_config(model: ConfigDict, tokenizer):
    """The `ModelConfig` of a config's model section (`model.name` with `model.overrides`)."""
    return get_config(model.name, vocab_size=tokenizer.vocab_size, dtype=model.dtype, **model.overrides.to_dict())


def encode_examples(tokenizer, examples, width: int) -> dict[str, np.ndarray]:
    """All (prompt, reference) pairs as one right-padded `[num_examples, width]` table."""
    return sequence_batch(tokenizer, [e.prompt for e in examples], [e.reference for e in examples], width)


def epoch_batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of step `step`'s batch: consecutive slices of a seeded permutation per epoch."""
    per_epoch = num_examples // batch_size
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return perm[k * batch_size : (k + 1) * batch_size]


def sharded_step(step_fn, state, mesh, batch_ndims: dict[str, int]):
    """jit `step_fn` with the state FSDP-sharded, the batch split over the data axes, the state donated."""
    state_sh = parallel.param_sharding(state, mesh)
    batch_sh = {k: parallel.batch_sharding(mesh, nd) for k, nd in batch_ndims.items()}
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, parallel.replicated(mesh)),
        donate_argnums=0,
    )
    return jitted, jax.device_put(state, state_sh)


def base_policy_stage(
    ctx: RunContext,
    tokenizer,
    tok_stage,
    *,
    model: ConfigDict | None = None,
    sft: ConfigDict | None = None,
    stop_after: int | None = None,
):
    """Returns (model_cfg, params, stage). Trains by SFT unless the stage is cached.

    `model` and `sft` (sections shaped like the config's, which they default to) train another language
    model the same way, e.g. a verifier's own backbone: its stage is the one a run with those sections would
    make, so the two share it.
    """
    c = ctx.config
    model = c.model if model is None else model
    sft = c.sft if sft is None else sft
    st = stage(ctx.cache_root, "base_policy", tok_stage.key, c.task, model, sft, c.seed)
    cfg = model_config(model, tokenizer)
    params_file = st.file("params")
    if not st.claim():  # done, or produced meanwhile by another run sharing the cache
        return cfg, load_params(params_file, cfg), st
    if model.checkpoint:
        params = pretrained_params(ctx, cfg, model)
        if sft.steps == 0:
            st.release()  # nothing to produce: the pretrained weights are the base policy
            return cfg, params, st
    else:
        params = None
    ctx.require_training("base_policy")
    examples = ctx.task.examples("train")
    if not examples or examples[0].reference is None:
        raise ValueError(f"task {c.task.name!r} has no reference solutions to train a base policy on")
    table = encode_examples(tokenizer, examples, model.max_len)
    if sft.batch_size > len(examples):
        raise ValueError(f"sft.batch_size={sft.batch_size} exceeds the {len(examples)} training examples")
    lm = make_model(cfg)
    opt = adamw(sft.lr, sft.steps, warmup=sft.warmup, weight_decay=sft.weight_decay, decay="cosine")
    if params is None:
        params = parallel.sharded_init(lambda r: init_params(cfg, r), ctx.rng("base_policy"), ctx.mesh)
    state = TrainState.create(params, opt)
    step_fn, state = sharded_step(
        make_update_step(sft_loss(lm), opt),
        state,
        ctx.mesh,
        {"tokens_BT": 2, "valid_BT": 2, "target_BT": 2},
    )
    width = trim_width(table["valid_BT"])

    def batch_fn(step, state):
        # Each batch is cut to its own longest row (a multiple of 16): a handful of static shapes, each
        # compiled once, and no compute spent on padding.
        idx = epoch_batch_indices(len(examples), sft.batch_size, c.seed, step)
        return take_rows({k: table[k] for k in ("tokens_BT", "valid_BT", "target_BT")}, idx)

    loop = LoopConfig(
        sft.steps, c.checkpoint.every, c.checkpoint.keep, c.log_every, c.rl.max_bad_steps, "sft"
    )
    state = run_loop(st.path, state, step_fn, batch_fn, loop, stop_after=stop_after)
    save_params(params_file, state.params)
    st.mark_done({"steps": sft.steps, "truncated": int(table["truncated_B"].sum()), "width": width})
    return cfg, state.params, st


def pretrained_params(ctx: RunContext, cfg, model: ConfigDict):
    """`model.checkpoint` (a Gemma release, HF safetensors, GGUF or bon_jax params) onto the run's mesh."""
    print(f"[bon_jax] loading {model.checkpoint} ({model.checkpoint_format})")
    return load_checkpoint(model.checkpoint, cfg, format=model.checkpoint_format, mesh=ctx.mesh)
