"""Evaluation of a policy on held-out prompts: M samples per prompt, BoN@k / pass@k / maj@k with
bootstrap confidence intervals over prompts, KL to the reference, entropy and distinct answers.

Every policy is evaluated on the same prompts with the same random keys (common random numbers), so the
difference between the base and the tuned policy is not blurred by sampling noise in the prompts drawn.

    BoN@k  = E[R(best-scored of k samples)]    unbiased from M >= k samples (bon_jax.metrics.bon_at_k)
    pass@k = P(some of k samples has R = 1)     (binary rewards only)
    maj@k  = E[R(majority answer of k)]         (tasks with final answers)
    KL     = mean over samples of log pi(y) - log pi_ref(y)   (k1, sequence level; both at the sampling
             temperature tau: pi = softmax(logits / tau)); kl_k3: the same mean of k3 summed over tokens,
             sum_t (r_t - 1 - log r_t), r_t = pi_ref(y_t | y_<t) / pi(y_t | y_<t) (`rollouts.kl_estimates`)
    KL(BoN@k || pi) = plug-in KL of Best-of-k (by score) over the policy's own M samples, ties included
             (`metrics.bon_kl_at_k`): what BoN sampling from this policy moves away from it
    neg_logp = mean over samples of -log pi(y): a Monte Carlo estimate of the sequence entropy H(pi(.|x))
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
from tqdm.auto import tqdm

from bon_jax import metrics
from bon_jax.pipeline.rollouts import draw_graded, kl_estimates, make_sequence_logp
from bon_jax.train.loop import Preempted
from bon_jax.train.preemption import PreemptionGuard


def evaluate_policy(
    params,
    model_cfg,
    ref_params,
    tokenizer,
    task,
    verifier,
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
    chunk_dir: str | None = None,
) -> dict:
    """The evaluation report (module docstring) of `params` on `examples`.

    With `chunk_dir`, each chunk of `prompts_per_call` prompts is saved there once sampled and graded and is
    read back instead of sampled again, and a SIGTERM raises `Preempted` once the chunk in flight is saved:
    a rerun resumes (a chunk's samples depend on its prompts' ids only, so the report is the same).
    """
    token_logp = make_sequence_logp(model_cfg, temperature, per_token=True)
    # The base policy is its own reference (`ref_params is params`, or None): its KL is 0 by definition,
    # and the teacher-forced reference pass, as costly as the sampling, is skipped.
    is_reference = ref_params is None or ref_params is params

    def sample_part(chunk, start) -> dict:
        prompts_BT, plen_B = tokenizer.encode_batch(
            [e.prompt for e in chunk], pad_side="left", add_bos=True, max_len=max_prompt_len, truncate=True
        )
        g = draw_graded(
            params,
            model_cfg,
            tokenizer,
            task,
            verifier,
            chunk,
            prompts_BT,
            plen_B,
            m,
            rng,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            prompt_ids_B=np.arange(start, start + len(chunk)),
        )
        if is_reference:
            ref_token_logp_BMT = g.token_logp_BMT
        else:
            ref_token_logp_BMT = np.asarray(token_logp(ref_params, prompts_BT, plen_B, g.tokens_BMT, g.lengths_BM))
        return {
            "rewards_BM": np.asarray(g.rewards_BM),
            "scores_BM": np.asarray(g.scores_BM),
            "answers_BM": [list(row) for row in g.answers_BM],
            "logp_BM": np.asarray(g.logp_BM),
            "ref_logp_BM": np.asarray(ref_token_logp_BMT).sum(-1),
            "kl_k3_BM": kl_estimates(g.token_logp_BMT, ref_token_logp_BMT, g.lengths_BM)[1],
            "lengths_BM": np.asarray(g.lengths_BM),
        }

    rewards, scores, answers, logp, ref_logp, lengths, kl_k3 = [], [], [], [], [], [], []
    if chunk_dir:
        os.makedirs(chunk_dir, exist_ok=True)
    with PreemptionGuard() if chunk_dir else contextlib.nullcontext() as guard:
        for start in tqdm(range(0, len(examples), prompts_per_call), desc="eval", dynamic_ncols=True):
            path = os.path.join(chunk_dir, f"prompts_{start:06d}.npz") if chunk_dir else None
            if path and os.path.exists(path):
                part = _load_part(path)
            else:
                part = sample_part(examples[start : start + prompts_per_call], start)
                if path:
                    _save_part(path, part)
            rewards.append(part["rewards_BM"])
            scores.append(part["scores_BM"])
            answers.extend(part["answers_BM"])
            logp.append(part["logp_BM"])
            ref_logp.append(part["ref_logp_BM"])
            kl_k3.append(part["kl_k3_BM"])
            lengths.append(part["lengths_BM"])
            if guard is not None and guard.requested():
                done = min(start + prompts_per_call, len(examples))
                raise Preempted(f"eval: {done} of {len(examples)} prompts evaluated; restart to resume")

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
        "kl_k3": np.concatenate(kl_k3).mean(1),
        "neg_logp": -np.concatenate(logp).mean(1),
        "distinct_answers": np.asarray(metrics.distinct_answers(ids), np.float64),
        "length": np.concatenate(lengths).mean(1),
    }
    out = {"num_prompts": len(examples), "m": m, "binary_reward": binary}
    for name in ("bon_at_k", "pass_at_k", "maj_at_k", "bon_kl_at_k"):
        out[name] = {}
    for k in ks:
        per_prompt[f"bon_at_{k}"] = np.asarray(metrics.bon_at_k(S, R, k), np.float64)
        per_prompt[f"bon_kl_at_{k}"] = metrics.bon_kl_at_k(S, k)
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


def _save_part(path: str, part: dict) -> None:
    """One evaluated chunk: its arrays, and its answers (strings or None) as JSON; written atomically."""
    arrays = {k: v for k, v in part.items() if k != "answers_BM"}
    with open(path + ".tmp", "wb") as f:
        np.savez(f, answers_json=np.asarray(json.dumps(part["answers_BM"])), **arrays)
    os.replace(path + ".tmp", path)


def _load_part(path: str) -> dict:
    with np.load(path) as saved:
        part = {k: saved[k] for k in saved.files if k != "answers_json"}
        part["answers_BM"] = json.loads(str(saved["answers_json"]))
    return part
