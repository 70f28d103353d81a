"""`make bench-peers`: bon_jax's sampler beside google-tunix, the gemma library and HF transformers, one run.

    make bench-peers [ARGS="--quick"]     # = install.py (the peers' venvs), then this script
    python -m benchmarks.peers.run --only=bon_jax,tunix --repeats=5 --out=/tmp/peers.json

Each peer runs in its own subprocess and venv (bon_jax in the project's .venv; tunix and gemma in
benchmarks/.peers-venv/jax; transformers in benchmarks/.peers-venv/torch), builds the same architecture with
random weights and samples the same workload (see common.py: the tiny Gemma-2-style model, B=8 prompts of 64
tokens x N=32 samples x 64 new tokens, temperature 1, EOS ignored), timed by the same harness (median of
`--repeats` calls after the compiling first call and one warm-up; fewer for a peer whose calls take
minutes, see common.py). A peer that is not installed, cannot take
the config, fails or times out is reported in the table with the reason, never dropped.

Prints the table (tokens/s and bon_jax's tokens/s as a multiple of each peer's) and writes
benchmarks/results/<date>-<host>-peers.json. Run it on an IDLE machine: the peers run one after the other, so
load from other processes skews the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from bon_jax import xla_cpu

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENVS = HERE.parent / ".peers-venv"
sys.path.insert(0, str(HERE))
from common import MODEL, WORKLOAD  # noqa: E402

# name, venv python (None: this interpreter, the project's venv), script, extra workload keys, install key
PEERS = [
    ("bon_jax", None, "bon_jax_peer.py", {}, None),
    ("bon_jax-bf16", None, "bon_jax_peer.py", {"dtype": "bfloat16"}, None),
    ("jax-reference", None, "jax_reference_peer.py", {}, None),  # plain JAX, written for this benchmark
    ("tunix", VENVS / "jax", "tunix_peer.py", {}, "tunix"),
    ("gemma", VENVS / "jax", "gemma_peer.py", {}, "gemma"),
    ("transformers", VENVS / "torch", "hf_peer.py", {"dtype": "float32"}, "transformers"),
    ("transformers-bf16", VENVS / "torch", "hf_peer.py", {"dtype": "bfloat16"}, "transformers"),
]
QUICK = dict(batch=2, prompt_len=8, n=4, new_tokens=8, repeats=2, warmup=1)


def run_peer(name, venv, script, extra, install_key, workload, status, timeout_s):
    if install_key and install_key in status:
        return dict(status="not installed", reason=status[install_key])
    python = sys.executable if venv is None else str(venv / "bin" / "python")
    if not os.path.exists(python):
        return dict(status="not installed", reason=f"{python} missing: run `make bench-peers`")
    cmd = [python, str(HERE / script), json.dumps({**workload, **extra})]
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    xla_cpu.apply(env)  # every JAX peer compiles with the XLA:CPU setting bon_jax runs with
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return dict(status="timed out", reason=f"no result within {timeout_s} s")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PEER_RESULT ")]
    if not lines:
        err = [l for l in proc.stderr.splitlines() if l.strip()][-3:]
        return dict(status="failed", reason=f"exit {proc.returncode}: {' | '.join(err)}"[:500])
    res = json.loads(lines[-1][len("PEER_RESULT "):])
    res["wall_s"] = time.perf_counter() - t0
    return res


def _fmt(x, spec=".3g"):
    return "" if x is None else format(x, spec)


def table(results: dict, ref: str = "bon_jax") -> str:
    ref_tps = results.get(ref, {}).get("tokens_per_s")
    head = ["peer", "version", "status", "runs", "median s", "min s", "max s", "tok/s", "first call s",
            f"{ref} x"]
    rows = []
    for name, r in results.items():
        ok = r.get("status") == "ok"
        tps = r.get("tokens_per_s") if ok else None
        rows.append([name, str(r.get("version", "")), r.get("status", "?"), str(r.get("repeats_run", "")),
                     _fmt(r.get("median_s")),
                     _fmt(r.get("min_s")), _fmt(r.get("max_s")), _fmt(tps, ".0f"),
                     _fmt(r.get("first_call_s"), ".1f"),
                     _fmt(ref_tps / tps, ".2f") if ref_tps and tps else ""])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    notes = [f"  {name}: {r['reason']}" for name, r in results.items() if r.get("status") != "ok"]
    return "\n".join(out + (["not measured:"] + notes if notes else []))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks every peer runs (not a measurement)")
    p.add_argument("--only", default="", help="comma list of " + ",".join(n for n, *_ in PEERS))
    p.add_argument("--repeats", type=int)
    p.add_argument("--timeout-s", type=int, default=900, help="per peer")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    workload = dict(WORKLOAD, **(QUICK if a.quick else {}))
    if a.repeats:
        workload["repeats"] = a.repeats
    only = {x for x in a.only.split(",") if x}
    unknown = only - {n for n, *_ in PEERS}
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}")
    status_file = VENVS / "status.json"
    status = json.loads(status_file.read_text()) if status_file.exists() else {}
    print("NOTE: run on an IDLE machine; peers run one after the other.", flush=True)
    print(f"workload: {json.dumps(workload)}\nmodel: {json.dumps(MODEL)}", flush=True)
    results = {}
    for name, venv, script, extra, key in PEERS:
        if only and name not in only:
            continue
        print(f"  {name} ...", flush=True)
        results[name] = run_peer(name, venv, script, extra, key, workload, status, a.timeout_s)
        r = results[name]
        print(f"    {r.get('status')}: " + (f"{r['tokens_per_s']:.0f} tok/s" if r.get("status") == "ok"
                                              else r.get("reason", "")), flush=True)
    print("\nsampler tokens/s, same workload and model in every peer ("
          f"B={workload['batch']} T_p={workload['prompt_len']} N={workload['n']} "
          f"new={workload['new_tokens']}, temperature 1, EOS ignored; median of {workload['repeats']})")
    print(table(results))
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    out = a.out or (REPO / "benchmarks" / "results" /
                    f"{datetime.date.today().isoformat()}-{host}-peers{'-quick' if a.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    res = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), host=socket.gethostname(),
               cpu_count=os.cpu_count(), load_average=list(os.getloadavg()), workload=workload, model=MODEL,
               results=results)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {out}")
    return res


if __name__ == "__main__":
    main()
