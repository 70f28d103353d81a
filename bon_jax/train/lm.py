"""Teacher-forced language-model quantities: batches of (prompt, completion) and their log-probs.

A training sequence is `[bos] prompt completion [eos]`, right-padded with pad (id 0) to a static width:

    tokens_BT     int32   the sequence
    valid_BT      bool    real tokens
    target_BT     bool    tokens whose log-prob is trained: the completion and its eos

    logp_BT[b, t] = log softmax(logits_BTV[b, t-1])[tokens_BT[b, t]]   (0 at t = 0 and where not target)

`bon_jax.tokenizer.sequence_batch` builds such a batch. A minibatch of rows taken from a table of them is cut
to its own width (`take_rows`: the longest row among them, rounded up to a multiple of 16), which drops
only padding: positions and masks come from valid_BT, so every loss is the same at any width, and the
batch widths are a handful of static shapes, each compiled once. The supervised loss is the mean over target tokens
of -logp; a sequence's log-prob (what the RL objectives take) is the sum over its target tokens.

The [B, T, V] logits are never built: the B * (T - 1) predicting hidden states are unembedded by
`bon_jax.logprobs.taken_logprobs` in chunks of rows, forward and backward (its docstring has the maths), so
SFT on a 256k-vocabulary model holds one chunk's logits, not B * T of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.logprobs import taken_logprobs
from bon_jax.models import Transformer, causal_mask, positions_from_valid
from bon_jax.tokenizer import sequence_batch  # noqa: F401  (lives beside the tokenizer; re-exported here)

WIDTH_MULTIPLE = 16


def trim_width(valid_BT, multiple: int = WIDTH_MULTIPLE) -> int:
    """The width right-padded rows need: the longest row's real tokens (its last real slot + 1), rounded
    up to a multiple of `multiple`, at most the table's width."""
    valid_BT = np.asarray(valid_BT, bool)
    T = valid_BT.shape[1]
    longest = int(np.max(np.where(valid_BT.any(1), T - np.argmax(valid_BT[:, ::-1], axis=1), 0), initial=0))
    return min(T, max(multiple, -(-longest // multiple) * multiple))


def take_rows(table: dict, idx, multiple: int = WIDTH_MULTIPLE) -> dict:
    """Rows `idx` of a table of right-padded rows, its `*_BT` fields cut to `trim_width` of those rows'
    `valid_BT`; the other fields (per-row `*_B`, ...) taken as they are."""
    w = trim_width(table["valid_BT"][idx], multiple)
    return {k: (np.asarray(v)[idx, :w] if k.endswith("_BT") else np.asarray(v)[idx]) for k, v in table.items()}


def token_logprobs(model, params, tokens_BT, valid_BT, chunk: int | None = None) -> jax.Array:
    """[B, T] float32 log-prob of each token given the earlier ones (0 at position 0 and on padding).

    logp_BT[b, t] = log softmax(soft_cap(h_b(t-1) E^T, c_f))[tokens_BT[b, t]], with h the final-normed hidden
    states and E the tied embedding (`Transformer.logits`), computed by `taken_logprobs` in chunks of
    `chunk` rows (default `bon_jax.logprobs.chunk_rows`) without the [B, T, V] logits.
    """
    cfg = model.config
    h_BTD, _ = model.apply({"params": params}, tokens_BT, positions_from_valid(valid_BT), causal_mask(valid_BT),
                           method=Transformer.hidden_states)
    B, T, D = h_BTD.shape
    if T < 2:
        return jnp.zeros((B, T), jnp.float32)
    logp_R = taken_logprobs(h_BTD[:, :-1].reshape(B * (T - 1), D), params["embedder"]["input_embedding"],
                            tokens_BT[:, 1:].reshape(-1), final_logit_soft_cap=cfg.final_logit_soft_cap,
                            compute_dtype=cfg.compute_dtype, chunk=chunk)
    logp_BT = jnp.pad(logp_R.reshape(B, T - 1), ((0, 0), (1, 0)))
    return jnp.where(valid_BT, logp_BT, 0.0)


def sft_loss(model, chunk: int | None = None):
    """Mean next-token NLL over target tokens: `loss(params, batch) -> (loss, metrics)`. `chunk`: rows per
    unembedding chunk (`token_logprobs`)."""

    def loss(params, batch):
        logp_BT = token_logprobs(model, params, batch["tokens_BT"], batch["valid_BT"], chunk)
        target_BT = batch["target_BT"].astype(jnp.float32)
        count = jnp.maximum(target_BT.sum(), 1.0)
        nll = -(logp_BT * target_BT).sum() / count
        return nll, {"nll": nll, "target_tokens": count}

    return loss
