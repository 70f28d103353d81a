"""Each prompt's distinct completions, once: the columns a deterministic per-completion computation needs.

A frozen model's log-prob of a completion, or a verifier's score of it, depends on the prompt and the
completion only, and a policy's M samples of one prompt repeat (on the arith task often 20 of 32 are one
text). Computing one column per distinct completion and giving every sample its completion's value is exact:

    cols_BK    <- per prompt, the first sample of each distinct completion (in sample order), then other
                  samples to fill K, the smallest power of two >= the largest number of distinct completions
                  of a prompt (few shapes compile)
    value_BK   <- f(prompt_b, completion at cols_BK[b, k])
    value_BM   <- value_BK[b, source_BM[b, m]]

`source_BM[b, m]` is the column of sample m's completion (-1 for samples outside `active_BM`: no value).
Used by the fine-tuning update and its reference passes (`bon_jax.pipeline.update_rows`) and by the
learned verifier's scoring (`bon_jax.verifiers.learned.LearnedVerifier.score`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def distinct_columns(
    keys_BM: Sequence[Sequence[Hashable]], active_BM: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(cols_BK, source_BM), int32: one column per distinct key among each prompt's active samples (all,
    if `active_BM` is None), padded with the prompt's other samples to K, a power of two; None if K would
    be M (nothing to save). keys_BM: B rows of M hashable keys (a completion's text, or its tokens' bytes);
    equal keys of one prompt must have equal values. The columns of a prompt are distinct."""
    B = len(keys_BM)
    M = len(keys_BM[0]) if B else 0
    if any(len(row) != M for row in keys_BM):
        raise ValueError(f"distinct_columns wants B rows of M keys, got rows of {sorted({len(r) for r in keys_BM})}")
    active_BM = np.ones((B, M), bool) if active_BM is None else np.asarray(active_BM, bool)
    if active_BM.shape != (B, M):
        raise ValueError(f"active_BM has shape {active_BM.shape}, the keys are {(B, M)}")
    source_BM = np.full((B, M), -1, np.int32)
    firsts = []  # per prompt: the first sample of each distinct key, in order of appearance
    for b in range(B):
        column_of: dict[Hashable, int] = {}
        firsts.append([])
        for m in np.flatnonzero(active_BM[b]):
            key = keys_BM[b][m]
            if key not in column_of:
                column_of[key] = len(firsts[b])
                firsts[b].append(int(m))
            source_BM[b, m] = column_of[key]
    k = 1 << max(max((len(f) for f in firsts), default=0) - 1, 0).bit_length()
    if k >= M:
        return None
    cols_BK = np.zeros((B, k), np.int32)
    for b, first in enumerate(firsts):
        taken = set(first)
        cols_BK[b] = first + [m for m in range(M) if m not in taken][: k - len(first)]
    return cols_BK, source_BM


def token_keys(tokens_BMT, lengths_BM) -> list[list[bytes]]:
    """Each sample's completion tokens up to its length, as bytes (a `distinct_columns` key)."""
    tokens_BMT, lengths_BM = np.asarray(tokens_BMT), np.asarray(lengths_BM)
    B, M = lengths_BM.shape
    return [[tokens_BMT[b, m, : lengths_BM[b, m]].tobytes() for m in range(M)] for b in range(B)]


__all__ = ["distinct_columns", "token_keys"]
