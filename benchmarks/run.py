"""bon_jax benchmarks: the machine's matmul roofline, sampler throughput, one BoN-RL training step.

    make bench [ARGS="--quick"]                      # = .venv/bin/python -m benchmarks.run $(ARGS)
    python -m benchmarks.run --only=sampler,train --repeats=9 --out=/tmp/bench.json

Prints tables and writes benchmarks/results/<YYYY-MM-DD>-<hostname>.json (`--quick`: ...-quick.json).
Run it on an IDLE machine: on a 2-core machine any other process skews every timing. The run measures the
CPU share other processes use (a 1 s probe before, and the whole run) and warns above 10% of the cores.

Timing. Every figure is the median of `--repeats` runs (default 5) after the first call (which compiles)
and `--warmup` untimed runs (default 1), with min and max; each run ends in `jax.block_until_ready`.
Compile time: matmul -- `jax.jit(f).lower(a, b).compile()` timed; sampler and train phases -- the first
call minus the steady-state median (jit caches are cleared before each case, so each case compiles).

1. matmul: jitted square `a @ b` in float32 and bfloat16 (`--matmul-sizes`, default 1024 and 2048),
   2 n^3 FLOPs per product; a timed run repeats the product back to back until it lasts
   `--matmul-min-run-s`, so dispatch overhead is amortised. The float32 peak (the best median FLOP/s over
   the sizes) is the roofline every other FLOP/s figure is a fraction of.
2. sampler: `bon_jax.sampling.sample` (prefill once per prompt, N samples sharing its keys/values,
   while_loop decode) at
   temperature 1 with eos_id=None, so every row runs all T_new steps. Model "bench" is
   `get_config('small', vocab_size=4096, num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=1,
   head_dim=64, mlp_dim=1024)` (its param shapes are checked); cases: B=8 prompts of T_p=64 tokens x N=32
   samples x T_new=64 new tokens; the same at T_p = 8 and 512; at N = 1, 4, 32, 128; the named `small`
   config (vocab 1024); and the base case in bfloat16 (model "bench-bf16": bfloat16 activations and KV
   cache, float32 logits; the float32 params are cast once per call). tokens/s = generated tokens B * N * T_new / time.
3. train: one BoN-RL step on `small` (B=8 prompts of 64 tokens, M=32 samples of 64 tokens, objective
   bon_rl with N = M, beta 0.1, the EMA anchor's KL at coefficient 1), timed by phase as `pipeline.finetune`
   runs it:
     sample        the sampler (the policy's current params);
     grade         tokens to the host, then SYNTHETIC rewards (Bernoulli 1/2) drawn with numpy -- no text
                   decoding or task grading, so this is a lower bound on real grading -- plus building and
                   validating the Rollout;
     verifier      the learned verifier's scores of the samples (`score_completion_tokens`, a scalar-head
                   `small` of `--train-pooling`, default the default experiment's 'likelihood'; each prompt
                   through the backbone once); the pipeline first re-encodes the decoded texts (host work,
                   not timed here);
     ref_logprobs  the jitted reference-policy forward (`rollouts.make_sequence_logp`) for the KL term;
     anchor        the same forward under the EMA anchor's params (`--no-train-anchor`: skipped);
     update        `jax.jit(make_update_step(rl_loss(...), adamw(...)), donate_argnums=0)`:
                   sequence_logprobs forward + backward, the objective, clipping and AdamW.
4. stages: the stages of an experiment run (`--run-dir`, default runs/arith_bo32, what `make train` writes)
   with their wall time and share of the run, read from the timing each stage's done.json records
   (`bon_jax.pipeline.stage_cache`): tokenizer, sft, verifier data (the base policy's graded samples),
   verifier training, finetune, eval. Nothing is run: `make train` first, on an idle machine.

FLOP model (a multiply-add is 2 FLOPs; only matmuls and attention contractions are counted -- norms,
RoPE, soft-caps, softmaxes, sampling and the optimiser's elementwise work are not):

    P        = non-embedding params = count_params(params) - V*D   (the matmul weights plus the RMSNorm
               scales, which are < 0.2% of P here)
    attn(S)  = 4 * L * N_q * H * S     q.k and p.v of one query over S key slots, all layers
    fwd(S)   = 2 * P + attn(S)         one token through the layers (fwd(S, S_loc): local layers over S_loc)
    unemb    = 2 * D * V               one position through the tied unembedding

  sampler, R = B * N rows (prefill once per prompt; the N samples share its keys and values):
    FLOPs = sum_chunks B * |chunk| * fwd(t1) + B * unemb     prefill in query chunks [t0, t1) of 128 slots,
                                                             each scored against keys [0, t1) (masked); only
                                                             the last token is unembedded
          + R * (T_new - 1) * (fwd(T_p + T_new - 1, min(W, T_p) + T_new - 1) + unemb)
                                                             decode (token 0 comes from the prefill logits;
                                                             each step scores the T_p shared prompt slots in
                                                             global layers, the last W = window of them in
                                                             local ones, and all T_new - 1 own slots, masked)
  train, R = B * M rows (sequence_logprobs: each prompt runs once, B rows of T_p tokens against a cache of
  T = T_p + T_new slots; the R completions of T_new tokens read the tiled cache, all T slots, masked;
  only the T_new predicting positions are unembedded):
    forward      = B * T_p * fwd(T) + R * T_new * (fwd(T) + unemb)      (ref_logprobs, anchor)
    update       = 3 * forward                             (backward = 2 x forward; i.e. 6 * P per token)
    verifier     = B * T_p * fwd(T) + R * T_new * (fwd(T) + unemb if the pooling reads the surprisal)
                   (the verifier's own P, its value head included; the shared-prompt forward)
    sample phase = the sampler formula with N = M

These are EXECUTED FLOPs of this implementation (masked slots are counted as computed; outside the sampler
the sliding window of local layers is too), not the useful minimum. Achieved FLOP/s = FLOPs / median time, reported as a
fraction of the measured float32 matmul peak (all models here compute in float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import socket
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bon_jax import objectives, sampling
from bon_jax.models import AttentionType, ModelConfig, count_params, get_config, init_params
from bon_jax.models.transformer import PREFILL_CHUNK
from bon_jax.pipeline.finetune import rl_loss
from bon_jax.pipeline.rollouts import make_sequence_logp
from bon_jax.pipeline.update_rows import bucket_rows, gradient_rows
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step
from bon_jax.verifiers.learned import POOLINGS, READS_SURPRISAL, init_verifier_params, score_completion_tokens

NOTE = (
    "NOTE: run benchmarks on an IDLE machine. On a 2-core machine any other process (a training run, a test\n"
    "suite, an editor's indexer) takes a large share of the cores and skews every timing below."
)
SECTIONS = ("matmul", "sampler", "train", "stages")
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# The sampler's benchmark model: the named `small` config (local/global layers, soft-caps, sandwich norms)
# at vocab 4096.
BENCH_MODEL = dict(
    vocab_size=4096, num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=1, head_dim=64, mlp_dim=1024
)

# Sizes: full (the real measurement) and --quick (checks that every code path runs, in seconds).
FULL = dict(
    repeats=5,
    matmul_sizes=[1024, 2048],
    matmul_min_run_s=0.2,
    batch=8,
    prompt_len=64,
    n=32,
    new_tokens=64,
    prompt_lens=[8, 512],
    ns=[1, 4, 32, 128],
    train_batch=8,
    train_m=32,
    train_prompt_len=64,
    train_new_tokens=64,
)
QUICK = dict(
    repeats=2,
    matmul_sizes=[128, 256],
    matmul_min_run_s=0.01,
    batch=2,
    prompt_len=8,
    n=4,
    new_tokens=8,
    prompt_lens=[4, 16],
    ns=[1, 4],
    train_batch=2,
    train_m=4,
    train_prompt_len=8,
    train_new_tokens=8,
)


# ----------------------------------------------------------------------------- timing


def _stats(times_s: list[float]) -> dict:
    return dict(
        median_s=statistics.median(times_s), min_s=min(times_s), max_s=max(times_s), times_s=list(times_s)
    )


def time_call(fn):
    """(seconds, result) of one call of `fn`, which must block until its result is ready."""
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def steady(fn, repeats: int, warmup: int):
    """`warmup` untimed calls, then `repeats` timed ones: (stats, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        t, result = time_call(fn)
        times.append(t)
    return _stats(times), result


def _rate(amount: float, stats: dict) -> dict:
    """amount / time at the median, and its range (min time gives the max rate)."""
    return dict(median=amount / stats["median_s"], min=amount / stats["max_s"], max=amount / stats["min_s"])


def _fraction(flops_per_s: float, peak: float | None) -> float | None:
    return None if not peak else flops_per_s / peak


# ----------------------------------------------------------------------------- FLOP model


def non_embedding_params(cfg: ModelConfig, params) -> int:
    return count_params(params) - cfg.vocab_size * cfg.embed_dim


def _fwd_flops(cfg: ModelConfig, p_ne: int, keys: int, local_keys: int | None = None) -> int:
    """fwd(S) = 2 P + 4 N_q H (sum over layers of the slots each attends over): one token through the
    layers; global layers read `keys` slots, local layers `local_keys` (default: also `keys`)."""
    n_local = sum(t == AttentionType.LOCAL_SLIDING for t in cfg.attention_types)
    local_keys = keys if local_keys is None else local_keys
    slots = (cfg.num_layers - n_local) * keys + n_local * local_keys
    return 2 * p_ne + 4 * cfg.num_heads * cfg.head_dim * slots


def _unemb_flops(cfg: ModelConfig) -> int:
    return 2 * cfg.embed_dim * cfg.vocab_size


def sampler_flops(cfg: ModelConfig, p_ne: int, B: int, T_p: int, N: int, T_new: int) -> int:
    """As executed by `bon_jax.sampling` (module docstring): the prefill's query chunk [t0, t1) reads
    keys [0, t1); decode reads all T_p prompt slots in global layers, the last min(W, T_p) in local ones,
    plus the T_new - 1 generated slots."""
    chunk = PREFILL_CHUNK
    prefill = sum(
        B * (min(T_p, t0 + chunk) - t0) * _fwd_flops(cfg, p_ne, min(T_p, t0 + chunk))
        for t0 in range(0, T_p, chunk)
    ) + B * _unemb_flops(cfg)
    window = min(cfg.sliding_window_size or T_p, T_p)
    per_token = _fwd_flops(cfg, p_ne, T_p + T_new - 1, window + T_new - 1) + _unemb_flops(cfg)
    decode = B * N * (T_new - 1) * per_token
    return prefill + decode


def sequence_forward_flops(cfg: ModelConfig, p_ne: int, B: int, M: int, T_p: int, T_new: int) -> int:
    """As executed by `sampling.sequence_logprobs` (shared prompt): B prompts of T_p tokens and B * M
    completions of T_new tokens, every query scored against the cache's T_p + T_new slots (masked)."""
    per_token = _fwd_flops(cfg, p_ne, T_p + T_new)
    return B * T_p * per_token + B * M * T_new * (per_token + _unemb_flops(cfg))


def verifier_forward_flops(cfg: ModelConfig, p_ne: int, B: int, M: int, T_p: int, T_new: int,
                           surprisal: bool) -> int:
    """As executed by `verifiers.learned.score_completion_tokens` (shared prompt): `sequence_forward_flops`
    without the unembedding unless the pooling reads the backbone's surprisal."""
    per_token = _fwd_flops(cfg, p_ne, T_p + T_new)
    return B * T_p * per_token + B * M * T_new * (per_token + (_unemb_flops(cfg) if surprisal else 0))


# ----------------------------------------------------------------------------- models


def bench_config() -> ModelConfig:
    return get_config("small", **BENCH_MODEL)


def expected_param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The param tree `models.Transformer` must build for `cfg` (see models/attention.py, layers.py)."""
    V, D, N, K, H, F = (
        cfg.vocab_size,
        cfg.embed_dim,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.mlp_dim,
    )
    shapes = {("embedder", "input_embedding"): (V, D), ("final_norm", "scale"): (D,)}
    for i in range(cfg.num_layers):
        layer = f"layer_{i}"
        shapes[(layer, "attn", "q_einsum", "w")] = (N, D, H)
        shapes[(layer, "attn", "kv_einsum", "w")] = (2, K, D, H)
        shapes[(layer, "attn", "attn_vec_einsum", "w")] = (N, H, D)
        shapes[(layer, "mlp", "gating_einsum", "w")] = (2, D, F)
        shapes[(layer, "mlp", "linear", "w")] = (F, D)
        norms = ["pre_attention_norm", "pre_ffw_norm"]
        norms += ["post_attention_norm"] if cfg.use_post_attn_norm else []
        norms += ["post_ffw_norm"] if cfg.use_post_ffw_norm else []
        for norm in norms:
            shapes[(layer, norm, "scale")] = (D,)
        if cfg.use_qk_norm:
            shapes[(layer, "attn", "query_norm", "scale")] = (H,)
            shapes[(layer, "attn", "key_norm", "scale")] = (H,)
    return shapes


def check_params(cfg: ModelConfig, params) -> None:
    got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params).items()}
    want = expected_param_shapes(cfg)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))
        raise AssertionError(f"param shapes differ from the expected ones: {diff[:6]}")


def model_summary(name: str, cfg: ModelConfig, params) -> dict:
    return dict(
        name=name,
        vocab_size=cfg.vocab_size,
        num_layers=cfg.num_layers,
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        mlp_dim=cfg.mlp_dim,
        attention_types=[t.value for t in cfg.attention_types],
        sliding_window_size=cfg.sliding_window_size,
        dtype=cfg.dtype,
        params=count_params(params),
        non_embedding_params=non_embedding_params(cfg, params),
    )


# ----------------------------------------------------------------------------- 1. matmul


def bench_matmul(sizes: list[int], repeats: int, warmup: int, min_run_s: float) -> dict:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for n in sizes:
            ka, kb = jax.random.split(jax.random.key(n))
            a = jax.random.normal(ka, (n, n), dtype)
            b = jax.random.normal(kb, (n, n), dtype)
            jax.block_until_ready((a, b))
            t0 = time.perf_counter()
            matmul = jax.jit(jnp.matmul).lower(a, b).compile()
            compile_s = time.perf_counter() - t0
            one_s, _ = time_call(lambda: jax.block_until_ready(matmul(a, b)))  # noqa: B023
            one_s = min(one_s, time_call(lambda: jax.block_until_ready(matmul(a, b)))[0])  # noqa: B023
            inner = max(1, math.ceil(min_run_s / max(one_s, 1e-9)))
            # `inner` products dispatched back to back, all awaited: one timed run.
            run = lambda: jax.block_until_ready([matmul(a, b) for _ in range(inner)])  # noqa: B023
            stats, _ = steady(run, repeats, warmup)
            per = {k: v / inner for k, v in stats.items() if k != "times_s"}
            per["times_s"] = [t / inner for t in stats["times_s"]]
            flops = 2 * n**3
            rows.append(
                dict(
                    dtype=dtype,
                    n=n,
                    flops=flops,
                    products_per_run=inner,
                    compile_s=compile_s,
                    **per,
                    flops_per_s=_rate(flops, per),
                )
            )
    peak = {
        d: max(r["flops_per_s"]["median"] for r in rows if r["dtype"] == d) for d in ("float32", "bfloat16")
    }
    return dict(rows=rows, peak_flops_per_s=peak)


# ----------------------------------------------------------------------------- 2. sampler


@dataclasses.dataclass
class SamplerCase:
    labels: list[str]
    model: str
    batch: int
    prompt_len: int
    n: int
    new_tokens: int

    @property
    def key(self):
        return (self.model, self.batch, self.prompt_len, self.n, self.new_tokens)


def sampler_cases(a) -> list[SamplerCase]:
    """base; prompt-length sweep; N sweep; the named small config -- duplicates merged."""
    base = dict(batch=a.batch, prompt_len=a.prompt_len, n=a.n, new_tokens=a.new_tokens)
    wanted = [("base", "bench", base)]
    wanted += [(f"prompt_len={t}", "bench", dict(base, prompt_len=t)) for t in a.prompt_lens]
    wanted += [(f"N={n}", "bench", dict(base, n=n)) for n in a.ns]
    wanted += [("small config", "small", base)]
    wanted += [("bfloat16", "bench-bf16", base)]
    cases: dict[tuple, SamplerCase] = {}
    for label, model, sizes in wanted:
        case = SamplerCase([label], model, **sizes)
        if case.key in cases:
            cases[case.key].labels.append(label)
        else:
            cases[case.key] = case
    return list(cases.values())


def run_sampler(
    params,
    cfg: ModelConfig,
    prompts_BT,
    prompt_lengths_B,
    n: int,
    rng,
    new_tokens: int,
    *,
    padding_side: str = "right",
) -> sampling.SampleOutput:
    out = sampling.sample(
        params,
        cfg,
        prompts_BT,
        n,
        rng,
        max_new_tokens=new_tokens,
        prompt_lengths_B=prompt_lengths_B,
        padding_side=padding_side,
        temperature=1.0,
        eos_id=None,
    )
    return jax.block_until_ready(out)


def check_sample(out: sampling.SampleOutput, B: int, N: int, T_new: int) -> None:
    for name in ("tokens_BMT", "logprobs_BMT"):
        shape = tuple(getattr(out, name).shape)
        if shape != (B, N, T_new):
            raise AssertionError(f"sampler {name} has shape {shape}, expected {(B, N, T_new)}")
    lengths = np.asarray(out.lengths_BM)
    if lengths.shape != (B, N) or not np.all(lengths == T_new):
        raise AssertionError(f"with eos_id=None every row must run {T_new} steps; lengths {lengths}")


def bench_sampler_case(
    case: SamplerCase,
    cfg: ModelConfig,
    params,
    p_ne: int,
    repeats: int,
    warmup: int,
    peak: float | None,
    seed: int,
) -> dict:
    B, T_p, N, T_new = case.batch, case.prompt_len, case.n, case.new_tokens
    prompts_BT = jax.random.randint(jax.random.key(seed), (B, T_p), 1, cfg.vocab_size, jnp.int32)
    prompt_lengths_B = jnp.full((B,), T_p, jnp.int32)
    rng = jax.random.key(seed + 1)
    calls = [0]

    def run():
        calls[0] += 1
        return run_sampler(
            params, cfg, prompts_BT, prompt_lengths_B, N, jax.random.fold_in(rng, calls[0]), T_new
        )

    jax.clear_caches()
    first_s, out = time_call(run)
    check_sample(out, B, N, T_new)
    traces = dict(sampling.TRACE_COUNTS)
    stats, out = steady(run, repeats, warmup)
    check_sample(out, B, N, T_new)
    if dict(sampling.TRACE_COUNTS) != traces:
        raise AssertionError("the sampler retraced during the timed runs (same shapes must not recompile)")
    tokens = B * N * T_new
    flops = sampler_flops(cfg, p_ne, B, T_p, N, T_new)
    flops_per_s = _rate(flops, stats)
    return dict(
        labels=case.labels,
        model=case.model,
        batch=B,
        prompt_len=T_p,
        n=N,
        new_tokens=T_new,
        cache_slots=T_p + T_new - 1,
        generated_tokens=tokens,
        flops=flops,
        first_call_s=first_s,
        compile_s=first_s - stats["median_s"],
        **stats,
        tokens_per_s=_rate(tokens, stats),
        decode_step_ms=1e3 * stats["median_s"] / T_new,
        flops_per_s=flops_per_s,
        fraction_of_f32_peak=_fraction(flops_per_s["median"], peak),
    )


def bench_sampler(a, models: dict, peak: float | None) -> dict:
    rows = []
    for i, case in enumerate(sampler_cases(a)):
        cfg, params, p_ne = models[case.model]
        print(f"  sampler {' / '.join(case.labels)} ...", flush=True)
        rows.append(bench_sampler_case(case, cfg, params, p_ne, a.repeats, a.warmup, peak, a.seed + 10 * i))
    return dict(rows=rows)


# ----------------------------------------------------------------------------- 3. train


def bench_train(a, cfg: ModelConfig, params, p_ne: int, peak: float | None) -> dict:
    B, M, T_p, T_new = a.train_batch, a.train_m, a.train_prompt_len, a.train_new_tokens
    bon_n = a.train_bon_n or M
    opt = adamw(1e-5, 1000)
    loss = rl_loss(cfg, a.train_objective, n=bon_n, beta=a.train_beta, options={})
    update = jax.jit(make_update_step(loss, opt), donate_argnums=0)
    seq_logp = make_sequence_logp(cfg)
    ref_params = params  # frozen; the trained copy is donated to the update
    anchor_params = jax.tree.map(jnp.copy, params) if a.train_anchor else None  # its own buffers, as the EMA's
    # The default experiment's verifier: a scalar-head copy of the policy's model, zero head.
    verifier_params, _ = init_verifier_params(cfg, jax.random.key(a.seed + 2), params, zero_head=True)
    verifier_p_ne = non_embedding_params(cfg, verifier_params)
    surprisal = a.train_pooling in READS_SURPRISAL
    prompts_BT = np.asarray(
        jax.random.randint(jax.random.key(a.seed), (B, T_p), 1, cfg.vocab_size, jnp.int32)
    )
    prompt_lengths_B = np.full((B,), T_p, np.int32)
    key = jax.random.key(a.seed + 1)
    host_rng = np.random.default_rng(a.seed)
    carry = {"state": TrainState.create(jax.tree.map(jnp.copy, params), opt), "step": 0}

    def one_step() -> dict[str, float]:
        state, t = carry["state"], {}
        t["sample"], out = time_call(
            lambda: run_sampler(
                state.params,
                cfg,
                prompts_BT,
                prompt_lengths_B,
                M,
                jax.random.fold_in(key, carry["step"]),
                T_new,
                padding_side="left",
            )
        )
        check_sample(out, B, M, T_new)

        def grade():
            tokens_BMT, lengths_BM = jax.device_get((out.tokens_BMT, out.lengths_BM))
            # Synthetic grading: a Bernoulli(1/2) reward per sample.
            rewards_BM = host_rng.integers(0, 2, (B, M)).astype(np.float32)
            return tokens_BMT, lengths_BM, rewards_BM

        t["grade"], (tokens_BMT, lengths_BM, rewards_BM) = time_call(grade)
        t["verifier"], scores_BM = time_call(
            lambda: jax.block_until_ready(
                score_completion_tokens(
                    verifier_params, cfg, prompts_BT, tokens_BMT, lengths_BM, 0, None, a.train_pooling
                )
            )
        )
        args = (prompts_BT, prompt_lengths_B, tokens_BMT, lengths_BM)
        t["ref_logprobs"], ref_logp_BM = time_call(lambda: jax.block_until_ready(seq_logp(ref_params, *args)))
        anchor_logp_BM = None
        if a.train_anchor:
            t["anchor"], anchor_logp_BM = time_call(
                lambda: jax.block_until_ready(seq_logp(anchor_params, *args))
            )

        def build_batch():
            rollout = objectives.Rollout(
                rewards_BM=rewards_BM,
                scores_BM=np.asarray(scores_BM),
                ref_logp_BM=ref_logp_BM,
                anchor_logp_BM=anchor_logp_BM,
            )
            objectives.validate_rollout(rollout, min_samples=bon_n)
            batch = {
                "prompt_tokens_BT": prompts_BT,
                "prompt_lengths_B": prompt_lengths_B,
                "tokens_BMT": tokens_BMT,
                "lengths_BM": lengths_BM,
                "rollout": rollout,
            }
            if a.train_anchor:
                batch["anchor_coef"] = jnp.float32(1.0)
            # As pipeline.finetune: each distinct completion that can carry weight is differentiated once.
            spec = objectives.spec(a.train_objective)
            select_BM = rewards_BM if spec.selection() == "reward" else np.asarray(scores_BM)
            active_BM = gradient_rows(spec, select_BM, bon_n, beta=a.train_beta, anchored=a.train_anchor)
            rows = bucket_rows(active_BM, tokens_BMT, lengths_BM)
            if rows is not None:
                batch["update_rows_BK"], batch["update_source_BM"] = rows
                batch["sampled_logp_BM"] = np.asarray(out.logprobs_BMT).sum(-1)
                carry["update_rows"] = rows[0].shape[1]
            return batch

        rollout_s, batch = time_call(build_batch)
        t["grade"] += rollout_s
        t["update"], (state, metrics) = time_call(lambda: jax.block_until_ready(update(state, batch)))
        if int(metrics["skipped"]) or not np.isfinite(float(metrics["loss"])):
            raise AssertionError(f"the update step was skipped or its loss is not finite: {metrics}")
        carry["state"], carry["step"] = state, carry["step"] + 1
        return t

    jax.clear_caches()
    first = one_step()
    for _ in range(a.warmup):
        one_step()
    runs = [one_step() for _ in range(a.repeats)]
    phases = {}
    forward = sequence_forward_flops(cfg, p_ne, B, M, T_p, T_new)
    flops = dict(
        sample=sampler_flops(cfg, p_ne, B, T_p, M, T_new),
        grade=0,
        verifier=verifier_forward_flops(cfg, verifier_p_ne, B, M, T_p, T_new, surprisal),
        ref_logprobs=forward,
        anchor=forward if a.train_anchor else 0,
        # The update's forward and backward run on the rows it differentiates (all M unless pruned).
        update=3 * sequence_forward_flops(cfg, p_ne, B, carry.get("update_rows", M), T_p, T_new),
    )
    flops = {name: f for name, f in flops.items() if name in first}
    for name in flops:
        stats = _stats([r[name] for r in runs])
        row = dict(
            first_call_s=first[name],
            compile_s=first[name] - stats["median_s"] if name != "grade" else None,  # grade: host only
            **stats,
            flops=flops[name],
        )
        if flops[name]:
            row["flops_per_s"] = _rate(flops[name], stats)
            row["fraction_of_f32_peak"] = _fraction(row["flops_per_s"]["median"], peak)
        phases[name] = row
    total = _stats([sum(r.values()) for r in runs])
    total_flops = sum(flops.values())
    generated = B * M * T_new
    processed = B * M * (T_p + T_new)
    step = dict(
        **total,
        flops=total_flops,
        flops_per_s=_rate(total_flops, total),
        fraction_of_f32_peak=_fraction(total_flops / total["median_s"], peak),
        generated_tokens=generated,
        generated_tokens_per_s=_rate(generated, total),
    )
    phases["update"]["tokens"] = processed * carry.get("update_rows", M) // M  # the rows it computes
    phases["update"]["tokens_per_s"] = _rate(phases["update"]["tokens"], phases["update"])
    phases["sample"]["tokens"] = generated
    phases["sample"]["tokens_per_s"] = _rate(generated, phases["sample"])
    return dict(
        model="small",
        batch=B,
        m=M,
        prompt_len=T_p,
        new_tokens=T_new,
        objective=a.train_objective,
        bon_n=bon_n,
        update_rows=carry.get("update_rows", M),
        beta=a.train_beta,
        pooling=a.train_pooling,
        anchor=a.train_anchor,
        grading="synthetic: numpy Bernoulli(1/2) rewards on the host (no text decoding or task grading); "
        "the verifier phase scores the sampled tokens with a learned verifier (random head)",
        phases=phases,
        step=step,
    )


# ----------------------------------------------------------------------------- 4. stages

# summary.json's stage name -> the rows it gives: (label, phase in timing.phases_s, or None for the whole).
STAGE_ROWS = {
    "tokenizer": [("tokenizer", None)],
    "base_policy": [("sft", None)],
    "verifier": [("verifier data", "data"), ("verifier training", "train")],
    "finetune": [("finetune", None)],
    "eval_base": [("eval (base)", None)],
    "eval_tuned": [("eval (tuned)", None)],
}


def bench_stages(run_dir: pathlib.Path) -> dict | None:
    """Each stage of the run in `run_dir` (its summary.json's stage paths) with its wall seconds from the
    stage's done.json `timing` and its share of their sum. The verifier's save after training, and any
    stage time outside its named phases, are a row of their own ("... other"). None without a summary."""
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        return None
    summary = json.loads(summary_file.read_text())
    rows = []
    for name, path in summary.get("stages", {}).items():
        done = pathlib.Path(path)
        done = (done if done.is_absolute() else REPO_ROOT / done) / "done.json"
        timing = json.loads(done.read_text()).get("timing") if done.exists() else None
        labels = STAGE_ROWS.get(name, [(name, None)])
        if timing is None:
            rows += [dict(stage=label, wall_s=None, finished=None) for label, _ in labels]
            continue
        phases = timing.get("phases_s", {})
        for label, phase in labels:
            wall = timing["wall_s"] if phase is None else phases.get(phase)
            rows.append(dict(stage=label, wall_s=wall, finished=timing.get("finished")))
        if any(phase for _, phase in labels):
            rest = timing["wall_s"] - sum(phases.values())
            if rest > 0.5:
                rows.append(dict(stage=f"{name} other", wall_s=rest, finished=timing.get("finished")))
    total = sum(r["wall_s"] for r in rows if r["wall_s"] is not None)
    for r in rows:
        r["share"] = r["wall_s"] / total if r["wall_s"] is not None and total > 0 else None
    return dict(run_dir=str(run_dir), experiment=summary.get("experiment"), run_wall_s=summary.get("wall_s"),
                stages_wall_s=total, rows=rows)


# ----------------------------------------------------------------------------- output


def _fmt(x, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    print(f"\n{title}\n" + line(headers) + "\n" + "  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def print_results(res: dict) -> None:
    if "matmul" in res:
        m = res["matmul"]
        print_table(
            "matmul (jitted a @ b, n x n; per-product times)",
            ["dtype", "n", "median s", "min s", "max s", "GFLOP/s med", "GFLOP/s min..max", "compile s"],
            [
                [
                    r["dtype"],
                    str(r["n"]),
                    _fmt(r["median_s"]),
                    _fmt(r["min_s"]),
                    _fmt(r["max_s"]),
                    _fmt(r["flops_per_s"]["median"] / 1e9, ".1f"),
                    f"{r['flops_per_s']['min'] / 1e9:.1f}..{r['flops_per_s']['max'] / 1e9:.1f}",
                    _fmt(r["compile_s"], ".2f"),
                ]
                for r in m["rows"]
            ],
        )
        print(
            "peak (best median over sizes): "
            + ", ".join(f"{d} {v / 1e9:.1f} GFLOP/s" for d, v in m["peak_flops_per_s"].items())
        )
    if "sampler" in res:
        print_table(
            "sampler (tokens = B*N*new generated; GFLOP/s from the FLOP model; % of float32 peak)",
            [
                "case",
                "model",
                "B",
                "T_p",
                "N",
                "new",
                "median s",
                "min s",
                "max s",
                "tok/s",
                "ms/step",
                "GFLOP/s",
                "% peak",
                "compile s",
            ],
            [
                [
                    " / ".join(r["labels"]),
                    r["model"],
                    str(r["batch"]),
                    str(r["prompt_len"]),
                    str(r["n"]),
                    str(r["new_tokens"]),
                    _fmt(r["median_s"]),
                    _fmt(r["min_s"]),
                    _fmt(r["max_s"]),
                    _fmt(r["tokens_per_s"]["median"], ".0f"),
                    _fmt(r["decode_step_ms"], ".2f"),
                    _fmt(r["flops_per_s"]["median"] / 1e9, ".2f"),
                    _pct(r["fraction_of_f32_peak"]),
                    _fmt(r["compile_s"], ".2f"),
                ]
                for r in res["sampler"]["rows"]
            ],
        )
    if "train" in res:
        t = res["train"]
        rows = []
        for name, p in t["phases"].items():
            rows.append(
                [
                    name,
                    _fmt(p["median_s"]),
                    _fmt(p["min_s"]),
                    _fmt(p["max_s"]),
                    _fmt(p.get("tokens_per_s", {}).get("median"), ".0f"),
                    _fmt(p["flops"] / 1e9 if p["flops"] else None, ".2f"),
                    _fmt(p["flops_per_s"]["median"] / 1e9 if p["flops"] else None, ".2f"),
                    _pct(p.get("fraction_of_f32_peak")),
                    _fmt(p["compile_s"], ".2f"),
                ]
            )
        s = t["step"]
        rows.append(
            [
                "step (sum)",
                _fmt(s["median_s"]),
                _fmt(s["min_s"]),
                _fmt(s["max_s"]),
                _fmt(s["generated_tokens_per_s"]["median"], ".0f"),
                _fmt(s["flops"] / 1e9, ".2f"),
                _fmt(s["flops_per_s"]["median"] / 1e9, ".2f"),
                _pct(s["fraction_of_f32_peak"]),
                "",
            ]
        )
        print_table(
            f"train: one {t['objective']} step on `{t['model']}` (B={t['batch']}, M={t['m']}, N={t['bon_n']}, "
            f"update on {t.get('update_rows', t['m'])} rows a prompt, "
            f"T_p={t['prompt_len']}, new={t['new_tokens']}, verifier pooling {t.get('pooling')}); grading is "
            "SYNTHETIC (random rewards)",
            ["phase", "median s", "min s", "max s", "tok/s", "GFLOP", "GFLOP/s", "% peak", "compile s"],
            rows,
        )
        print("tok/s: sample and step = generated tokens B*M*new; update = processed tokens B*K*(T_p+new), K rows a prompt")
    if res.get("stages"):
        st = res["stages"]
        print_table(
            f"stages of {st['experiment']} ({st['run_dir']}; wall from each stage's done.json timing)",
            ["stage", "wall s", "share"],
            [[r["stage"], _fmt(r["wall_s"], ".1f"), _pct(r["share"])] for r in st["rows"]],
        )
        print(
            f"sum of the stages {st['stages_wall_s']:.0f} s; the run's last session {_fmt(st['run_wall_s'], '.0f')} s"
            " (smaller when stages were cached by an earlier run; n/a: a stage finished before timings were"
            " recorded)"
        )


def machine_info() -> dict:
    info = dict(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=platform.python_version(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        jaxlib=_version("jaxlib"),
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        default_matmul_precision=str(jax.config.jax_default_matmul_precision),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.*)$", f.read(), re.M)
        info["cpu_model"] = names[0] if names else None
    except OSError:
        info["cpu_model"] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        info["git_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "bon_jax"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = info["git_dirty"] = None
    return info


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class OtherProcesses:
    """CPU used by OTHER processes while this one runs: all CPU time the kernel accounts (/proc/stat: user,
    nice, system, irq, softirq, steal) minus this process's own, as a fraction of the machine's cores over
    the wall time since `start`. None where /proc/stat is unavailable (not Linux)."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy_s = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
        own = os.times()
        own_s = own.user + own.system + own.children_user + own.children_system
        return time.perf_counter(), busy_s, own_s

    def fraction(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self.start))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


BUSY_FRACTION = 0.1  # other processes using more than this share of the cores: warn


def _warn_if_busy(fraction: float | None, when: str) -> bool:
    busy = fraction is not None and fraction > BUSY_FRACTION
    if busy:
        print(
            f"WARNING ({when}): other processes used {100 * fraction:.0f}% of the {os.cpu_count()} cores; "
            "these timings are NOT representative of an idle machine.",
            flush=True,
        )
    return busy


def default_out(quick: bool) -> pathlib.Path:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    return RESULTS_DIR / f"{datetime.date.today().isoformat()}-{host}{'-quick' if quick else ''}.json"


# ----------------------------------------------------------------------------- main


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _sections(s: str) -> list[str]:
    names = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in names if x not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--only takes a comma list of {','.join(SECTIONS)}, got {s!r}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and 2 repeats: checks that every path runs (not a measurement)",
    )
    p.add_argument(
        "--only", type=_sections, default=list(SECTIONS), help="comma list of matmul,sampler,train,stages"
    )
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after the first (compiling) call")
    p.add_argument(
        "--out",
        type=pathlib.Path,
        help="JSON path (default benchmarks/results/<date>-<host>.json; --quick: ...-quick.json)",
    )
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("matmul")
    g.add_argument("--matmul-sizes", type=_ints, help="comma list (default 1024,2048)")
    g.add_argument("--matmul-min-run-s", type=float, help="repeat the product within a run until this long")
    g = p.add_argument_group("sampler (model 'bench', plus one case of the named 'small' config)")
    g.add_argument("--batch", type=int, help="B prompts (default 8)")
    g.add_argument("--prompt-len", type=int, help="T_p of the base case (default 64)")
    g.add_argument("--n", type=int, help="N samples per prompt of the base case (default 32)")
    g.add_argument("--new-tokens", type=int, help="T_new (default 64)")
    g.add_argument("--prompt-lens", type=_ints, help="prompt-length sweep (default 8,512)")
    g.add_argument("--ns", type=_ints, help="N sweep (default 1,4,32,128)")
    g = p.add_argument_group("train (BoN-RL step on the named 'small' config)")
    g.add_argument("--train-batch", type=int, help="B prompts (default 8)")
    g.add_argument("--train-m", type=int, help="M samples per prompt (default 32)")
    g.add_argument("--train-prompt-len", type=int, help="T_p (default 64)")
    g.add_argument("--train-new-tokens", type=int, help="T_new (default 64)")
    g.add_argument("--train-objective", default="bon_rl", help="a registered objective (default bon_rl)")
    g.add_argument("--train-bon-n", type=int, help="the objective's Best-of-N size (default M)")
    g.add_argument("--train-beta", type=float, default=0.1, help="KL(pi || pi_ref) coefficient")
    g.add_argument(
        "--train-pooling",
        default="likelihood",
        choices=[x for x in POOLINGS if x != "process"],  # 'process' needs a tokenizer's newline table
        help="the learned verifier's pooling (default: the default experiment's, likelihood)",
    )
    g.add_argument(
        "--no-train-anchor",
        dest="train_anchor",
        action="store_false",
        help="no EMA anchor phase (and no anchor KL in the update)",
    )
    g = p.add_argument_group("stages (an experiment's run directory, read only)")
    g.add_argument(
        "--run-dir",
        type=pathlib.Path,
        default=REPO_ROOT / "runs" / "arith_bo32",
        help="the run whose stage timings to report (default runs/arith_bo32: `make train`)",
    )
    a = p.parse_args(argv)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.repeats < 1 or a.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if a.new_tokens < 1 or a.train_new_tokens < 1:
        p.error("--new-tokens and --train-new-tokens must be >= 1")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    print(NOTE, flush=True)
    probe = OtherProcesses()
    time.sleep(1.0)  # this process idles: what the probe sees is the rest of the machine
    others_before = probe.fraction()
    busy = _warn_if_busy(others_before, "before the run, 1 s probe")
    during = OtherProcesses()
    if a.quick:
        print("--quick: tiny sizes, a check that the benchmark runs -- NOT a measurement.", flush=True)
    res: dict = dict(
        note=NOTE,
        meta=dict(
            machine_info(),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            argv=sys.argv[1:] if argv is None else list(argv),
            quick=a.quick,
            repeats=a.repeats,
            warmup=a.warmup,
            load_average_start=_load(),
            other_processes_cpu_fraction_before=others_before,
        ),
        flop_model=__doc__[__doc__.index("FLOP model") :].strip(),
    )
    t_start = time.perf_counter()
    peak = None
    if "matmul" in a.only:
        print("matmul ...", flush=True)
        res["matmul"] = bench_matmul(a.matmul_sizes, a.repeats, a.warmup, a.matmul_min_run_s)
        peak = res["matmul"]["peak_flops_per_s"]["float32"]
    else:
        print("(matmul skipped: no float32 peak, so no fraction-of-peak figures)", flush=True)
    models = {}
    if "sampler" in a.only or "train" in a.only:
        for name, cfg in (("bench", bench_config()), ("small", get_config("small"))):
            params = init_params(cfg, jax.random.key(a.seed))
            if name == "bench":
                check_params(cfg, params)  # the shapes the brief asks for: D 256, 4 q heads, 1 kv head, ...
            models[name] = (cfg, params, non_embedding_params(cfg, params))
        # bfloat16 compute and KV cache, float32 logits; the same float32 params (cast once per call).
        cfg, params, p_ne = models["bench"]
        models["bench-bf16"] = (cfg.replace(dtype="bfloat16"), params, p_ne)
        res["models"] = {n: model_summary(n, cfg, params) for n, (cfg, params, _) in models.items()
                         if n != "bench-bf16"}
    if "sampler" in a.only:
        print("sampler ...", flush=True)
        res["sampler"] = bench_sampler(a, models, peak)
    if "train" in a.only:
        print("train ...", flush=True)
        cfg, params, p_ne = models["small"]
        res["train"] = bench_train(a, cfg, params, p_ne, peak)
    if "stages" in a.only:
        res["stages"] = bench_stages(a.run_dir)
        if res["stages"] is None:
            print(f"(stages: no {a.run_dir / 'summary.json'}; run `make train` first)", flush=True)
    res["meta"]["wall_s"] = time.perf_counter() - t_start
    res["meta"]["load_average_end"] = _load()
    res["meta"]["other_processes_cpu_fraction_during"] = others_during = during.fraction()
    res["meta"]["busy"] = _warn_if_busy(others_during, "during the run") or busy

    print()
    print(NOTE)
    if "models" in res:
        for m in res["models"].values():
            print(
                f"model {m['name']}: {m['params']:,} params ({m['non_embedding_params']:,} non-embedding), "
                f"L={m['num_layers']} D={m['embed_dim']} q/kv heads {m['num_heads']}/{m['num_kv_heads']} "
                f"H={m['head_dim']} F={m['mlp_dim']} V={m['vocab_size']} {m['dtype']}"
            )
    print_results(res)
    out = a.out or default_out(a.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(
        f"\nwrote {out}" + (" (the machine was busy: see the warnings above)" if res["meta"]["busy"] else "")
    )
    return res


if __name__ == "__main__":
    main()
