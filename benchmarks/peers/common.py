"""Shared by every peer script (stdlib only: it runs in bon_jax's venv and in the peers' venv).

A peer script is called as `python benchmarks/peers/<name>.py '<workload json>'` and prints, as its LAST
line of stdout, `PEER_RESULT <json>`: either the timings or {"status": "unsupported"/"failed", "reason"}.

Workload (`WORKLOAD`, overridable by the driver): the tiny Gemma-2-style model -- 4 layers alternating
local (window 128) / global attention, D=256, 4 query heads, 1 kv head, head dim 64, GeGLU MLP 1024,
vocab 4096, attention-logit soft-cap 50, final-logit soft-cap 30, pre- and post-norms, tied embedding,
float32, random weights -- sampling B prompts of T_p random tokens, N samples each, T_new new tokens,
temperature 1, no top-k / top-p, EOS never stops a row (every row generates T_new tokens).

Timing (`measure`): the first call (compiles / warms caches) is timed on its own; then `warmup` untimed
calls, then `repeats` timed calls; each call ends when the generated tokens are on the host (as a user
of the library would get them). tokens/s = B * N * T_new / time. A peer whose first call takes more than
budget_s / repeats (HF transformers on CPU: minutes per call) gets fewer timed calls, at least one, and
no warm-up when its first call takes over 20 s (nothing to compile); `repeats_run` says how many.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
import traceback

MODEL = dict(vocab_size=4096, num_layers=4, embed_dim=256, num_heads=4, num_kv_heads=1, head_dim=64,
             mlp_dim=1024, sliding_window=128, attn_logit_softcap=50.0, final_logit_softcap=30.0,
             pattern=("local", "global"))
WORKLOAD = dict(batch=8, prompt_len=64, n=32, new_tokens=64, repeats=5, warmup=1, seed=0, budget_s=150)


def workload_from_argv() -> dict:
    w = dict(WORKLOAD)
    if len(sys.argv) > 1:
        w.update(json.loads(sys.argv[1]))
    return w


def prompts(w: dict, low: int = 2) -> list[list[int]]:
    """B prompts of T_p tokens in [low, V), the same for every peer (a fixed LCG: no numpy needed)."""
    x, out = 12345 + w["seed"], []
    for _ in range(w["batch"]):
        row = []
        for _ in range(w["prompt_len"]):
            x = (1103515245 * x + 12345) % (1 << 31)
            row.append(low + x % (MODEL["vocab_size"] - low))
        out.append(row)
    return out


def measure(call, w: dict, check=None) -> dict:
    """call(i) -> generated tokens (host); check(tokens) raises if the shape is wrong."""
    t0 = time.perf_counter()
    out = call(0)
    first = time.perf_counter() - t0
    if check:
        check(out)
    warmup = w["warmup"] if first <= 20 else 0
    repeats = max(1, min(w["repeats"], int(w.get("budget_s", 1e9) // max(first, 1e-9))))
    for i in range(warmup):
        call(1 + i)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        out = call(100 + i)
        times.append(time.perf_counter() - t0)
    if check:
        check(out)
    tokens = w["batch"] * w["n"] * w["new_tokens"]
    med = statistics.median(times)
    return dict(status="ok", repeats_run=repeats, warmup_run=warmup, first_call_s=first, median_s=med, min_s=min(times), max_s=max(times),
                times_s=times, tokens=tokens, tokens_per_s=tokens / med,
                tokens_per_s_min=tokens / max(times), tokens_per_s_max=tokens / min(times))


def report(result: dict) -> None:
    result.setdefault("python", platform.python_version())
    print("PEER_RESULT " + json.dumps(result), flush=True)


def run_peer(main) -> None:
    """Runs main(workload) -> dict and reports it; an exception is reported as a failure with its reason."""
    try:
        report(main(workload_from_argv()))
    except Exception as e:  # noqa: BLE001 -- every failure is reported, with its reason, not raised
        traceback.print_exc()
        report(dict(status="failed", reason=f"{type(e).__name__}: {e}"[:500]))
