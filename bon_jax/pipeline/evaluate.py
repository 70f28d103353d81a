"""Evaluation of a policy on held-out prompts: M samples per prompt, BoN@k / pass@k / maj@k with
bootstrap confidence intervals over prompts, KL to the reference, entropy and distinct answers.

Every policy is evaluated on the same prompts with the same random keys (common random numbers), so the
difference between the base and the tuned policy is not blurred by sampling noise in the prompts drawn.

    BoN@k  = E[R(best-scored of k samples)]    unbiased from M >= k samples (bon_jax.metrics.bon_at_k)
    pass@k = P(some of k samples has R = 1)     (binary rewards only)
    maj@k  = E[R(majority answer of k)]         (tasks with final answers)
    KL     = mean over samples of log pi(y) - log pi_ref(y)   (k1, sequence level; both at the sampling
             temperature tau: pi = softmax(logits / tau))
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from bon_jax import metrics
from bon_jax.pipeline.rollouts import draw_graded, make_sequence_logp


def evaluate_policy(
    params,
    model_cfg,
    ref_params,
    tokenizer,
    task,
    scorer,
    examples,
    rng,
    *,
    m: int,
    ks,
    max_new_tokens: int,
    temperature: float,
    max_prompt_len: int,
    prompts_per_call: int = 8,
    bootstrap: int = 1000,
) -> dict:
    seq_logp = make_sequence_logp(model_cfg, temperature)
    # The base policy is its own reference (`ref_params is params`, or None): its KL is 0 by definition,
    # and the teacher-forced reference pass, as costly as the sampling, is skipped.
    is_reference = ref_params is None or ref_params is params
    rewards, scores, answers, logp, ref_logp, lengths = [], [], [], [], [], []
    for start in tqdm(range(0, len(examples), prompts_per_call), desc="eval", dynamic_ncols=True):
        chunk = examples[start : start + prompts_per_call]
        prompts_BT, plen_B = tokenizer.encode_batch(
            [e.prompt for e in chunk], pad_side="left", add_bos=True, max_len=max_prompt_len, truncate=True
        )
        g = draw_graded(
            params,
            model_cfg,
            tokenizer,
            task,
            scorer,
            chunk,
            prompts_BT,
            plen_B,
            m,
            rng,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            prompt_ids_B=np.arange(start, start + len(chunk)),
        )
        rewards.append(g.rewards_BN)
        scores.append(g.scores_BN)
        answers.extend(list(row) for row in g.answers_BN)
        logp.append(g.logp_BN)
        if is_reference:
            ref_logp.append(g.logp_BN)
        else:
            ref_logp.append(np.asarray(seq_logp(ref_params, prompts_BT, plen_B, g.tokens_BNT, g.lengths_BN)))
        lengths.append(g.lengths_BN)
    R = np.concatenate(rewards)
    S = np.concatenate(scores)
    metrics.require_finite_scores(S, [e.id for e in examples])
    # Equivalent answers ("1.5", "\\frac{3}{2}") vote together: ids are classes of the task's answer equivalence.
    ids = metrics.answers_to_ids(answers, equivalent=task.same_answer)
    kl_B = (np.concatenate(logp) - np.concatenate(ref_logp)).mean(1)
    binary = bool(np.isin(R, (0.0, 1.0)).all())
    has_answers = bool((ids >= 0).any())
    per_prompt = {
        "mean_reward": R.mean(1),
        "kl": kl_B,
        "neg_logp": -np.concatenate(logp).mean(1),
        "distinct_answers": np.asarray(metrics.distinct_answers(ids), np.float64),
        "length": np.concatenate(lengths).mean(1),
    }
    out = {"num_prompts": len(examples), "m": m, "binary_reward": binary}
    for name in ("bon_at_k", "pass_at_k", "maj_at_k"):
        out[name] = {}
    for k in ks:
        per_prompt[f"bon_at_{k}"] = np.asarray(metrics.bon_at_k(S, R, k), np.float64)
        if binary:
            per_prompt[f"pass_at_{k}"] = np.asarray(metrics.pass_at_k(m, (R > 0).sum(1), k), np.float64)
        if has_answers:
            per_prompt[f"maj_at_{k}"] = np.asarray(metrics.maj_at_k(ids, R, k), np.float64)
    for key, values in per_prompt.items():
        ci = metrics.bootstrap_ci(values, rng=0, num_resamples=bootstrap)
        entry = {"mean": float(ci.mean), "low": float(ci.low), "high": float(ci.high)}
        family, _, k = key.rpartition("_at_")
        if family and k.isdigit():
            out[f"{family}_at_k"][k] = entry
        else:
            out[key] = entry
    out["per_prompt"] = {k: np.asarray(v).tolist() for k, v in per_prompt.items()}
    return out
