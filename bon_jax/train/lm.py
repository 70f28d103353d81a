"""Teacher-forced language-model quantities: batches of (prompt, completion) and their log-probs.

A training sequence is `[bos] prompt completion [eos]`, right-padded with pad (id 0) to a static width:

    tokens_BT     int32   the sequence
    valid_BT      bool    real tokens
    target_BT     bool    tokens whose log-prob is trained: the completion and its eos

    logp_BT[b, t] = log softmax(logits_BTV[b, t-1])[tokens_BT[b, t]]   (0 at t = 0 and where not target)

`bon_jax.tokenizer.sequence_batch` builds such a batch. The supervised loss is the mean over target tokens
of -logp; a sequence's log-prob (what the RL objectives take) is the sum over its target tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bon_jax.models import causal_mask, next_token_logprobs, positions_from_valid
from bon_jax.tokenizer import sequence_batch  # noqa: F401  (lives beside the tokenizer; re-exported here)


def token_logprobs(model, params, tokens_BT, valid_BT) -> jax.Array:
    """[B, T] float32 log-prob of each token given the earlier ones (0 at position 0 and on padding)."""
    logits_BTV, _ = model.apply(
        {"params": params}, tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT)
    )
    return jnp.where(valid_BT, next_token_logprobs(logits_BTV, tokens_BT), 0.0)


def sft_loss(model):
    """Mean next-token NLL over target tokens: `loss(params, batch) -> (loss, metrics)`."""

    def loss(params, batch):
        logp_BT = token_logprobs(model, params, batch["tokens_BT"], batch["valid_BT"])
        target_BT = batch["target_BT"].astype(jnp.float32)
        count = jnp.maximum(target_BT.sum(), 1.0)
        nll = -(logp_BT * target_BT).sum() / count
        return nll, {"nll": nll, "target_tokens": count}

    return loss
