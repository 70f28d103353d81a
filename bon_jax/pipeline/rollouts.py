"""From prompts to a graded, scored rollout: sample `[B, M]` completions, decode, grade, score.

Sampling and scoring are jitted device work; decoding and grading are host work on text (ground truth is
a string comparison, a sandboxed test run or a sentiment scorer), which is why a BoN-RL step is three
calls (sample -> grade -> update) rather than one: the host round trip per step is inherent to grading
text, and it moves `[B, M, T]` int32 tokens, not activations.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.sampling import sample, sequence_logprobs
from bon_jax.tasks.base import Example
from bon_jax.verifiers.base import Samples, Verifier


@dataclasses.dataclass
class GradedSamples:
    """M samples of each of B prompts, with everything the objectives and metrics need (host arrays)."""

    prompt_tokens_BT: np.ndarray  # left-padded, bos first
    prompt_lengths_B: np.ndarray
    tokens_BMT: np.ndarray
    lengths_BM: np.ndarray
    logp_BM: np.ndarray  # sequence log-prob under pi_tau = softmax(logits / temperature) (see draw_graded)
    token_logp_BMT: np.ndarray  # its per-token terms (0 after each completion's end)
    texts_BM: list[list[str]]
    rewards_BM: np.ndarray
    answers_BM: np.ndarray
    scores_BM: np.ndarray | None  # None: not scored (draw_graded(score=False); `with_scores` adds them)
    finished_BM: np.ndarray  # ended with eos (not cut at max_new_tokens)


def decode_completions(tokenizer, tokens_BMT: np.ndarray, lengths_BM: np.ndarray) -> list[list[str]]:
    B, M, _ = tokens_BMT.shape
    return [[tokenizer.decode(tokens_BMT[b, i, : lengths_BM[b, i]]) for i in range(M)] for b in range(B)]


def draw_graded(
    params,
    model_cfg,
    tokenizer,
    task,
    verifier: Verifier,
    examples_B: Sequence[Example],
    prompt_tokens_BT: np.ndarray,
    prompt_lengths_B: np.ndarray,
    m: int,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    prompt_ids_B: np.ndarray | None = None,
    score: bool = True,
) -> GradedSamples:
    """Samples M completions of each prompt, decodes and grades them, and (with `score`) scores them by
    `verifier`. `score=False` leaves `scores_BM` None, for callers that need no scores or score only the
    prompts they keep (`with_scores`): the verifier's forward costs more than sampling short completions."""
    # The policy being sampled (and trained, and compared to the reference) is pi_tau = softmax(l / tau):
    # its log-probs are the sampler's 'sampling' ones when no top-k / top-p truncation applies. Truncation
    # is not part of the differentiable policy: with it, logp_BM is the untruncated temperature-1 log-prob
    # (the sampler's 'policy' mode) and the objectives see samples from a different sampler (off-policy).
    truncated = bool(top_k) or top_p < 1.0
    out = sample(
        params,
        model_cfg,
        prompt_tokens_BT,
        m,
        rng,
        max_new_tokens=max_new_tokens,
        prompt_lengths_B=prompt_lengths_B,
        padding_side="left",
        pad_id=tokenizer.pad_id,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p if top_p < 1.0 else None,
        eos_id=tokenizer.eos_id,
        prompt_ids_B=prompt_ids_B,
        logprobs="sampling" if temperature != 1.0 and not truncated else "policy",
    )
    tokens_BMT, logprobs_BMT, lengths_BM = jax.device_get((out.tokens_BMT, out.logprobs_BMT, out.lengths_BM))
    B, M, T = tokens_BMT.shape
    last_BM = tokens_BMT[np.arange(B)[:, None], np.arange(M)[None], np.maximum(lengths_BM - 1, 0)]
    finished_BM = (lengths_BM > 0) & (last_BM == tokenizer.eos_id)
    # The eos is scored by the objectives (it is part of the sampled sequence) but not shown to graders.
    text_lengths_BM = lengths_BM - finished_BM
    texts_BM = decode_completions(tokenizer, tokens_BMT, text_lengths_BM)
    grades = task.grade_batch(examples_B, texts_BM)
    g = GradedSamples(
        prompt_tokens_BT=np.asarray(prompt_tokens_BT),
        prompt_lengths_B=np.asarray(prompt_lengths_B),
        tokens_BMT=tokens_BMT,
        lengths_BM=lengths_BM,
        logp_BM=logprobs_BMT.sum(-1),
        token_logp_BMT=logprobs_BMT,
        texts_BM=texts_BM,
        rewards_BM=np.asarray(grades.rewards_BM, np.float32),
        answers_BM=grades.answers_BM,
        scores_BM=None,
        finished_BM=finished_BM,
    )
    return with_scores(g, verifier, examples_B) if score else g


def with_scores(g: GradedSamples, verifier: Verifier, examples_B: Sequence[Example]) -> GradedSamples:
    """`g` with `scores_BM` = the verifier's scores of its samples (`examples_B`: the prompts' examples)."""
    scores_BM = verifier.score(examples_B, Samples(
        tokens_BMT=g.tokens_BMT, lengths_BM=g.lengths_BM, prompt_tokens_BT=g.prompt_tokens_BT,
        texts_BM=g.texts_BM, rewards_BM=g.rewards_BM))
    return dataclasses.replace(g, scores_BM=np.asarray(scores_BM, np.float32))


def completion_width(lengths_BM, max_width: int, multiple: int = 16) -> int:
    """The completion width a batch needs: its longest completion rounded up to a multiple of `multiple`
    (a few static widths, each compiled once), at most `max_width`. Past each completion's length there
    is only padding, which every log-prob masks, so cutting to this width changes no quantity."""
    longest = int(np.max(lengths_BM, initial=0))
    return min(max_width, max(multiple, -(-longest // multiple) * multiple))


def cut_completions(g: GradedSamples, width: int) -> GradedSamples:
    """`g` with its `[B, M, T]` token fields cut to `width` (>= every completion's length)."""
    if width < int(np.max(g.lengths_BM, initial=0)):
        raise ValueError(f"cut_completions: width {width} is shorter than a completion "
                         f"({int(np.max(g.lengths_BM))} tokens)")
    return dataclasses.replace(g, tokens_BMT=g.tokens_BMT[:, :, :width],
                               token_logp_BMT=g.token_logp_BMT[:, :, :width])


def make_sequence_logp(model_cfg, temperature: float = 1.0, *, per_token: bool = False):
    """jitted `(params, prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM) -> logp_BM` (token sum) under
    pi_tau = softmax(logits / temperature); with `per_token`, the terms `logp_BMT` (0 past each length)."""

    @jax.jit
    def logp(params, prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM):
        tok = sequence_logprobs(
            params,
            model_cfg,
            prompts_BT,
            tokens_BMT,
            completion_lengths_BM=lengths_BM,
            prompt_lengths_B=prompt_lengths_B,
            padding_side="left",
            temperature=temperature,
        )
        return tok if per_token else tok.sum(-1)

    return logp


def kl_estimates(token_logp_BMT, ref_token_logp_BMT, lengths_BM) -> tuple[np.ndarray, np.ndarray]:
    """(k1_BM, k3_BM): two unbiased estimates of KL(pi || pi_ref) per sampled sequence y ~ pi.

    With l_t = log pi_ref(y_t | y_<t) - log pi(y_t | y_<t) over the completion's tokens t < length:
        k1 = -sum_t l_t                        (the sequence log-ratio; any sign, high variance)
        k3 = sum_t (exp(l_t) - 1 - l_t)        (per token >= 0; E_pi[exp(l_t) - 1 | y_<t] = 0, so each term's
                                               mean is the next-token KL and the sum's mean is the sequence KL)
    Schulman's k1 / k3 estimators (docs/objectives.md, "KL estimates")."""
    valid = np.arange(np.shape(token_logp_BMT)[-1]) < np.asarray(lengths_BM)[..., None]
    l_BMT = np.where(valid, np.asarray(ref_token_logp_BMT, np.float64) - np.asarray(token_logp_BMT, np.float64), 0.0)
    return -l_BMT.sum(-1), (np.expm1(l_BMT) - l_BMT).sum(-1)


def bon_winners(select_BM, rng: jax.Array) -> np.ndarray:
    """[B] index of the Best-of-N winner of each row: the largest `select_BM`, ties broken uniformly at
    random (one draw of pi_BoN(pi, s, N) from N iid samples of pi, docs/objectives.md)."""
    select_BM = np.asarray(select_BM)
    tie_break_BM = np.asarray(jax.random.uniform(rng, select_BM.shape))
    top_BM = select_BM == select_BM.max(axis=1, keepdims=True)
    return np.argmax(np.where(top_BM, tie_break_BM, -1.0), axis=1)


class ReferenceSamples:
    """K graded samples of pi_ref per training prompt, drawn once and kept on disk (`path`, an .npz).

    vBoN's reward CDFs under pi_ref are a property of (pi_ref, prompt), not of the training step: each
    prompt's K reference rewards (and verifier scores) are drawn the first time the prompt is met and
    reused at every later step, by resumed runs, and by every run (sweep point) whose cache shares `path`.
    `lookup(ids_B, draw)` returns `(rewards_BK, scores_BK)`; `draw()` is called only if some prompt of the
    batch is missing and must return the batch's `[B, K]` rewards and scores. A prompt's samples depend on
    its id, not its batch (`sampling.sample`'s prompt_ids_B), so runs filling the same file concurrently
    draw the same values; the file is rewritten atomically, merged with what others wrote meanwhile.
    """

    def __init__(self, path: str, k: int):
        if k < 1:
            raise ValueError(f"ReferenceSamples needs k >= 1, got {k}")
        self.path, self.k = path, k
        self.rewards: dict[int, np.ndarray] = {}
        self.scores: dict[int, np.ndarray] = {}
        self.draws = 0  # batches drawn by this process (tests)
        self._merge_from_disk()

    def _merge_from_disk(self) -> None:
        if not os.path.exists(self.path):
            return
        with np.load(self.path) as z:
            if z["rewards_PK"].shape[1] != self.k:
                raise ValueError(f"{self.path} holds K = {z['rewards_PK'].shape[1]} samples, expected {self.k}")
            for i, r, s in zip(z["ids_P"], z["rewards_PK"], z["scores_PK"]):
                self.rewards.setdefault(int(i), r)
                self.scores.setdefault(int(i), s)

    def _save(self) -> None:
        self._merge_from_disk()
        ids = sorted(self.rewards)
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(
                f,
                ids_P=np.asarray(ids, np.int64),
                rewards_PK=np.stack([self.rewards[i] for i in ids]),
                scores_PK=np.stack([self.scores[i] for i in ids]),
            )
        os.replace(tmp, self.path)

    def lookup(self, ids_B, draw: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        ids_B = [int(i) for i in ids_B]
        if any(i not in self.rewards for i in ids_B):
            rewards_BK, scores_BK = (np.asarray(x, np.float32) for x in draw())
            if rewards_BK.shape != (len(ids_B), self.k) or scores_BK.shape != rewards_BK.shape:
                raise ValueError(f"reference draw returned {rewards_BK.shape}, expected {(len(ids_B), self.k)}")
            self.draws += 1
            for i, r, s in zip(ids_B, rewards_BK, scores_BK):
                self.rewards.setdefault(i, r)
                self.scores.setdefault(i, s)
            self._save()
        return np.stack([self.rewards[i] for i in ids_B]), np.stack([self.scores[i] for i in ids_B])


def as_jnp(tree):
    return jax.tree.map(jnp.asarray, tree)
