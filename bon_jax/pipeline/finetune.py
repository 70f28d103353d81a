"""The Best-of-N-aware fine-tuning stage: sample [B, M] -> grade and score -> objective -> AdamW.

Per step t (all randomness from fold_in(stage key, t), prompts from a grain pipeline whose state is
checkpointed, so a restarted run repeats exactly the steps an uninterrupted one takes):

    prompts_B            <- next batch of training prompts
    y_BM ~ pi_theta      (sampler: prefill once, cache tiled M times)
    R_BM, s_BM           <- task.grade (text), verifier scores
    logp_ref_BM          <- reference policy (the base policy, frozen): KL metrics and KL objectives
    logp_anchor_BM       <- EMA anchor (Chow et al.), if rl.anchor_ema > 0
    r_ref_BK             <- K reference samples per prompt, graded (vbon / vbon_bound / bond CDFs)
    theta <- AdamW(theta, grad of objective(logp_theta_BM, rollout))      (jitted, donated, guarded)
    anchor <- EMA(anchor, theta)
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bon_jax import objectives, parallel
from bon_jax.data.pipeline import PromptBatches
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.loop import LoopConfig, run_loop
from bon_jax.pipeline.policy import load_params, save_params
from bon_jax.pipeline.rollouts import draw_graded, make_sequence_logp
from bon_jax.pipeline.stage_cache import stage
from bon_jax.sampling import sequence_logprobs
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step

# Objectives that need K reference samples per prompt (CDF of the reward under pi_ref).
NEEDS_REF_SAMPLES = ("vbon", "vbon_bound", "bond")
# Imitation objectives: they also take the log-prob of each prompt's demonstration (reference solution).
IMITATION = ("sft", "bon_sft")
# Objectives whose J selects by the ground-truth reward, not the verifier.
SELECTS_BY_REWARD = ("bon_rl_s", "bon_rlb", "bon_rlb_printed", "bon_rlbp", "pkpo")


@flax.struct.dataclass
class RLState:
    train: TrainState
    anchor: dict | None

    @property
    def step(self):
        return self.train.step


def rl_loss(model_cfg, objective: str, *, n: int, beta: float, options: dict, temperature: float = 1.0):
    """`loss(params, batch)`: the objective on log pi_tau of the batch's samples, tau = `temperature`
    (the policy that is sampled is the one whose log-probs are differentiated: on-policy at any tau)."""
    loss_fn = objectives.get(objective)

    def loss(params, batch):
        tok_logp_BMT = sequence_logprobs(
            params,
            model_cfg,
            batch["prompt_tokens_BT"],
            batch["tokens_BMT"],
            completion_lengths_BN=batch["lengths_BM"],
            prompt_lengths_B=batch["prompt_lengths_B"],
            padding_side="left",
            temperature=temperature,
        )
        logp_BM = tok_logp_BMT.sum(-1)
        extra = {"anchor_coef": batch["anchor_coef"]} if "anchor_coef" in batch else {}
        if "expert_tokens_BT" in batch:
            extra["expert_logp_B"] = sequence_logprobs(
                params,
                model_cfg,
                batch["prompt_tokens_BT"],
                batch["expert_tokens_BT"][:, None],
                completion_lengths_BN=batch["expert_lengths_B"][:, None],
                prompt_lengths_B=batch["prompt_lengths_B"],
                padding_side="left",
                temperature=temperature,
            ).sum(-1)[:, 0]
        value, metrics = loss_fn(logp_BM, batch["rollout"], n=n, beta=beta, **extra, **options)
        metrics = dict(metrics, logp=jnp.mean(logp_BM))
        return value, metrics

    return loss


def finetune_stage(
    ctx: RunContext,
    tokenizer,
    model_cfg,
    base_params,
    base_key: str,
    scorer,
    verifier_key: str,
    *,
    stop_after: int | None = None,
):
    """Returns (tuned params, stage)."""
    c = ctx.config
    rl = c.rl
    st = stage(ctx.cache_root, "finetune", base_key, verifier_key, c.rl, c.seed)
    if not st.claim():  # done, or produced meanwhile by another run sharing the cache
        return load_params(st.file("params"), model_cfg), st
    ctx.require_training("finetune")
    options = dict(rl.options.to_dict())
    task = ctx.task
    examples = task.examples("train")
    batches = PromptBatches(
        list(examples),
        tokenizer=tokenizer,
        batch_size=rl.batch_size,
        seed=c.seed,
        add_bos=True,
        max_len=c.model.max_len - rl.max_new_tokens,
        truncate=True,
    )
    data = {"it": batches.iterator()}
    use_anchor = rl.anchor_ema > 0
    opt = adamw(
        rl.lr, rl.steps, warmup=rl.warmup, weight_decay=rl.weight_decay, max_grad_norm=rl.max_grad_norm
    )
    loss = rl_loss(
        model_cfg, rl.objective, n=rl.n, beta=rl.beta, options=options, temperature=rl.temperature
    )
    update = make_update_step(loss, opt, accum=rl.grad_accum)

    def step_fn(state: RLState, batch):
        host = batch.pop("host")
        train, metrics = update(state.train, batch)
        anchor = objectives.ema_update(state.anchor, train.params, rl.anchor_ema) if use_anchor else None
        return RLState(train, anchor), {**metrics, **host}

    base_params = jax.device_put(base_params, parallel.param_sharding(base_params, ctx.mesh))
    # Fresh buffers for the trained copies: the step donates its state, the reference must survive.
    fresh = lambda: jax.tree.map(jnp.copy, base_params)
    state = RLState(TrainState.create(fresh(), opt), fresh() if use_anchor else None)
    state = jax.device_put(state, parallel.param_sharding(state, ctx.mesh))
    jitted_step = jax.jit(step_fn, donate_argnums=0)
    seq_logp = make_sequence_logp(model_cfg, rl.temperature)
    key = ctx.rng("finetune")

    def batch_fn(step, state: RLState):
        pb = next(data["it"])
        ex_B = [examples[i] for i in pb["index_B"]]
        k_sample, k_ref = jax.random.split(jax.random.fold_in(key, step))
        draw = lambda params, m, k: draw_graded(
            params,
            model_cfg,
            tokenizer,
            task,
            scorer,
            ex_B,
            pb["prompt_tokens_BT"],
            pb["prompt_lengths_B"],
            m,
            k,
            max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature,
            top_k=rl.top_k,
            top_p=rl.top_p,
            prompt_ids_B=pb["index_B"],
        )
        g = draw(state.train.params, rl.m, k_sample)
        args = (g.prompt_tokens_BT, g.prompt_lengths_B, g.tokens_BNT, g.lengths_BN)
        ref_logp_BM = seq_logp(base_params, *args)
        rollout = dict(
            rewards_BM=g.rewards_BN,
            scores_BM=g.rewards_BN if rl.objective in SELECTS_BY_REWARD else g.scores_BN,
            ref_logp_BM=ref_logp_BM,
        )
        if use_anchor:
            rollout["anchor_logp_BM"] = seq_logp(state.anchor, *args)
        if rl.objective in NEEDS_REF_SAMPLES:
            ref = draw(base_params, rl.ref_samples, k_ref)
            rollout["ref_rewards_BK"] = ref.rewards_BN
            rollout["ref_scores_BK"] = ref.scores_BN
        expert = {}
        if rl.objective in IMITATION:
            expert["expert_tokens_BT"], expert["expert_lengths_B"] = _demonstrations(
                tokenizer, ex_B, rl.max_new_tokens
            )
            rollout["expert_scores_B"] = scorer(
                ex_B,
                [[e.reference] for e in ex_B],
                None,
                None,
                None,
                None,
                np.ones((len(ex_B), 1), np.float32),
            )[:, 0]
        rollout = objectives.Rollout(**rollout)
        objectives.validate_rollout(rollout)
        out = {
            "prompt_tokens_BT": g.prompt_tokens_BT,
            "prompt_lengths_B": g.prompt_lengths_B,
            "tokens_BMT": g.tokens_BNT,
            "lengths_BM": g.lengths_BN,
            "rollout": rollout,
            **expert,
            "host": {
                "reward": float(g.rewards_BN.mean()),
                "score": float(g.scores_BN.mean()),
                "bon_reward": float(_bon_reward(g.scores_BN, g.rewards_BN)),
                "pass_at_m": float((g.rewards_BN.max(1) > 0).mean()),
                "kl_ref": float(np.mean(g.logp_BN - np.asarray(ref_logp_BM))),
                "length": float(g.lengths_BN.mean()),
                "finished": float(g.finished_BN.mean()),
            },
        }
        if use_anchor:
            out["anchor_coef"] = jnp.float32(
                objectives.anchor_kl_coef(
                    step,
                    start=rl.anchor_kl_start,
                    end=rl.anchor_kl_end,
                    delay=rl.anchor_kl_delay,
                    duration=max(rl.steps - rl.anchor_kl_delay, 1),
                )
            )
        return out

    loop = LoopConfig(
        rl.steps, c.checkpoint.every, c.checkpoint.keep, c.log_every, rl.max_bad_steps, "finetune"
    )
    state = run_loop(
        st.path,
        state,
        jitted_step,
        batch_fn,
        loop,
        data_state=lambda: data["it"].get_state(),
        restore_data_state=lambda s: data.update(it=batches.iterator(s or None)),
        stop_after=stop_after,
    )
    save_params(st.file("params"), state.train.params)
    st.mark_done({"steps": rl.steps, "objective": rl.objective, "n": rl.n})
    return state.train.params, st


def _demonstrations(tokenizer, examples_B, width: int):
    """Reference solutions as completion tokens `[B, width]` (+ eos, cut at `width`) and their lengths."""
    tokens = np.zeros((len(examples_B), width), np.int32)
    lengths = np.zeros((len(examples_B),), np.int32)
    for b, ex in enumerate(examples_B):
        ids = (tokenizer.encode(ex.reference) + [tokenizer.eos_id])[:width]
        tokens[b, : len(ids)] = ids
        lengths[b] = len(ids)
    return tokens, lengths


def _bon_reward(scores_BM, rewards_BM):
    """Reward of the top-scored sample of each prompt (first on ties), averaged: a cheap progress metric."""
    best = np.argmax(scores_BM, axis=1)
    return rewards_BM[np.arange(len(best)), best].mean()


__all__ = ["RLState", "finetune_stage", "rl_loss"]
