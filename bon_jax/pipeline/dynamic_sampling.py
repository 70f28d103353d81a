"""Dynamic sampling: fill the fine-tuning step's batch with prompts whose M rewards are not all equal.

A prompt whose M samples all have the same reward (all right or all wrong) carries no signal about which
samples to reinforce: its group-baselined weights are zero (RLOO `kl_rl`, `bon_rl`, `pkpo`, `vbon`, GRPO),
or nonzero only through a baseline that does not depend on the rewards (docs/objectives.md, "Dynamic
sampling"). With `rl.dynamic_sampling = k`, the step draws more prompts until B informative ones are held
(DAPO's dynamic sampling, with a bounded number of rounds):

    round 0:     prompts <- next batch of B;  g_0 <- draw(prompts, k_sample)          (the step as without it)
    round r:     while fewer than B informative prompts are held and r <= k:
                 prompts <- next batch of B;  g_r <- draw(prompts, fold_in(k_sample, r))
    the batch:   the informative prompts in draw order, the first B of them; if fewer than B were found,
                 completed with uninformative ones in draw order (round 0's first), so its shape stays [B, ...]

"Informative" is decided by the ground-truth reward R, also for the objectives that pick their Best-of-N
winner by the verifier's score (`bon_rl_v`, `bon_rl`): the criterion is the reward's spread, as in issue 15.

`target = "verifier_misses"` (objectives that select by the verifier's score) gives up to `miss_share` of
the batch, C = ceil(miss_share B) prompts, to the verifier's misses (its top-scored samples are worse, on
average over ties, than the prompt's best sample: a Best-of-N pick that is wrong while a right sample
exists), then fills it with the other informative prompts, then the rest, each in draw order; rounds are
drawn while fewer than C misses or fewer than B informative prompts are held. Misses are the prompts where
Best-of-N by the verifier loses what the policy already has, the only ones on which BoN@N can rise without
pass@N rising (docs/lab_notes/rl_diagnosis.md, "Why BoN@32 barely moves"). Why a share and not all of the
batch: with N = M (`bon_rl_v` at N' = 32 of 32 samples) only the top-scored sample of a prompt carries
weight, R(y*) - b(x), so on a miss it is -b(x); a value baseline regressed on misses alone learns b ~ 0 and
the update vanishes (tried: weights ~1e-3 over the first ten steps). Every drawn prompt is scored by the
verifier, not only the kept ones.
Every round's key derives from the step's key and the round's index, and its prompts are the data
iterator's next batches (whose state the training loop checkpoints after the step), so a resumed run draws
exactly what an uninterrupted one did.

An extra round is drawn in chunks of `chunk` consecutive prompts of its batch, stopping at the first chunk
after which nothing is short (issue 14: with 85% of round 0 informative, the default step needed about 2
more prompts of 16, yet drew all 16 x 32 samples). This changes no sample and no choice: the sampler seeds
each prompt's samples by its id (`prompt_ids_B`), not by its batch position or neighbours, and a chunk keeps
its batch's prompt width, so a chunk draws exactly its prompts' rows of the whole round's draw. And the
batch is the first B prompts by level, in draw order: once the drawn prompts hold B informative ones (and
the C misses the target asks for), every prompt not drawn comes later in draw order than B that qualify
at its level or above (a miss past the first C counts as informative), so it would not have been taken.
Checked end to end at the default (`mixed_rewards`): its fine-tuning stage gave bit-identical params
(docs/lab_notes/performance.md). `verifier_misses` also reads the verifier's scores of each chunk; they are
a function of the prompt and completion alone, but a smaller scoring batch could in principle round
differently, and that target has not been rerun.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from bon_jax.config import DYNAMIC_SAMPLING_TARGETS
from bon_jax.pipeline.rollouts import GradedSamples


def informative_B(rewards_BM) -> np.ndarray:
    """[B] bool: the prompt's M rewards are not all equal (a group with one sample is never informative)."""
    rewards_BM = np.asarray(rewards_BM)
    return np.any(rewards_BM != rewards_BM[:, :1], axis=1)


def verifier_miss_B(rewards_BM, scores_BM) -> np.ndarray:
    """[B] bool: the mean reward of the prompt's top-scored samples (all of them, if tied) is below its best
    reward: Best-of-N by the score loses reward the samples hold."""
    rewards_BM, scores_BM = np.asarray(rewards_BM, np.float64), np.asarray(scores_BM)
    top_BM = scores_BM == scores_BM.max(axis=1, keepdims=True)
    picked_B = (rewards_BM * top_BM).sum(axis=1) / top_BM.sum(axis=1)
    return picked_B < rewards_BM.max(axis=1)


TARGETS = DYNAMIC_SAMPLING_TARGETS  # named once, in the config that validates them
# A prompt's level (`levels_B`): the batch is filled from the highest level down.
UNINFORMATIVE, INFORMATIVE, MISS = 0, 1, 2


def cap_misses(levels_R: Sequence[np.ndarray], cap: int) -> list[np.ndarray]:
    """`levels_R` (the rounds' levels) with the misses after the first `cap` in draw order moved to
    INFORMATIVE: they count as other informative prompts."""
    out, seen = [], 0
    for v in levels_R:
        v = np.array(v, np.int64)
        for i in np.flatnonzero(v == MISS):
            seen += 1
            if seen > cap:
                v[i] = INFORMATIVE
        out.append(v)
    return out


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def levels_B(g: GradedSamples, target: str) -> np.ndarray:
    """[B] int: how much the step wants each prompt (higher first). "mixed_rewards": INFORMATIVE or
    UNINFORMATIVE; "verifier_misses": MISS (a verifier miss, always informative), else as "mixed_rewards"."""
    _check_target(target)
    level = informative_B(g.rewards_BM).astype(np.int64)
    if target == "verifier_misses":
        if g.scores_BM is None:
            raise ValueError("target 'verifier_misses' needs the samples' verifier scores (scores_BM is None)")
        level = level + verifier_miss_B(g.rewards_BM, g.scores_BM)
    return level


def take_rows(g: GradedSamples, rows_K) -> GradedSamples:
    """The samples of the prompts `rows_K` (indices into B, in that order, repeats allowed): row k of every
    field of the result is row rows_K[k] of the same field of `g`, arrays and lists of lists alike."""
    rows_K = np.asarray(rows_K, np.int64).reshape(-1)
    B = len(g.prompt_lengths_B)
    if rows_K.size and not (0 <= rows_K.min() and rows_K.max() < B):
        raise IndexError(f"rows {rows_K.tolist()} outside the {B} prompts of the samples")
    out = {}
    for f in dataclasses.fields(g):
        value = getattr(g, f.name)
        if value is None:  # a field not filled in (scores_BM of unscored samples)
            out[f.name] = None
            continue
        if len(value) != B:
            raise ValueError(f"GradedSamples.{f.name} has {len(value)} rows, prompt_lengths_B has {B}")
        out[f.name] = value[rows_K] if isinstance(value, np.ndarray) else [value[i] for i in rows_K]
    return GradedSamples(**out)


def concat_rows(parts: Sequence[GradedSamples], pad_id: int) -> GradedSamples:
    """The prompts of all `parts`, one after another. Prompts are left-padded with `pad_id` to the widest
    part's width (batches of other length buckets); every other field must have the same trailing shape."""
    width = max(p.prompt_tokens_BT.shape[1] for p in parts)
    out = {}
    for f in dataclasses.fields(GradedSamples):
        values = [getattr(p, f.name) for p in parts]
        if any(v is None for v in values):
            if not all(v is None for v in values):
                raise ValueError(f"GradedSamples.{f.name} is filled in some parts and None in others")
            out[f.name] = None
            continue
        if f.name == "prompt_tokens_BT":
            values = [np.pad(v, ((0, 0), (width - v.shape[1], 0)), constant_values=pad_id) for v in values]
        if isinstance(values[0], np.ndarray):
            shapes = {v.shape[1:] for v in values}
            if len(shapes) > 1:
                raise ValueError(f"GradedSamples.{f.name}: parts of trailing shapes {sorted(shapes)}")
            out[f.name] = np.concatenate(values, axis=0)
        else:
            out[f.name] = [row for v in values for row in v]
    return GradedSamples(**out)


def batch_rows(levels_R: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
    """Indices into the concatenated rounds' prompts: the first `batch_size` by level (highest first; bool
    flags are levels 1 and 0), in draw order within a level."""
    levels = np.concatenate([np.asarray(f).astype(np.int64) for f in levels_R])
    if len(levels) < batch_size:
        raise ValueError(f"{len(levels)} prompts drawn, the batch needs {batch_size}")
    return np.argsort(-levels, kind="stable")[:batch_size]


def _any_process(flag: bool) -> bool:
    """True if `flag` holds on any process: every process then takes the same number of rounds (the
    sampler's collectives must stay in lockstep)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def prompt_chunks(batch: dict, chunk: int) -> list[dict]:
    """The prompt batch {"prompt_tokens_BT", "prompt_lengths_B", "index_B"} as consecutive slices of
    `chunk` prompts (the last one shorter if `chunk` does not divide B), each at the batch's prompt width."""
    B = len(batch["index_B"])
    return [{name: value[i : i + chunk] for name, value in batch.items()} for i in range(0, B, chunk)]


def draw_informative(
    next_batch: Callable[[], dict],
    draw: Callable[[dict, jax.Array], GradedSamples],
    key: jax.Array,
    *,
    rounds: int,
    pad_id: int,
    target: str = "mixed_rewards",
    miss_share: float = 1.0,
    chunk: int | None = None,
) -> tuple[dict, GradedSamples, dict]:
    """One step's prompts and samples under dynamic sampling with up to `rounds` extra rounds (module doc).

    `next_batch()` returns the data iterator's next prompt batch {"prompt_tokens_BT", "prompt_lengths_B",
    "index_B"}; `draw(batch, key)` samples and grades it. Round 0 uses `key` itself, so `rounds = 0` is the
    plain step (its batch and samples returned as drawn). Returns (the kept prompt batch, their samples,
    host metrics): `sample/informative_frac` (of round 0's prompts), `sample/informative_batch_frac` (of the
    returned batch), `sample/draw_rounds` (rounds drawn, round 0 included) and `sample/draw_prompts`
    (prompts drawn; extra rounds are drawn `chunk` prompts at a time, default: all B); with `target =
    "verifier_misses"` (`draw` must score the samples) also `sample/verifier_miss_frac` and
    `sample/verifier_miss_batch_frac`, the same for the verifier's misses.
    """
    if not (isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    _check_target(target)
    if not 0.0 < miss_share <= 1.0:
        raise ValueError(f"miss_share must be in (0, 1], got {miss_share!r}")
    batch = next_batch()
    graded = [draw(batch, key)]
    ids = [np.asarray(batch["index_B"])]
    levels = [levels_B(graded[0], target)]
    B = len(levels[0])
    if chunk is None:
        chunk = B
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    cap = int(np.ceil(miss_share * B)) if target == "verifier_misses" else 0
    held = lambda level: int(sum((v >= level).sum() for v in levels))
    short = lambda: held(INFORMATIVE) < B or held(MISS) < cap
    r = 0
    while r < rounds and _any_process(short()):
        r += 1
        key_r = jax.random.fold_in(key, r)
        for i, part in enumerate(prompt_chunks(next_batch(), chunk)):
            if i and not _any_process(short()):
                break
            graded.append(draw(part, key_r))
            ids.append(np.asarray(part["index_B"]))
            levels.append(levels_B(graded[-1], target))
    raw, levels = levels, cap_misses(levels, cap)
    if r == 0 and target == "mixed_rewards":  # off, or all of round 0 informative: the batch as drawn
        rows, g, kept = np.arange(B), graded[0], batch
    else:
        rows = batch_rows(levels, B)
        g = take_rows(concat_rows(graded, pad_id), rows)
        kept = {
            "prompt_tokens_BT": g.prompt_tokens_BT,
            "prompt_lengths_B": g.prompt_lengths_B,
            "index_B": np.concatenate(ids)[rows],
        }
    every = np.concatenate(raw)
    metrics = {
        "sample/informative_frac": float((raw[0] >= INFORMATIVE).mean()),
        "sample/informative_batch_frac": float((every[rows] >= INFORMATIVE).mean()),
        "sample/draw_rounds": float(r + 1),
        "sample/draw_prompts": float(len(every)),
    }
    if target == "verifier_misses":
        metrics["sample/verifier_miss_frac"] = float((raw[0] == MISS).mean())
        metrics["sample/verifier_miss_batch_frac"] = float((every[rows] == MISS).mean())
    return kept, g, metrics


__all__ = [
    "TARGETS",
    "batch_rows",
    "cap_misses",
    "concat_rows",
    "draw_informative",
    "informative_B",
    "levels_B",
    "prompt_chunks",
    "take_rows",
    "verifier_miss_B",
]
