"""Training a verifier as Chow et al. train theirs: binary cross-entropy on (prompt, completion, correct).

For a triple (x, y, c) with c in {0, 1} and logit z = s(x, y) (`learned.sequence_logits`):

    bce(z, c) = softplus(z) - c z = -[c log sigmoid(z) + (1 - c) log(1 - sigmoid(z))]
    loss      = (1 / |batch|) sum_i w_{c_i} bce(z_i, c_i)

Class weights: `class_weight=None` gives w = 1 (sigmoid(z) then estimates P(correct) at the training set's
positive rate pi, which is what calibration is measured against). `'balanced'` gives w_1 = 1 / (2 pi) and
w_0 = 1 / (2 (1 - pi)), so each class carries half the expected loss: useful when correct samples are rare,
at the price of probabilities calibrated to a 50% prior (their logits are shifted by log(pi / (1 - pi))).
A pair `(w_0, w_1)` sets them directly. The positive rate is always reported.

Minibatches are drawn without replacement within each pass over the shuffled triples (seeded), all at one
static width, so the jitted update (`bon_jax.train.step.make_update_step`, non-finite steps skipped on device)
compiles once.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bon_jax.models import ModelConfig
from bon_jax.train.optim import adamw
from bon_jax.train.step import BadStepMonitor, TrainState, make_update_step
from bon_jax.verifiers.calibration import binary_metrics
from bon_jax.verifiers.learned import encode_pairs, init_verifier_params, score_tokens, sequence_logits


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


def bce_loss(cfg: ModelConfig, weights: tuple[float, float] = (1.0, 1.0)):
    """`loss(params, batch) -> (loss, metrics)` on batch {tokens_BT, valid_BT, label_B} (module docstring)."""
    w0, w1 = weights

    def loss(params, batch):
        z_B = sequence_logits(params, cfg, batch["tokens_BT"], batch["valid_BT"])
        y_B = batch["label_B"].astype(jnp.float32)
        bce_B = jax.nn.softplus(z_B) - y_B * z_B
        w_B = jnp.where(y_B > 0.5, w1, w0)
        value = jnp.mean(w_B * bce_B)
        metrics = {
            "bce": jnp.mean(bce_B),
            "accuracy": jnp.mean(((z_B > 0) == (y_B > 0.5)).astype(jnp.float32)),
            "mean_prob": jnp.mean(jax.nn.sigmoid(z_B)),
        }
        return value, metrics

    return loss


def _epoch_batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """[steps, batch_size] indices: consecutive slices of concatenated random permutations of range(n)."""
    need = steps * batch_size
    perms = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(perms)[:need].reshape(steps, batch_size)


def evaluate_verifier(params, cfg: ModelConfig, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                      labels, *, width: int | None = None, row_chunk: int | None = 256,
                      num_bins: int = 10) -> dict[str, float]:
    """Held-out report on triples: auc, ece, accuracy, bce, positive_rate, mean_prob, count, truncated."""
    y = _labels(labels, len(prompts))
    if not len(prompts):
        return binary_metrics(np.zeros(0), y, num_bins=num_bins)
    batch = encode_pairs(tokenizer, prompts, completions, width=width)
    z = np.asarray(score_tokens(params, cfg, batch["tokens_BT"], batch["valid_BT"], row_chunk), np.float64)
    out = binary_metrics(z, y, num_bins=num_bins)
    out["truncated"] = float(batch["truncated_B"].sum())
    return out


def train_verifier(cfg: ModelConfig, tokenizer, prompts: Sequence[str], completions: Sequence[str], labels, *,
                   steps: int, batch_size: int, lr: float, seed: int = 0, init_params=None,
                   class_weight=None, warmup: int = 0, weight_decay: float = 0.0,
                   max_grad_norm: float | None = 1.0, width: int | None = None, eval_data=None,
                   log_every: int = 50, max_bad_steps: int = 10,
                   progress: bool = True) -> tuple[dict, dict[str, float]]:
    """Fits a scalar-head verifier by (weighted) BCE; returns (params, metrics).

    Args:
      cfg: the model config (its vocab must cover the tokenizer's).
      prompts, completions, labels: the training triples (labels 0/1).
      steps, batch_size, lr, seed: AdamW steps (linear warm-up over `warmup`, then constant), minibatch
        size, peak learning rate, seed of the init and of the minibatch order.
      init_params: None (fresh), or params to copy matching leaves from: a policy's (backbone copied,
        value head fresh) or a verifier's (resume). See `init_verifier_params`.
      class_weight: None, 'balanced' or (w_0, w_1) (module docstring).
      width: static sequence width; default: smallest tokenizer bucket that holds every training row.
      eval_data: optional held-out (prompts, completions, labels); its report is under `eval/...`.
      log_every: how often the host reads the step metrics (and checks for runs of skipped steps).

    Metrics: positive_rate, class weights w0/w1, init_copied_leaves, train_truncated, width,
    train/loss_first and train/loss_last (means over the first and last `min(10, steps)` steps),
    train/bce_last, train/accuracy_last, skipped_steps, and eval/* from `evaluate_verifier`.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    y = _labels(labels, len(prompts))
    if y.size == 0:
        raise ValueError("train_verifier: no training triples")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}")
    positive_rate = float(y.mean())
    w0, w1 = class_weights(positive_rate, class_weight)

    data = encode_pairs(tokenizer, prompts, completions, width=width)
    tokens_NT, valid_NT = data["tokens_BT"], data["valid_BT"]
    width = tokens_NT.shape[1]

    params, copied = init_verifier_params(cfg, jax.random.key(seed), init_params)
    optimizer = adamw(lr, steps, warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
    state = TrainState.create(params, optimizer)
    update = jax.jit(make_update_step(bce_loss(cfg, (w0, w1)), optimizer), donate_argnums=0)

    order = _epoch_batches(y.size, batch_size, steps, np.random.default_rng([seed, 1]))
    monitor = BadStepMonitor(max_bad_steps)
    pending: list[dict] = []
    history: list[dict] = []

    def drain():
        for m in jax.device_get(pending):
            monitor.update(int(m["skipped"]), len(history))
            history.append({k: float(v) for k, v in m.items()})
        pending.clear()

    for s in tqdm(range(steps), desc="verifier", dynamic_ncols=True, disable=not progress):
        idx = order[s]
        batch = {"tokens_BT": tokens_NT[idx], "valid_BT": valid_NT[idx], "label_B": y[idx]}
        state, m = update(state, batch)
        pending.append(m)
        if len(pending) >= log_every:
            drain()
    drain()

    k = min(10, steps)
    mean_of = lambda key, rows: float(np.mean([h[key] for h in rows]))
    metrics = {
        "positive_rate": positive_rate,
        "w0": w0,
        "w1": w1,
        "count": float(y.size),
        "init_copied_leaves": float(len(copied)),
        "train_truncated": float(data["truncated_B"].sum()),
        "width": float(width),
        "train/loss_first": mean_of("loss", history[:k]),
        "train/loss_last": mean_of("loss", history[-k:]),
        "train/bce_last": mean_of("bce", history[-k:]),
        "train/accuracy_last": mean_of("accuracy", history[-k:]),
        "skipped_steps": float(monitor.total),
    }
    if eval_data is not None:
        ep, ec, el = eval_data
        report = evaluate_verifier(state.params, cfg, tokenizer, ep, ec, el)
        metrics.update({f"eval/{k}": v for k, v in report.items()})
    return state.params, metrics
