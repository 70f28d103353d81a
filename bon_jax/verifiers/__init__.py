"""Verifiers s(x, y): the learned scalar-head model, the task oracle, the sentiment scorer; their training,
calibration metrics, sampler-output packing and save / load."""

from bon_jax.verifiers.base import (
    OracleVerifier,
    Samples,
    SentimentVerifier,
    Verifier,
    completion_texts,
)
from bon_jax.verifiers.calibration import (
    auc,
    binary_cross_entropy,
    binary_metrics,
    calibration_bins,
    expected_calibration_error,
)
from bon_jax.verifiers.io import load_verifier, save_verifier
from bon_jax.verifiers.learned import (
    HAZARD_OFFSET,
    POOLINGS,
    LearnedVerifier,
    encode_pairs,
    init_verifier_params,
    noisy_or_logit,
    score_completion_tokens,
    score_tokens,
    sequence_logits,
)
from bon_jax.verifiers.packing import pack_prompt_completion
from bon_jax.verifiers.train import (
    RANKINGS,
    bce_loss,
    class_weights,
    evaluate_verifier,
    pairwise_accuracy,
    ranking_loss,
    train_verifier,
)

__all__ = [
    "HAZARD_OFFSET", "POOLINGS", "LearnedVerifier", "OracleVerifier", "Samples", "SentimentVerifier", "Verifier", "auc",
    "bce_loss", "binary_cross_entropy", "binary_metrics", "calibration_bins", "class_weights",
    "completion_texts", "encode_pairs", "evaluate_verifier", "expected_calibration_error",
    "init_verifier_params", "load_verifier", "noisy_or_logit", "pack_prompt_completion", "pairwise_accuracy", "RANKINGS", "ranking_loss",
    "save_verifier",
    "score_completion_tokens", "score_tokens", "sequence_logits", "train_verifier",
]
