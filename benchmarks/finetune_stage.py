"""The fine-tuning stage's first steps from a cold start: wall time and what XLA compiled (issue 14).

    python -m benchmarks.finetune_stage --run-dir=runs/arith_bo32 --steps=40 [--out=/tmp/ft.json]

Copies the tokenizer, base-policy and verifier stages of a finished run (`make train` first) into a scratch
work directory, then runs the run's config with those stages cached and the fine-tuning stage stopped after
`--steps` steps (as a preemption would), with the persistent compilation cache off, so every program compiles
as in a fresh clone. Prints the stage's wall seconds and, per jitted function, how many programs XLA compiled
and their compile seconds (JAX's backend-compile duration events). The fine-tuning stage meets a new
(distinct rows, completion width) shape every few steps for its first ~100 steps, so compilation is a large
share of a cold run's stage; this measures it. Set `XLA_FLAGS` to compare compiler settings. Like every
timing here, run it on an idle machine.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import shutil
import tempfile
import time

CACHED_STAGES = ("tokenizer", "base_policy", "verifier")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring's event, with fun_name


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=os.path.join("runs", "arith_bo32"))
    p.add_argument("--config", default=None, help="experiments/<name>.py (default: the run's experiment)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--out", default=None, help="also write the result as JSON here")
    a = p.parse_args(argv)
    os.environ["BON_JAX_COMPILATION_CACHE"] = ""  # every program compiles, as in a fresh clone

    import jax

    from bon_jax.pipeline.loop import Preempted
    from bon_jax.pipeline.run import run_experiment

    with open(os.path.join(a.run_dir, "summary.json")) as f:
        summary = json.load(f)
    config_module = a.config or f"experiments/{summary['experiment']}.py"
    cfg = importlib.import_module(config_module.removesuffix(".py").replace("/", ".")).get_config()
    work = tempfile.mkdtemp(prefix="finetune_stage_")
    stages = os.path.join(a.run_dir, "stages")
    # Every cached version is copied: the run's config finds its own by its stage key, as the run did.
    copied = [s for s in sorted(os.listdir(stages)) if s.split("-")[0] in CACHED_STAGES]
    if {s.split("-")[0] for s in copied} != set(CACHED_STAGES):
        raise SystemExit(f"{stages}: want finished {', '.join(CACHED_STAGES)} stages, found {copied}")
    for s in copied:
        shutil.copytree(os.path.join(stages, s), os.path.join(work, "stages", s))
    cfg.workdir = work
    cfg.stages = CACHED_STAGES + ("finetune",)

    compiles = collections.defaultdict(list)

    def listen(event, duration, **kw):
        if event == COMPILE_EVENT:
            compiles[kw.get("fun_name", "?")].append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    t0 = time.perf_counter()
    try:
        run_experiment(cfg, stop_after=a.steps)
    except Preempted:
        pass  # stop_after's stop: the steps asked for are done
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    rows = sorted(((k, len(v), sum(v)) for k, v in compiles.items()), key=lambda r: -r[2])
    print(f"fine-tuning stage, first {a.steps} steps from a cold start: {wall:.1f} s wall "
          f"({jax.devices()[0].platform}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
    print(f"{'program':40s} {'compiled':>8s} {'seconds':>8s}")
    for name, n, s in rows:
        if s >= 0.5:
            print(f"{name:40s} {n:8d} {s:8.1f}")
    print(f"{'all programs':40s} {sum(r[1] for r in rows):8d} {sum(r[2] for r in rows):8.1f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(steps=a.steps, wall_s=wall, xla_flags=os.environ.get("XLA_FLAGS", ""),
                           compiles=dict(compiles)), f, indent=1)


if __name__ == "__main__":
    main()
