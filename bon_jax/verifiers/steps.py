"""Step ends and per-step targets of a process verifier, and the aggregation of its step probabilities.

A completion is read as lines. Line i of `completion.split("\\n")` *ends* at the token that holds its
closing newline; the last line ends at the completion's last token (its eos when it has one). Those
tokens are the completion's step ends, found from token ids alone (`newline_table`, `step_ends`), so a
verifier scores sampled tokens without the text or the task:

    ends_BT[b, t] = completion_BT[b, t] and (newlines_V[tokens_BT[b, t]] > 0  or  t is its last token)

A process verifier reads one value v_t per end (the head's value there) as the logit of
P(no error up to this step | x, y_<=t). Its training targets (`step_targets`) come from a task's oracle of
single lines (`Task.line_labels`, e.g. arith's check that `LHS=RHS` holds) and from the outcome:

    target at the end of line i (not the last)  = line_labels[i]   (True for a line that is not a step)
    target at the last token                    = outcome and line_labels[last]

The sequence score (docs/maths.md, the verifier is any s(x, y)) aggregates the ends' log-probabilities
l_t = log sigmoid(v_t), the last token's weighted by `outcome_weight` (w):

    product:  log P = sum_{ends t but the last} l_t + w l_last       (every step right, then the outcome)
    min:      log P = min(min_{ends t but the last} l_t, l_last if w > 0)     (the weakest step)

and returns it as a logit z = log P - log(1 - P), like the other poolings (`bon_jax.verifiers.learned`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.tokenizer import sequence_batch

AGGREGATES = ("product", "min")


def check_aggregate(aggregate: str) -> str:
    if aggregate not in AGGREGATES:
        raise ValueError(f"process aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    return aggregate


def newline_table(tokenizer) -> np.ndarray:
    """newlines_V int32: how many newline characters each token id decodes to (0 for pad / bos / eos)."""
    return np.asarray([tokenizer.decode([i], stop_at_eos=False).count("\n")
                       for i in range(tokenizer.vocab_size)], np.int32)


def last_token(completion_BT) -> jax.Array:
    """[B, T] bool: the last True of each row's (contiguous) completion mask."""
    completion_BT = jnp.asarray(completion_BT, bool)
    after_BT = jnp.pad(completion_BT[:, 1:], ((0, 0), (0, 1)))
    return completion_BT & ~after_BT


def step_ends(tokens_BT, completion_BT, newlines_V) -> jax.Array:
    """[B, T] bool: the completion's step ends (module docstring). Token ids outside the table count as
    holding no newline."""
    tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
    newlines_V = jnp.asarray(newlines_V)
    in_table = (tokens_BT >= 0) & (tokens_BT < newlines_V.shape[0])
    has_newline = in_table & (newlines_V[jnp.clip(tokens_BT, 0, newlines_V.shape[0] - 1)] > 0)
    completion_BT = jnp.asarray(completion_BT, bool)
    return (completion_BT & has_newline) | last_token(completion_BT)


def step_targets(completion_ids: Sequence[int], newlines_V: np.ndarray, line_labels: Sequence[bool | None],
                 outcome: bool) -> np.ndarray:
    """float32 [len(completion_ids)]: the target at each step end of the completion's tokens (its eos
    included, as last), NaN elsewhere (module docstring).

    `line_labels` has one entry per line of the completion text (`Task.line_labels`); None marks a line
    that is not a step (target True). A token that closes several lines gets the AND of their labels. The
    number of lines must match the newlines the tokens hold, else the labels would land on the wrong tokens.
    """
    ids = np.asarray(completion_ids, np.int64).reshape(-1)
    if ids.size == 0:
        raise ValueError("step_targets: empty completion (it needs at least its eos)")
    counts = np.asarray(newlines_V)[ids]
    if int(counts.sum()) + 1 != len(line_labels):
        raise ValueError(f"step_targets: the tokens hold {int(counts.sum())} newlines, so "
                         f"{int(counts.sum()) + 1} lines, but {len(line_labels)} line labels were given")
    ok = [True if lab is None else bool(lab) for lab in line_labels]
    out = np.full(ids.size, np.nan, np.float32)
    line = 0
    for t, n in enumerate(counts[:-1]):
        if n:
            out[t] = float(all(ok[line : line + n]))
            line += n
    # The last token closes the remaining lines (several when it holds newlines itself) and the outcome.
    out[-1] = float(bool(outcome) and all(ok[line:]))
    return out


def step_target_batch(tokenizer, newlines_V, prompts: Sequence[str], completions: Sequence[str], outcomes,
                      line_labels: Sequence[Sequence[bool | None]], width: int) -> dict:
    """`sequence_batch`'s `[bos] prompt completion [eos]` rows plus `step_target_BT` float32: each row's
    `step_targets` at its step ends, 0 elsewhere.

    Checks that the targets sit exactly on the ends `step_ends` finds from the tokens (what the verifier
    reads at scoring time), and refuses rows cut at `width` (their last token would not be the eos).
    """
    batch = sequence_batch(tokenizer, prompts, completions, width)
    if len(line_labels) != len(prompts) or len(outcomes) != len(prompts):
        raise ValueError(f"{len(prompts)} rows but {len(line_labels)} line labels and {len(outcomes)} outcomes")
    if batch["truncated_B"].any():
        raise ValueError(f"{int(batch['truncated_B'].sum())} rows are longer than width={width}; a process "
                         "verifier needs every row whole")
    target_BT = np.full(batch["tokens_BT"].shape, np.nan, np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        start = 1 + len(tokenizer.encode(p))
        ids = tokenizer.encode(c) + [tokenizer.eos_id]
        target_BT[i, start : start + len(ids)] = step_targets(ids, newlines_V, line_labels[i], bool(outcomes[i]))
    ends_BT = np.asarray(step_ends(batch["tokens_BT"], batch["target_BT"], newlines_V))
    if not np.array_equal(ends_BT, ~np.isnan(target_BT)):
        bad = int(np.flatnonzero((ends_BT != ~np.isnan(target_BT)).any(-1))[0])
        raise ValueError(f"row {bad}: step targets do not sit on the step ends found from its tokens")
    batch["step_target_BT"] = np.nan_to_num(target_BT, nan=0.0)
    return batch


def process_logit(values_BT, ends_BT, last_BT, aggregate: str = "product", outcome_weight: float = 1.0):
    """z_B float32 from per-token values at the step ends (module docstring). `last_BT` marks the last
    token (one per row, inside `ends_BT`). log P is clamped at -1e-30 so z stays finite (z <= 69)."""
    check_aggregate(aggregate)
    l_BT = jax.nn.log_sigmoid(jnp.asarray(values_BT, jnp.float32))
    ends_BT = jnp.asarray(ends_BT, bool)
    last_BT = jnp.asarray(last_BT, bool) & ends_BT
    steps_BT = ends_BT & ~last_BT
    if aggregate == "product":
        logp_B = jnp.sum(jnp.where(steps_BT, l_BT, 0.0), -1) + outcome_weight * jnp.sum(
            jnp.where(last_BT, l_BT, 0.0), -1)
    else:
        use_BT = steps_BT | (last_BT if outcome_weight > 0 else jnp.zeros_like(last_BT))
        logp_B = jnp.min(jnp.where(use_BT, l_BT, 0.0), -1)
    logp_B = jnp.minimum(logp_B, -1e-30)
    return logp_B - jnp.log(-jnp.expm1(logp_B))
