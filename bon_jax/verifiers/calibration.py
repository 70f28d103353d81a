"""How well a verifier's scores separate and how well its probabilities are calibrated (numpy, float64).

For scores s_i and binary labels y_i with P positives and Q negatives:

    AUC = (1 / PQ) sum_{i: y_i=1} sum_{j: y_j=0} ( [s_i > s_j] + 1/2 [s_i = s_j] )

the Mann-Whitney U statistic over PQ: the probability that a random positive outranks a random negative,
ties counted half. Computed exactly in O(n log n) from mid-ranks (tied scores share the mean of their ranks):
U = sum_{i: y_i=1} rank_i - P (P + 1) / 2.

For probabilities p_i (a learned verifier's sigmoid(logit)) and `num_bins` equal-width bins
B_k = [k/K, (k+1)/K) (the last bin closed at 1):

    ECE = sum_k (|B_k| / n) | mean_{i in B_k} y_i - mean_{i in B_k} p_i |

0 for a perfectly calibrated set in the infinite-sample limit; a finite calibrated set of n points has an
ECE of order sqrt(K / n).
"""

from __future__ import annotations

import numpy as np


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 (or bool)")
    return s, y.astype(bool)


def midranks(x) -> np.ndarray:
    """1-based ranks of `x` with ties given the mean of the ranks they span (float64)."""
    x = np.asarray(x).reshape(-1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts  # how many values are strictly smaller than each distinct value
    return (below + (counts + 1) / 2.0)[inverse.reshape(-1)]


def auc(scores, labels) -> float:
    """Exact ROC AUC (Mann-Whitney U / PQ, ties count 1/2); nan when a class is absent."""
    s, y = _scores_labels(scores, labels)
    P = int(y.sum())
    Q = y.size - P
    if P == 0 or Q == 0:
        return float("nan")
    U = midranks(s)[y].sum() - P * (P + 1) / 2.0
    return float(U / (P * Q))


def calibration_bins(probs, labels, num_bins: int = 10) -> dict[str, np.ndarray]:
    """Per equal-width bin of [0, 1]: `count`, `mean_prob`, `mean_label` (0 where a bin is empty)."""
    p, y = _scores_labels(probs, labels)
    if num_bins < 1:
        raise ValueError(f"num_bins must be positive, got {num_bins}")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    bin_i = np.minimum(np.floor(p * num_bins).astype(np.int64), num_bins - 1)
    count = np.bincount(bin_i, minlength=num_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return {
        "count": count,
        "mean_prob": np.bincount(bin_i, weights=p, minlength=num_bins) / safe,
        "mean_label": np.bincount(bin_i, weights=y.astype(np.float64), minlength=num_bins) / safe,
    }


def expected_calibration_error(probs, labels, num_bins: int = 10) -> float:
    """ECE over `num_bins` equal-width probability bins (see the module docstring); nan for no data."""
    bins = calibration_bins(probs, labels, num_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    gap = np.abs(bins["mean_label"] - bins["mean_prob"])
    return float((bins["count"] / n * gap).sum())


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def binary_cross_entropy(logits, labels) -> float:
    """Mean of softplus(z) - y z = -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))], stable in z."""
    z, y = _scores_labels(logits, labels)
    if z.size == 0:
        return float("nan")
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def binary_metrics(logits, labels, *, num_bins: int = 10) -> dict[str, float]:
    """A verifier's held-out report from its logits: auc, ece (of sigmoid(logit)), accuracy (at logit 0,
    i.e. probability 1/2), bce, positive_rate, mean_prob, count."""
    z, y = _scores_labels(logits, labels)
    p = sigmoid(z)
    n = z.size
    return {
        "auc": auc(z, y),
        "ece": expected_calibration_error(p, y, num_bins) if n else float("nan"),
        "accuracy": float(np.mean((z > 0) == y)) if n else float("nan"),
        "bce": binary_cross_entropy(z, y),
        "positive_rate": float(np.mean(y)) if n else float("nan"),
        "mean_prob": float(np.mean(p)) if n else float("nan"),
        "count": float(n),
    }
