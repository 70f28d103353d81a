"""Training a verifier as Chow et al. train theirs: binary cross-entropy on (prompt, completion, correct).

For a triple (x, y, c) with c in {0, 1} and logit z = s(x, y) (`learned.sequence_logits`, with any of its
poolings of the per-token values, `learned.POOLINGS`):

    bce(z, c) = softplus(z) - c z = -[c log sigmoid(z) + (1 - c) log(1 - sigmoid(z))]
    loss      = (1 / |batch|) sum_i w_{c_i} bce(z_i, c_i)

Class weights: `class_weight=None` gives w = 1 (sigmoid(z) then estimates P(correct) at the training set's
positive rate pi, which is what calibration is measured against). `'balanced'` gives w_1 = 1 / (2 pi) and
w_0 = 1 / (2 (1 - pi)), so each class carries half the expected loss: useful when correct samples are rare,
at the price of probabilities calibrated to a 50% prior (their logits are shifted by log(pi / (1 - pi))).
A pair `(w_0, w_1)` sets them directly. The positive rate is always reported.

Within-prompt ranking (optional, `ranking_weight` lambda > 0 with prompt `groups`). Best-of-N only ever
compares completions *of the same prompt*, but BCE alone can be minimised by scoring the prompt (how hard it
looks) rather than the completion: AUC over all triples is then high while the verifier's top pick among
one prompt's samples is no better than chance. The ranking term is a Bradley-Terry loss over the pairs of a
correct and an incorrect completion of the same prompt in the minibatch, P = {(i, j): g_i = g_j, c_i = 1,
c_j = 0}:

    rank = (1 / |P|) sum_{(i, j) in P} softplus(z_j - z_i) = -(1 / |P|) sum log sigmoid(z_i - z_j)
    loss = bce_weighted + lambda rank                            (rank = 0 when P is empty)

It is invariant to a per-prompt shift of z, so it only rewards telling a prompt's completions apart.

`ranking='listwise'` replaces it by a term shaped like Best-of-N's own failure. Best-of-N by the verifier is
wrong when the *top-scored* incorrect completion beats every correct one, which a mean over random pairs
weighs no more than any other pair. Over the prompts G of the minibatch that have both a correct and an
incorrect completion, with A_g all of g's rows and C_g its correct ones:

    rank = (1 / |G|) sum_{g in G} [ logsumexp_{j in A_g} z_j - logsumexp_{i in C_g} z_i ]
         = -(1 / |G|) sum_g log P_g(correct),   P_g = softmax of z over A_g

(rank = 0 when G is empty). Its gradient on an incorrect z_j is its softmax weight P_g(j): the
incorrect completions scored highest are pushed down hardest, those already far below carry almost nothing.
Also invariant to a per-prompt shift. To
put such pairs in a minibatch, the minibatches are then slices of the triples ordered by prompt, the prompt
order reshuffled every pass. `pairwise_accuracy` (held-out) is the fraction of such pairs ranked the right
way (ties count 1/2): the within-prompt AUC, which is what selection by Best-of-N depends on.

Process verifiers (`pooling='process'`, `bon_jax.verifiers.steps`) are trained on every step end t of
every completion instead, with per-step targets c_t (`line_labels`, one list per triple from the task's
line oracle, and the outcome label at the last token):

    loss = (1 / |ends in batch|) sum_{b, t in ends} w_{c_t} bce(values_BT[b, t], c_t)

the class weights taken from the rate of right steps; the ranking term, when asked for, is added on the
aggregated z as above.

Minibatches are drawn without replacement within each pass over the shuffled triples (seeded), each cut to
its own longest row rounded up to 16 (`bon_jax.train.lm.take_rows`, as SFT's): only padding is dropped, so
the loss is that of the full-width batch, and the jitted update (`bon_jax.train.step.make_update_step`,
non-finite steps skipped on device) compiles once per width, a handful of them. Step t's minibatch is a
function of t, and the steps run in the training loop of every stage (`bon_jax.train.loop.run_loop`): given
a `stage_dir`, training checkpoints there, a SIGTERM checkpoints and raises `Preempted`, and a rerun resumes
to the parameters of an uninterrupted run.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.metrics import bon_at_k, pass_at_k
from bon_jax.models import ModelConfig
from bon_jax.train.lm import take_rows, trim_width
from bon_jax.train.loop import LoopConfig, run_loop
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step
from bon_jax.verifiers.calibration import binary_metrics
from bon_jax.verifiers.learned import (
    READS_SURPRISAL,
    check_pooling,
    encode_pairs,
    init_verifier_params,
    score_tokens,
    sequence_logits,
    step_values,
)
from bon_jax.verifiers.steps import (
    check_aggregate,
    newline_table,
    process_logit,
    step_ends,
    step_target_batch,
)


def _labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels, np.float32).reshape(-1)
    if y.size != n:
        raise ValueError(f"{n} (prompt, completion) pairs but {y.size} labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    return y


def class_weights(positive_rate: float, class_weight) -> tuple[float, float]:
    """(w_0, w_1) for `class_weight` None, 'balanced' or a pair (module docstring)."""
    if class_weight is None:
        return 1.0, 1.0
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be None, 'balanced' or (w_0, w_1), got {class_weight!r}")
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"'balanced' class weights need both classes; positive rate is {positive_rate}")
        return 0.5 / (1.0 - positive_rate), 0.5 / positive_rate
    w0, w1 = (float(w) for w in class_weight)
    if w0 < 0 or w1 < 0:
        raise ValueError(f"class weights must be non-negative, got {class_weight!r}")
    return w0, w1


RANKINGS = ("pairwise", "listwise")


def ranking_loss(z_B: jax.Array, y_B: jax.Array, group_B: jax.Array,
                 ranking: str = "pairwise") -> tuple[jax.Array, jax.Array]:
    """'pairwise': (mean over same-group (correct, incorrect) pairs of softplus(z_j - z_i), number of
    pairs). 'listwise': (mean over the groups with both classes of -log softmax_g(z)[correct], number of
    such groups). Module docstring."""
    same_BB = group_B[:, None] == group_B[None, :]
    right_B = y_B > 0.5
    if ranking == "pairwise":
        pair_BB = same_BB & right_B[:, None] & ~right_B[None, :]
        count = jnp.sum(pair_BB)
        terms_BB = jax.nn.softplus(z_B[None, :] - z_B[:, None])
        return jnp.sum(jnp.where(pair_BB, terms_BB, 0.0)) / jnp.maximum(count, 1), count
    if ranking != "listwise":
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    # Row b stands for its group: the group's logsumexp over all rows and over its correct rows.
    all_B = jax.nn.logsumexp(jnp.where(same_BB, z_B[None, :], -jnp.inf), axis=1)
    right_BB = same_BB & right_B[None, :]
    both_B = jnp.any(right_BB, axis=1) & jnp.any(same_BB & ~right_B[None, :], axis=1)
    right_lse_B = jax.nn.logsumexp(jnp.where(right_BB, z_B[None, :], -jnp.inf), axis=1)
    # Each group counted once: its rows share the term, weighted by 1 / (rows in the group).
    weight_B = jnp.where(both_B, 1.0 / jnp.sum(same_BB, axis=1), 0.0)
    count = jnp.sum(weight_B)
    terms_B = jnp.where(both_B, all_B - right_lse_B, 0.0)
    return jnp.sum(weight_B * terms_B) / jnp.maximum(count, 1.0), jnp.round(count).astype(jnp.int32)


def bce_loss(cfg: ModelConfig, weights: tuple[float, float] = (1.0, 1.0), ranking_weight: float = 0.0,
             pooling: str = "last", newlines: tuple[int, ...] | None = None, aggregate: str = "product",
             outcome_weight: float = 1.0, ranking: str = "pairwise"):
    """`loss(params, batch) -> (loss, metrics)` on batch {tokens_BT, valid_BT, label_B[, group_B]
    [, completion_BT][, step_target_BT]}.

    With `ranking_weight` > 0 the batch needs `group_B` (prompt ids) and the loss adds the within-prompt
    ranking term of kind `ranking` (module docstring); every pooling but `'last'` needs `completion_BT`. `'process'` needs
    `step_target_BT` (0/1 at the step ends) and the tokenizer's newline counts `newlines` (a tuple, so
    that the loss is hashable), and trains per step end (module docstring).
    """
    w0, w1 = weights
    newlines_V = None if newlines is None else np.asarray(newlines, np.int32)
    if pooling == "process" and newlines_V is None:
        raise ValueError("pooling='process' needs the tokenizer's newline counts (newlines)")

    def loss(params, batch):
        y_B = batch["label_B"].astype(jnp.float32)
        if pooling == "process":
            values_BT, ends_BT, last_BT = step_values(params, cfg, batch["tokens_BT"], batch["valid_BT"],
                                                      batch["completion_BT"], newlines_V)
            c_BT = batch["step_target_BT"].astype(jnp.float32)
            step_bce_BT = jax.nn.softplus(values_BT) - c_BT * values_BT
            ends = jnp.maximum(jnp.sum(ends_BT), 1)
            value = jnp.sum(jnp.where(ends_BT, jnp.where(c_BT > 0.5, w1, w0) * step_bce_BT, 0.0)) / ends
            z_B = process_logit(values_BT, ends_BT, last_BT, aggregate, outcome_weight)
            bce_B = jax.nn.softplus(z_B) - y_B * z_B
            step_right_BT = (values_BT > 0) == (c_BT > 0.5)
            metrics = {"step_bce": jnp.sum(jnp.where(ends_BT, step_bce_BT, 0.0)) / ends,
                       "step_accuracy": jnp.sum(ends_BT & step_right_BT) / ends}
        else:
            z_B = sequence_logits(params, cfg, batch["tokens_BT"], batch["valid_BT"],
                                  batch.get("completion_BT"), pooling)
            bce_B = jax.nn.softplus(z_B) - y_B * z_B
            w_B = jnp.where(y_B > 0.5, w1, w0)
            value = jnp.mean(w_B * bce_B)
            metrics = {}
        metrics.update({
            "bce": jnp.mean(bce_B),
            "accuracy": jnp.mean(((z_B > 0) == (y_B > 0.5)).astype(jnp.float32)),
            "mean_prob": jnp.mean(jax.nn.sigmoid(z_B)),
        })
        if ranking_weight:
            rank, pairs = ranking_loss(z_B, y_B, batch["group_B"], ranking)
            value = value + ranking_weight * rank
            metrics.update(rank=rank, pairs=pairs.astype(jnp.float32))
        return value, metrics

    return loss


def _epoch_batches(n: int, batch_size: int, steps: int, rng: np.random.Generator,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """[steps, batch_size] indices: consecutive slices of concatenated random permutations of range(n).

    With `groups` ([n] ids), each pass orders the rows group by group (groups in a random order, rows
    shuffled within their group), so a minibatch holds whole groups but for the two at its edges.
    """
    need = steps * batch_size
    if need == 0:
        return np.zeros((0, batch_size), np.int64)
    passes = []
    for _ in range(-(-need // n)):
        perm = rng.permutation(n)
        if groups is not None:
            ids, inverse = np.unique(groups, return_inverse=True)
            group_rank = rng.permutation(len(ids))[inverse]
            perm = perm[np.argsort(group_rank[perm], kind="stable")]
        passes.append(perm)
    return np.concatenate(passes)[:need].reshape(steps, batch_size)


def pairwise_accuracy(z, labels, groups) -> tuple[float, int]:
    """(fraction of same-group (correct, incorrect) pairs with z_correct > z_incorrect, ties 1/2; pairs)."""
    z = np.asarray(z, np.float64)
    y = np.asarray(labels) > 0.5
    groups = np.asarray(groups)
    wins, pairs = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        pos, neg = z[m & y], z[m & ~y]
        if pos.size and neg.size:
            d = pos[:, None] - neg[None, :]
            wins += float(np.sum(d > 0) + 0.5 * np.sum(d == 0))
            pairs += d.size
    return (wins / pairs if pairs else float("nan")), pairs


def held_out_selection(z, labels, groups) -> dict[str, float]:
    """What selecting by the verifier buys on held-out prompts: for k = 1, 2, 4, ... up to the smallest
    group, the mean over prompts of BoN@k (exact, ties shared; `bon_jax.metrics.bon_at_k`) next to pass@k
    (the oracle's ceiling) of the prompt's samples. Keys `bon_at_{k}`, `pass_at_{k}`."""
    z, y, groups = np.asarray(z, np.float64), np.asarray(labels, np.float64), np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    if not members:
        return {}
    smallest = min(len(m) for m in members)
    out = {}
    k = 1
    while k <= smallest:
        out[f"bon_at_{k}"] = float(np.mean([float(bon_at_k(z[m], y[m], k)) for m in members]))
        out[f"pass_at_{k}"] = float(np.mean([float(pass_at_k(len(m), y[m].sum(), k)) for m in members]))
        k *= 2
    return out


def evaluate_verifier(params, cfg: ModelConfig, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                      labels, *, width: int | None = None, row_chunk: int | None = 256,
                      num_bins: int = 10, groups=None, pooling: str = "last", aggregate: str = "product",
                      outcome_weight: float = 1.0) -> dict[str, float]:
    """Held-out report on triples: auc, ece, accuracy, bce, positive_rate, mean_prob, count, truncated;
    with `groups` (prompt ids) also pairwise_accuracy and pairs (within-prompt AUC, module docstring) and
    bon_at_k / pass_at_k over the prompts (`held_out_selection`)."""
    y = _labels(labels, len(prompts))
    if not len(prompts):
        return binary_metrics(np.zeros(0), y, num_bins=num_bins)
    batch = encode_pairs(tokenizer, prompts, completions, width=width)
    process = dict(newlines_V=newline_table(tokenizer), aggregate=aggregate,
                   outcome_weight=outcome_weight) if pooling == "process" else {}
    z = score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], row_chunk, batch["target_BT"], pooling,
                     **process)
    z = np.asarray(z, np.float64)
    out = binary_metrics(z, y, num_bins=num_bins)
    out["truncated"] = float(batch["truncated_B"].sum())
    if groups is not None:
        acc, pairs = pairwise_accuracy(z, y, groups)
        out.update(pairwise_accuracy=acc, pairs=float(pairs))
        out.update(held_out_selection(z, y, groups))
    return out


@functools.lru_cache(maxsize=4)
def _update_step(cfg: ModelConfig, weights, ranking_weight, pooling, lr, steps, warmup, weight_decay,
                 max_grad_norm, newlines=None, aggregate="product", outcome_weight=1.0, ranking="pairwise"):
    """(optimizer, jitted update step), one per distinct setting: a resumed training (or a second verifier
    trained alike) reuses the compiled step."""
    optimizer = adamw(lr, steps, warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    loss = bce_loss(cfg, weights, ranking_weight, pooling, newlines, aggregate, outcome_weight, ranking)
    return optimizer, jax.jit(make_update_step(loss, optimizer), donate_argnums=0)


def train_verifier(cfg: ModelConfig, tokenizer, prompts: Sequence[str], completions: Sequence[str], labels, *,
                   steps: int, batch_size: int, lr: float, seed: int = 0, init_params=None,
                   class_weight=None, warmup: int = 0, weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0, width: int | None = None, eval_data=None,
                   log_every: int = 50, max_bad_steps: int = 10, groups=None,
                   ranking_weight: float = 0.0, pooling: str = "last", zero_init_head: bool = False,
                   progress: bool = True, stage_dir: str | None = None, ckpt_every: int = 50, keep: int = 3,
                   stop_after: int | None = None, line_labels=None, aggregate: str = "product",
                   outcome_weight: float = 1.0, ranking: str = "pairwise") -> tuple[dict, dict[str, float]]:
    """Fits a scalar-head verifier by (weighted) BCE; returns (params, metrics).

    Args:
      cfg: the model config (its vocab must cover the tokenizer's).
      prompts, completions, labels: the training triples (labels 0/1).
      steps, batch_size, lr, seed: AdamW steps (linear warm-up over `warmup`, then constant), minibatch
        size, peak learning rate, seed of the init and of the minibatch order. steps = 0 trains nothing:
        with `zero_init_head` and a likelihood pooling the verifier is the backbone's own likelihood.
      init_params: None (fresh), or params to copy matching leaves from: a policy's (backbone copied,
        value head fresh) or a verifier's (resume). See `init_verifier_params`.
      class_weight: None, 'balanced' or (w_0, w_1) (module docstring).
      width: static sequence width; default: smallest tokenizer bucket that holds every training row.
      eval_data: optional held-out (prompts, completions, labels[, groups]); its report is under `eval/...`.
      groups: optional [N] prompt ids of the training triples: minibatches then hold whole prompts.
      ranking_weight: lambda of the within-prompt ranking term (needs `groups`; module docstring).
      ranking: its kind, one of RANKINGS: 'pairwise' (Bradley-Terry) or 'listwise' (module docstring).
      pooling: one of `bon_jax.verifiers.learned.POOLINGS`.
      zero_init_head: start the value head at zero (`init_verifier_params`).
      line_labels: `'process'` only: per triple, one label per line of its completion (`Task.line_labels`:
        True / False for a step, None for a line that is not one).
      aggregate, outcome_weight: `'process'` only: how its step probabilities make z
        (`bon_jax.verifiers.steps.process_logit`).
      log_every: how often the host reads the step metrics (and checks for runs of skipped steps).
      stage_dir: where to checkpoint (every `ckpt_every` steps, the last `keep`, and on SIGTERM, which then
        raises `bon_jax.train.loop.Preempted`) and log; a call with the same arguments and directory
        resumes from its latest checkpoint. None: nothing is written and a SIGTERM is not intercepted.
      stop_after: (tests) raise `Preempted` after that many steps, as a SIGTERM would.

    Metrics: positive_rate, class weights w0/w1, init_copied_leaves, train_truncated, width (of the table),
    batch_width_mean and batch_widths (the mean minibatch width and how many distinct ones),
    train/loss_first and train/loss_last (means over the first and last `min(10, steps)` steps),
    train/bce_last, train/accuracy_last, skipped_steps, and eval/* from `evaluate_verifier`.
    """
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size positive, got {steps}, {batch_size}")
    if steps == 0 and not (zero_init_head and pooling in READS_SURPRISAL):
        raise ValueError(
            "steps = 0 (no training) scores by the backbone's own likelihood: it needs zero_init_head and a "
            f"pooling in {READS_SURPRISAL}; with pooling {pooling!r} and zero_init_head={zero_init_head} the "
            "scores would be an untrained head's"
        )
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    y = _labels(labels, len(prompts))
    if y.size == 0:
        raise ValueError("train_verifier: no training triples")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}")
    check_pooling(pooling)
    check_aggregate(aggregate)
    if outcome_weight < 0:
        raise ValueError(f"outcome_weight must be >= 0, got {outcome_weight}")
    if pooling == "process":
        if line_labels is None or len(line_labels) != y.size:
            raise ValueError(f"pooling='process' needs line_labels for each of the {y.size} triples")
        newlines = newline_table(tokenizer)
        if width is None:
            longest = max(len(tokenizer.encode(p)) + len(tokenizer.encode(c)) + 2
                          for p, c in zip(prompts, completions))
            width = -(-longest // 16) * 16
        data = step_target_batch(tokenizer, newlines, prompts, completions, y, line_labels, width)
        ends_RT = np.asarray(step_ends(data["tokens_BT"], data["target_BT"], newlines))
        positive_rate = float(data["step_target_BT"][ends_RT].mean())  # of right steps (module docstring)
    else:
        newlines = None
        data = encode_pairs(tokenizer, prompts, completions, width=width)
        positive_rate = float(y.mean())
    w0, w1 = class_weights(positive_rate, class_weight)
    if ranking_weight < 0:
        raise ValueError(f"ranking_weight must be >= 0, got {ranking_weight}")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if groups is not None:
        groups = np.asarray(groups).reshape(-1)
        if groups.size != y.size:
            raise ValueError(f"{y.size} triples but {groups.size} group ids")
    elif ranking_weight:
        raise ValueError("ranking_weight > 0 needs the triples' prompt ids (groups)")

    tokens_RT, valid_RT, completion_RT = data["tokens_BT"], data["valid_BT"], data["target_BT"]
    width = tokens_RT.shape[1]

    params, copied = init_verifier_params(cfg, jax.random.key(seed), init_params, zero_head=zero_init_head)
    optimizer, update = _update_step(cfg, (w0, w1), ranking_weight, pooling, lr, steps, warmup, weight_decay,
                                     max_grad_norm, None if newlines is None else tuple(newlines.tolist()),
                                     aggregate, float(outcome_weight), ranking)
    # Committed to the device a restored checkpoint is placed on: fresh and resumed runs share one compile.
    state = jax.device_put(TrainState.create(params, optimizer), jax.devices()[0])

    order = _epoch_batches(y.size, batch_size, steps, np.random.default_rng([seed, 1]), groups)

    table = {"tokens_BT": tokens_RT, "valid_BT": valid_RT, "label_B": y}
    if pooling != "last":
        table["completion_BT"] = completion_RT
    if pooling == "process":
        table["step_target_BT"] = data["step_target_BT"]
    if ranking_weight:
        table["group_B"] = groups
    # Each minibatch is cut to its own longest row (module docstring).
    batch_widths = [trim_width(valid_RT[idx]) for idx in order]

    def batch_fn(step, state):
        return take_rows(table, order[step])

    history: list[dict] = []  # every step's metrics, those before a resume read back from the log
    if steps:
        loop = LoopConfig(steps, ckpt_every, keep, log_every, max_bad_steps, "verifier", progress)
        state = run_loop(stage_dir, state, update, batch_fn, loop, stop_after=stop_after, history=history)

    k = min(10, steps)
    mean_of = lambda key, rows: float(np.mean([float(h[key]) for h in rows]))  # float("nan"): logged NaN
    metrics = {
        "positive_rate": positive_rate,
        "w0": w0,
        "w1": w1,
        "count": float(y.size),
        "init_copied_leaves": float(len(copied)),
        "train_truncated": float(data["truncated_B"].sum()),
        "width": float(width),
        "batch_width_mean": float(np.mean(batch_widths)) if steps else 0.0,
        "batch_widths": float(len(set(batch_widths))),
        "skipped_steps": float(sum(int(h["skipped"]) for h in history)),
    }
    if steps:  # no training, no training metrics
        metrics.update({
            "train/loss_first": mean_of("loss", history[:k]),
            "train/loss_last": mean_of("loss", history[-k:]),
            "train/bce_last": mean_of("bce", history[-k:]),
            "train/accuracy_last": mean_of("accuracy", history[-k:]),
        })
        if ranking_weight:
            metrics["train/rank_last"] = mean_of("rank", history[-k:])
        if pooling == "process":
            metrics["train/step_accuracy_last"] = mean_of("step_accuracy", history[-k:])
    if eval_data is not None:
        ep, ec, el, *eg = eval_data
        report = evaluate_verifier(state.params, cfg, tokenizer, ep, ec, el, groups=eg[0] if eg else None,
                                   pooling=pooling, aggregate=aggregate, outcome_weight=outcome_weight)
        metrics.update({f"eval/{k}": v for k, v in report.items()})
    return state.params, metrics
