"""The Best-of-N-aware fine-tuning stage: sample [B, M] -> grade and score -> objective -> AdamW.

Per step t (all randomness from fold_in(stage key, t), prompts from a grain pipeline whose state is
checkpointed, so a restarted run repeats exactly the steps an uninterrupted one takes). What is built is
what the objective's `ObjectiveSpec` declares (`objectives.spec(rl.objective)`, docs/objectives.md):

    prompts_B            <- next batch of training prompts; with rl.dynamic_sampling = k, up to k further
                         batches are drawn and graded and the B kept are those whose M rewards differ
                         (`dynamic_sampling.draw_informative`)
    y_BM ~ pi_theta      (sampler: prefill once, cache tiled M times); ~ pi_ref instead where the spec's
                         samples are the reference's (bon_distill_sft: SFT on Best-of-N samples of pi_ref)
    R_BM, s_BM           <- task.grade (text), verifier scores
    logp_ref_BM          <- reference policy (the base policy, frozen): KL objectives (rl.beta != 0) every
                         step; without a KL term only for the KL metrics, every log_every steps (from the first)
    logp_anchor_BM       <- EMA anchor (Chow et al.), if rl.anchor_ema > 0 (both computed once per distinct
                         completion of a prompt: `update_rows.distinct_logp`)
    r_ref_BK, s_ref_BK   <- K samples of pi_ref per prompt, graded, drawn once per prompt and cached on disk
                         (`rollouts.ReferenceSamples`; vbon / vbon_bound / bond CDFs)
    demonstrations       <- the prompt's reference solution (sft, bon_sft), or the Best-of-N winner of N
                         fresh samples of pi_ref (bond's forward KL part)
    values_B             <- a learned value of the prompt (rl.value_baseline; bon_rl_v / bon_rl_s): the
                         policy backbone with a scalar head, regressed on the prompt's BoN reward estimate
    theta <- AdamW(theta, grad of objective(logp_theta_BM, rollout))      (jitted, donated, guarded; where
                         each distinct completion that can carry weight is differentiated once:
                         `update_rows`)
    anchor <- EMA(anchor, theta)

Logged: the objective's metrics under their own names, and what the host measures of the samples under
`sample/...` (never overwriting an objective's metric of the same meaning but another estimator).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from bon_jax import objectives, parallel
from bon_jax.data.pipeline import PromptBatches
from bon_jax.models.masks import valid_from_lengths
from bon_jax.pipeline import dynamic_sampling
from bon_jax.pipeline.context import RunContext
from bon_jax.pipeline.policy import load_params, save_params
from bon_jax.pipeline.rollouts import (
    ReferenceSamples,
    bon_winners,
    completion_width,
    cut_completions,
    draw_graded,
    make_sequence_logp,
    with_scores,
)
from bon_jax.pipeline.stage_cache import stage
from bon_jax.pipeline.update_rows import bucket_rows, distinct_logp, gradient_rows, put_rows, take_rows
from bon_jax.sampling import sequence_logprobs
from bon_jax.train.loop import LoopConfig, run_loop
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_two_program_step, make_update_step
from bon_jax.verifiers.base import Samples, Verifier
from bon_jax.verifiers.learned import init_verifier_params, sequence_logits

# Samples of pi_ref per prompt per sampling call when filling the reference-sample cache: fixed (not rl.m),
# so that sweep points with different M draw the same reference samples and share the cache.
REF_CHUNK = 32


@flax.struct.dataclass
class RLState:
    train: TrainState
    anchor: dict | None
    value: TrainState | None = None  # the value baseline's model (rl.value_baseline)

    @property
    def step(self):
        return self.train.step


def rl_loss(model_cfg, objective: str, *, n: int, beta: float, options: dict, temperature: float = 1.0):
    """`loss(params, batch)`: the objective on log pi_tau of the batch's samples, tau = `temperature`
    (the policy that is sampled is the one whose log-probs are differentiated: on-policy at any tau).

    With `batch["update_rows_BK"]` only those rows' log-probs are computed and differentiated; each sample
    takes its row's (`batch["update_source_BM"]`), or where that is -1 its `batch["sampled_logp_BM"]`, a
    constant, which is exact where its weight is 0 (`pipeline.update_rows`).
    """
    loss_fn = objectives.get(objective)

    def loss(params, batch):
        tokens, lengths = batch["tokens_BMT"], batch["lengths_BM"]
        rows_BK = batch.get("update_rows_BK")
        if rows_BK is not None:  # only these rows carry gradient (pipeline.update_rows)
            tokens, lengths = take_rows(tokens, rows_BK), take_rows(lengths, rows_BK)
        tok_logp_BKT = sequence_logprobs(
            params,
            model_cfg,
            batch["prompt_tokens_BT"],
            tokens,
            completion_lengths_BM=lengths,
            prompt_lengths_B=batch["prompt_lengths_B"],
            padding_side="left",
            temperature=temperature,
        )
        logp_BK = tok_logp_BKT.sum(-1)
        if rows_BK is not None:
            logp_BM = put_rows(batch["sampled_logp_BM"], batch["update_source_BM"], logp_BK)
        else:
            logp_BM = logp_BK
        extra = {"anchor_coef": batch["anchor_coef"]} if "anchor_coef" in batch else {}
        if "values_B" in batch:
            extra["values_B"] = jax.lax.stop_gradient(batch["values_B"])
        if "expert_tokens_BT" in batch:
            extra["expert_logp_B"] = sequence_logprobs(
                params,
                model_cfg,
                batch["prompt_tokens_BT"],
                batch["expert_tokens_BT"][:, None],
                completion_lengths_BM=batch["expert_lengths_B"][:, None],
                prompt_lengths_B=batch["prompt_lengths_B"],
                padding_side="left",
                temperature=temperature,
            ).sum(-1)[:, 0]
        value, metrics = loss_fn(logp_BM, batch["rollout"], n=n, beta=beta, **extra, **options)
        metrics = dict(metrics, logp=jnp.mean(logp_BK))  # of the differentiated rows
        return value, metrics

    return loss


def value_baseline(model_cfg, *, lr: float, steps: int, warmup: int = 0, max_grad_norm: float | None = 1.0):
    """Chow et al.'s learned value b(x) for BoN-RL-V (docs/objectives.md, "Value baseline").

    The value model is the policy's backbone with a scalar head (`ScalarHeadTransformer`), started from the
    base policy with a zero head (b = 0 at step 0), reading the prompt only: b(x) = the head's value at the
    prompt's last token. It is regressed by AdamW (`lr`, Chow et al.: 1e-5) on the squared error to the
    prompt's Best-of-N reward estimate sum_j u_j R_j (`objectives.bon_winner_weights`), so that b(x) tracks
    V(x) = E_{pi_BoN}[R | x] as the policy moves. Returns `(init, predict, update)`:
        init(base_params, rng) -> TrainState
        predict(params, prompt_tokens_BT, prompt_lengths_B) -> values_B          (left-padded prompts)
        update(state, {"prompt_tokens_BT", "prompt_lengths_B", "target_B"}) -> (state, metrics)
    metrics: value/loss (the mean squared error before the update), value/mean, value/target_mean.
    """
    opt = adamw(lr, steps, warmup=warmup, max_grad_norm=max_grad_norm)

    def init(base_params, rng):
        params, _ = init_verifier_params(model_cfg, rng, init_params_from=base_params, zero_head=True)
        return TrainState.create(params, opt)

    def predict(params, prompt_tokens_BT, prompt_lengths_B):
        valid_BT = valid_from_lengths(prompt_lengths_B, prompt_tokens_BT.shape[1], padding_side="left")
        return sequence_logits(params, model_cfg, prompt_tokens_BT, valid_BT, pooling="last")

    def loss(params, batch):
        values_B = predict(params, batch["prompt_tokens_BT"], batch["prompt_lengths_B"])
        mse = jnp.mean(jnp.square(values_B - batch["target_B"]))
        return mse, {"value/mean": jnp.mean(values_B), "value/target_mean": jnp.mean(batch["target_B"])}

    step = make_update_step(loss, opt)

    def update(state, batch):
        state, metrics = step(state, batch)
        out = {k: v for k, v in metrics.items() if k.startswith("value/")}
        out["value/loss"] = metrics["loss"]
        out["value/grad_norm"] = metrics["grad_norm"]
        return state, out

    return init, predict, update


def reference_sample_stage(ctx: RunContext, base_key: str, verifier_key: str):
    """The stage directory of the cached reference samples (`rollouts.ReferenceSamples`). Keyed by what
    they depend on -- pi_ref, the verifier, the prompts and the sampling settings -- and not by the
    objective, N, M or the learning rate, so the points of a sweep sharing the stage cache share them."""
    c, rl = ctx.config, ctx.config.rl
    sampling = {k: rl[k] for k in ("ref_samples", "temperature", "top_k", "top_p", "max_new_tokens")}
    return stage(
        ctx.cache_root, "reference_samples", base_key, verifier_key, c.task, c.seed, c.model.max_len, sampling,
        REF_CHUNK,
    )


def finetune_stage(
    ctx: RunContext,
    tokenizer,
    model_cfg,
    base_params,
    base_key: str,
    verifier: Verifier,
    verifier_key: str,
    *,
    stop_after: int | None = None,
):
    """Returns (tuned params, stage)."""
    c = ctx.config
    rl = c.rl
    st = stage(ctx.cache_root, "finetune", base_key, verifier_key, _stage_section(c.rl), c.seed)
    if not st.claim():  # done, or produced meanwhile by another run sharing the cache
        return load_params(st.file("params"), model_cfg), st
    ctx.require_training("finetune")
    options = dict(rl.options.to_dict())
    spec = objectives.spec(rl.objective)
    selection = spec.selection(options)  # what picks a Best-of-N winner for this objective
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
    use_value = bool(rl.value_baseline)
    if use_value:
        value_init, value_predict, value_update = value_baseline(
            model_cfg, lr=rl.value_lr, steps=rl.steps, warmup=rl.warmup, max_grad_norm=rl.max_grad_norm
        )

    def value_step(value: TrainState, prompt_tokens_BT, prompt_lengths_B, target_B):
        """b(x) of the batch's prompts (before this step's regression, which it then takes)."""
        values_B = value_predict(value.params, prompt_tokens_BT, prompt_lengths_B)
        prompts = dict(prompt_tokens_BT=prompt_tokens_BT, prompt_lengths_B=prompt_lengths_B)
        value, metrics = value_update(value, dict(prompts, target_B=target_B))
        return value, values_B, metrics

    # The policy's update compiles its gradient program once per update shape (rows and completion width
    # vary from step to step) and its optimiser (with the anchor's EMA) once; the value model's step once
    # per prompt width. One program would recompile all of it for every shape.
    ema = lambda train, anchor: objectives.ema_update(anchor, train.params, rl.anchor_ema)
    policy_step = make_two_program_step(loss, opt, accum=rl.grad_accum, then=ema if use_anchor else None)
    jitted_value_step = jax.jit(value_step, donate_argnums=0)

    def step_fn(state: RLState, batch):
        host = batch.pop("host")  # host measurements stay on the host: their keys may vary by step
        value, value_metrics = state.value, {}
        if use_value:
            value, batch["values_B"], value_metrics = jitted_value_step(
                value, batch["prompt_tokens_BT"], batch["prompt_lengths_B"], batch.pop("value_target_B")
            )
        train, anchor, metrics = policy_step(state.train, state.anchor, batch)
        metrics = {**metrics, **value_metrics}
        clash = sorted(metrics.keys() & host.keys())
        if clash:  # a host measurement must never replace the objective's estimate of the same name
            raise ValueError(f"host metrics {clash} would overwrite the objective's metrics of the same name")
        return RLState(train, anchor, value), {**metrics, **host}

    base_params = jax.device_put(base_params, parallel.param_sharding(base_params, ctx.mesh))
    # Fresh buffers for the trained copies: the step donates its state, the reference must survive.
    fresh = lambda: jax.tree.map(jnp.copy, base_params)
    value0 = value_init(base_params, ctx.rng("value_baseline")) if use_value else None
    state = RLState(TrainState.create(fresh(), opt), fresh() if use_anchor else None, value0)
    state = jax.device_put(state, parallel.param_sharding(state, ctx.mesh))
    seq_logp = make_sequence_logp(model_cfg, rl.temperature)
    key = ctx.rng("finetune")
    if spec.reference_samples:
        ref_st = reference_sample_stage(ctx, base_key, verifier_key)
        ref_store = ReferenceSamples(ref_st.file("reference_samples.npz"), rl.ref_samples)
        ref_key = ctx.rng("reference_samples")  # not step-dependent: a prompt's samples are fixed

    # The reference's log-probs enter the loss only through its KL term (beta != 0). Without it they feed
    # only the KL-to-reference metrics, so the reference pass (a forward, about a tenth of the default's step)
    # runs on the first step of every log_every and on the last, and its metrics are host ones
    # (sample/kl_ref_k1, _k3).
    ref_in_loss = spec.kl_terms and float(rl.beta) != 0.0
    kl_metric_step = lambda step: step % c.log_every == 0 or step == rl.steps - 1

    # The verifier scores only what selects by it, and only the prompts a step keeps (its forward costs more
    # than sampling the short completions; issue 14). Reference and pi_ref Best-of-N draws are scored.
    score_rollout = selection == "score"
    # Choosing the verifier's misses needs every drawn prompt's scores, not only the kept prompts'.
    score_every_draw = rl.dynamic_sampling_target == "verifier_misses"

    def batch_fn(step, state: RLState):
        k_sample, k_bon, k_tie = jax.random.split(jax.random.fold_in(key, step), 3)
        draw_prompts = lambda pb, params, m, k, score=True: draw_graded(
            params,
            model_cfg,
            tokenizer,
            task,
            verifier,
            [examples[i] for i in pb["index_B"]],
            pb["prompt_tokens_BT"],
            pb["prompt_lengths_B"],
            m,
            k,
            max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature,
            top_k=rl.top_k,
            top_p=rl.top_p,
            prompt_ids_B=pb["index_B"],
            score=score,
        )
        # Whose samples the objective's rollout holds (bon_distill_sft: pi_ref's, Amini et al.'s baseline).
        policy = base_params if spec.samples == "reference" else state.train.params
        # The step's prompts: the next batch, or with rl.dynamic_sampling the informative prompts of up to
        # that many further batches (every field of the kept prompts' samples selected together).
        pb, g, host = dynamic_sampling.draw_informative(
            lambda: next(data["it"]),
            lambda batch, k: draw_prompts(batch, policy, rl.m, k, score=score_every_draw),
            k_sample,
            rounds=rl.dynamic_sampling,
            chunk=extra_round_chunk(rl.batch_size),
            pad_id=tokenizer.pad_id,
            target=rl.dynamic_sampling_target,
            miss_share=rl.dynamic_sampling_miss_share,
        )
        ex_B = [examples[i] for i in pb["index_B"]]
        draw = lambda params, m, k: draw_prompts(pb, params, m, k)
        if score_rollout and g.scores_BM is None:
            g = with_scores(g, verifier, ex_B)
        # Cut to the longest completion's bucket: the update and the reference pass cost what the samples
        # hold, not max_new_tokens of padding.
        g = cut_completions(g, completion_width(g.lengths_BM, rl.max_new_tokens))
        select_BM = g.rewards_BM if selection == "reward" else g.scores_BM
        args = (g.prompt_tokens_BT, g.prompt_lengths_B, g.tokens_BMT, g.lengths_BM)
        rollout = dict(rewards_BM=g.rewards_BM, scores_BM=g.scores_BM, lengths_BM=g.lengths_BM)
        host |= {
            "sample/reward_mean": float(g.rewards_BM.mean()),
            "sample/pass_at_M": float((g.rewards_BM.max(1) > 0).mean()),
            "sample/length": float(g.lengths_BM.mean()),
            "sample/finished": float(g.finished_BM.mean()),
        }
        if g.scores_BM is not None:
            host["sample/score_mean"] = float(g.scores_BM.mean())
        if select_BM is not None:
            host["sample/bon_reward_argmax_M"] = float(_bon_reward(select_BM, g.rewards_BM))
        if spec.kl_terms:  # samples of pi: KL(pi || pi_ref) is estimable from them
            if ref_in_loss or kl_metric_step(step):
                ref_logp_BM = np.asarray(distinct_logp(seq_logp, base_params, *args))
                k1_BM = g.logp_BM - ref_logp_BM
                host["sample/kl_ref_k1"] = float(np.mean(k1_BM))
                host["sample/kl_ref_k3"] = float(np.mean(np.expm1(-k1_BM) + k1_BM))
                if ref_in_loss:
                    rollout["ref_logp_BM"] = ref_logp_BM
            if use_anchor:
                rollout["anchor_logp_BM"] = distinct_logp(seq_logp, state.anchor, *args)
        if spec.reference_samples:
            rollout["ref_rewards_BK"], rollout["ref_scores_BK"] = ref_store.lookup(
                pb["index_B"], lambda: _draw_reference(draw, base_params, rl.ref_samples, ref_key)
            )
        expert = {}
        if spec.demonstrations == "dataset":
            expert["expert_tokens_BT"], expert["expert_lengths_B"] = _demonstrations(
                tokenizer, ex_B, rl.max_new_tokens
            )
            if spec.selects_by == "score":
                # The demonstrations are correct by definition: reward 1.
                demos = Samples(texts_BM=[[e.reference] for e in ex_B], rewards_BM=np.ones((len(ex_B), 1), np.float32))
                rollout["expert_scores_B"] = verifier.score(ex_B, demos)[:, 0]
        elif spec.demonstrations == "bon_of_reference":
            # One draw of pi_BoN(pi_ref, selection, N): the winner of N fresh samples of pi_ref.
            bon = draw(base_params, rl.n, k_bon)
            win_B = bon_winners(bon.rewards_BM if selection == "reward" else bon.scores_BM, k_tie)
            expert["expert_tokens_BT"], expert["expert_lengths_B"] = _fit_width(
                bon.tokens_BMT[np.arange(len(win_B)), win_B], bon.lengths_BM[np.arange(len(win_B)), win_B],
                rl.max_new_tokens,
            )
            host["sample/bon_of_reference_reward"] = float(bon.rewards_BM[np.arange(len(win_B)), win_B].mean())
        rollout = objectives.Rollout(**rollout)
        objectives.validate_rollout(rollout)
        out = {
            "prompt_tokens_BT": g.prompt_tokens_BT,
            "prompt_lengths_B": g.prompt_lengths_B,
            "tokens_BMT": g.tokens_BMT,
            "lengths_BM": g.lengths_BM,
            "rollout": rollout,
            **expert,
            "host": host,
        }
        # The update differentiates each distinct completion that can carry weight once (update_rows).
        rows = bucket_rows(
            gradient_rows(spec, select_BM, rl.n, beta=rl.beta, anchored=use_anchor), g.tokens_BMT, g.lengths_BM
        )
        if rows is not None:
            out["update_rows_BK"], out["update_source_BM"] = rows
            out["sampled_logp_BM"] = g.logp_BM.astype(np.float32)
        if use_value:
            # The regression target: the unbiased BoN@N estimate of each prompt, sum_j u_j R_j.
            u_BM = objectives.bon_winner_weights(jnp.asarray(select_BM), jnp.ones(select_BM.shape, bool), rl.n)
            out["value_target_B"] = np.asarray(jnp.sum(u_BM * g.rewards_BM, axis=-1), np.float32)
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
        step_fn,
        batch_fn,
        loop,
        data_state=lambda: data["it"].get_state(),
        restore_data_state=lambda s: data.update(it=batches.iterator(s or None)),
        stop_after=stop_after,
    )
    save_params(st.file("params"), state.train.params)
    st.mark_done({"steps": rl.steps, "objective": rl.objective, "n": rl.n})
    return state.train.params, st


def extra_round_chunk(batch_size: int) -> int:
    """Prompts per draw of a dynamic-sampling round after the first: a quarter of the batch. The default
    step finds about 85% of round 0 informative and needs 2-3 more prompts of 16; quarters draw a fraction
    of the whole round and change no sample or choice (pipeline/dynamic_sampling.py)."""
    return max(1, batch_size // 4)


def _stage_section(rl) -> dict:
    """The rl section as the stage's cache key reads it: `dynamic_sampling_target` and `_miss_share` only
    where they change what is trained (dynamic sampling on, and a target other than the first one), so a
    cached stage of an earlier run stays valid."""
    section = rl.to_dict()
    if not section.get("dynamic_sampling") or section.get("dynamic_sampling_target") == "mixed_rewards":
        section.pop("dynamic_sampling_target", None)
        section.pop("dynamic_sampling_miss_share", None)
    return section


def _draw_reference(draw, ref_params, k: int, ref_key):
    """`[B, K]` rewards and scores of K samples of pi_ref per prompt, drawn REF_CHUNK at a time."""
    chunks = [draw(ref_params, REF_CHUNK, jax.random.fold_in(ref_key, c)) for c in range(-(-k // REF_CHUNK))]
    rewards_BK = np.concatenate([g.rewards_BM for g in chunks], axis=1)[:, :k]
    scores_BK = np.concatenate([g.scores_BM for g in chunks], axis=1)[:, :k]
    return rewards_BK, scores_BK


def _fit_width(tokens_BT, lengths_B, width: int):
    """Completion tokens `[B, width]` (zero-padded or cut) and their lengths, cut at `width`."""
    out = np.zeros((tokens_BT.shape[0], width), np.int32)
    w = min(width, tokens_BT.shape[1])
    out[:, :w] = tokens_BT[:, :w]
    lengths_B = np.minimum(np.asarray(lengths_B, np.int32), width)
    return np.where(np.arange(width) < lengths_B[:, None], out, 0), lengths_B


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
    """Reward of the top-scored sample of each prompt (first on ties) among all M, averaged: a cheap
    progress metric, not the objective's BoN@N estimate (logged as `sample/bon_reward_argmax_M`)."""
    best = np.argmax(scores_BM, axis=1)
    return rewards_BM[np.arange(len(best)), best].mean()


__all__ = ["RLState", "finetune_stage", "reference_sample_stage", "rl_loss", "value_baseline"]
