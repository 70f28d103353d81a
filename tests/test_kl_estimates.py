"""Evaluation reports two KL(pi || pi_ref) estimates, k1 and k3 summed per token (issue 13, defect 8)."""

import dataclasses

import numpy as np
import pytest

from bon_jax.pipeline.rollouts import kl_estimates


def test_k1_and_k3_are_unbiased_for_the_sequence_kl():
    """Independent reference: T positions with fixed next-token distributions p_t (policy) and q_t (ref); the
    sequence KL is sum_t KL(p_t || q_t) in closed form. Tokens after a sequence's length are ignored."""
    rng = np.random.default_rng(0)
    T, V, S = 3, 5, 200_000
    p = rng.dirichlet(np.ones(V), T)
    q = rng.dirichlet(np.ones(V), T)
    kl = float(np.sum(p * np.log(p / q)))
    tokens = np.stack([rng.choice(V, size=S, p=p[t]) for t in range(T)], axis=-1)  # [S, T]
    logp, logq = np.log(p)[np.arange(T), tokens], np.log(q)[np.arange(T), tokens]
    pad = np.full((S, 2), 7.0)  # garbage past the end, masked by the lengths
    k1, k3 = kl_estimates(np.concatenate([logp, pad], 1)[None], np.concatenate([logq, -pad], 1)[None],
                          np.full((1, S), T))
    for est in (k1[0], k3[0]):
        assert abs(est.mean() - kl) < 4 * est.std() / np.sqrt(S)
    assert (k3 >= 0).all() and (k1 < 0).any()  # k3 is non-negative per sample, k1 is not


def test_evaluation_reports_k1_and_k3(monkeypatch):
    from bon_jax.pipeline import evaluate
    from bon_jax.pipeline.rollouts import GradedSamples
    from bon_jax.tasks.base import Example

    m, t_new = 2, 3

    def fake_seq_logp(model_cfg, temperature, per_token=False):
        def seq_logp(ref_params, prompts_BT, plen_B, tokens_BMT, lengths_BM):
            logp_BMT = np.full(tokens_BMT.shape, -2.0 / t_new, np.float32)  # reference: -2/3 per token
            return logp_BMT if per_token else logp_BMT.sum(-1)

        return seq_logp

    def fake_draw(params, model_cfg, tokenizer, task, scorer, chunk, prompts_BT, *args, **kwargs):
        b = len(chunk)
        fields = dict(
            prompt_tokens_BT=prompts_BT, prompt_lengths_B=np.full(b, 2), tokens_BMT=np.ones((b, m, t_new), np.int32),
            lengths_BM=np.full((b, m), t_new), logp_BM=np.full((b, m), -1.0, np.float32),
            token_logp_BMT=np.full((b, m, t_new), -1.0 / t_new, np.float32),  # policy: -1/3 per token
            texts_BM=[["x"] * m for _ in range(b)], rewards_BM=np.ones((b, m), np.float32),
            answers_BM=np.array([[None] * m] * b, dtype=object), scores_BM=np.ones((b, m), np.float32),
            finished_BM=np.ones((b, m), bool))
        return GradedSamples(**{f.name: fields[f.name] for f in dataclasses.fields(GradedSamples)})

    class Tok:
        def encode_batch(self, texts, **kwargs):
            return np.ones((len(texts), 2), np.int32), np.full(len(texts), 2)

    class Task:
        def same_answer(self, a, b):
            return a == b

    monkeypatch.setattr(evaluate, "make_sequence_logp", fake_seq_logp)
    monkeypatch.setattr(evaluate, "draw_graded", fake_draw)
    examples = [Example(id=str(i), prompt=f"p{i}", answer="a") for i in range(3)]
    out = evaluate.evaluate_policy({"w": 1}, None, {"w": 0}, Tok(), Task(), None, examples, 0, m=m, ks=(1,),
                                   max_new_tokens=t_new, temperature=1.0, max_prompt_len=8, bootstrap=10)
    l_t = -1.0 / t_new  # log pi_ref - log pi per token
    assert out["kl"]["mean"] == pytest.approx(-t_new * l_t)
    assert out["kl_k3"]["mean"] == pytest.approx(t_new * (np.expm1(l_t) - l_t), rel=1e-5)
