"""The texts behind `bon_gaps`: what the wrong answer the verifier ranks first looks like, on `arith`.

    python -m experiments.gap_texts [--seed=0] [--split=validation] [--prompts=128] [--show=8]
                                    [--cache=runs/arith_bo32/stages] [key=value ...]

Redraws the base policy's evaluation samples of the default experiment (experiments/arith_bo32.py, with the
`key=value` overrides, e.g. `verifier.corruption_kinds="('carry',)"`) from the stage cache of `make train`
at that seed (nothing is trained: the tokenizer, base policy and verifier must be cached). Each chunk of
prompts is drawn as the evaluation stage draws it (the same generator, the same prompt ids), so these are
the evaluation's samples; where that evaluation is cached its saved rewards and scores are checked against
the redraw. For every gap prompt (verifier's pick wrong, some sample right; `experiments/bon_gaps.py`) it
tallies the problem's kind and the wrong winner's first false step, by how far its result is off
(`bon_jax.tasks.arith.step_error`): a carry (+-10, +-100, ...), a units slip (|off| < 10), another, or no
false step (a true computation of the wrong thing). `--show` prints that many gap prompts in full.

Reads the split's samples only; changes no result. Choose settings on `validation`.
"""

from __future__ import annotations

import argparse
import collections
import os

import numpy as np

from experiments.bon_gaps import gap_prompts, outranking_share


def slip_kind(completion: str) -> str:
    """How the first false step of a worked solution is off: 'carry' (a power of ten >= 10), 'units'
    (|off| < 10), 'other', 'no false step', or 'unparsed step' (a step line that is not one equation)."""
    from bon_jax.tasks.arith import check_step, step_error, step_lines

    for line in step_lines(completion):
        if check_step(line):
            continue
        off = step_error(line)
        if off is None:
            return "unparsed step"
        a = abs(off)
        if a >= 10 and 10 ** (len(str(a)) - 1) == a:
            return "carry"
        return "units" if a < 10 else "other"
    return "no false step"


def problem_kind(prompt: str) -> str:
    return "linear" if "Solve" in prompt else "expr"


def _overrides(pairs: list[str]) -> dict:
    import ast

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"override {pair!r} is not key=value")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="validation")
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--show", type=int, default=8)
    p.add_argument("--cache", default="", help="stage cache (default: make train's at --seed)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)

    from bon_jax.config import validate
    from bon_jax.pipeline.sweep import point_config
    from experiments.arith_bo32 import get_config
    from experiments.probe_rl import cache_root

    c = point_config(get_config(), {**_overrides(args.overrides), "eval.split": args.split}, "/tmp")
    c.seed = args.seed
    c.eval.num_prompts = args.prompts
    validate(c)
    root = args.cache or cache_root(args.seed)

    from bon_jax.pipeline.context import RunContext
    from bon_jax.pipeline.policy import base_policy_stage, tokenizer_stage
    from bon_jax.pipeline.rollouts import draw_graded
    from bon_jax.pipeline.stage_cache import stage
    from bon_jax.pipeline.verifier import verifier_stage

    ctx = RunContext(c, allow_training=False, shared_cache_root=root)
    ctx.load_tasks()
    tok, tok_st = tokenizer_stage(ctx)
    model_cfg, base, base_st = base_policy_stage(ctx, tok, tok_st)
    verifier, ver_st = verifier_stage(ctx, tok, model_cfg, base, base_st.key, tok_stage=tok_st)
    saved = stage(ctx.cache_root, "eval_base", base_st.key, ver_st.key, c.eval, c.seed)
    examples = list(ctx.eval_task.examples(c.eval.split))[: c.eval.num_prompts]
    rng, per_call = ctx.rng("eval"), 8  # evaluate_policy's generator and chunk size

    rows, checked, shown = [], 0, 0
    for start in range(0, len(examples), per_call):
        chunk = examples[start : start + per_call]
        prompts_BT, plen_B = tok.encode_batch(
            [e.prompt for e in chunk], pad_side="left", add_bos=True,
            max_len=c.model.max_len - c.eval.max_new_tokens, truncate=True,
        )  # fmt: skip
        g = draw_graded(
            base, model_cfg, tok, ctx.eval_task, verifier, chunk, prompts_BT, plen_B, c.eval.m, rng,
            max_new_tokens=c.eval.max_new_tokens, temperature=c.eval.temperature,
            prompt_ids_B=np.arange(start, start + len(chunk)),
        )  # fmt: skip
        R, S = np.asarray(g.rewards_BM), np.asarray(g.scores_BM)
        part = os.path.join(saved.path, "chunks", f"prompts_{start:06d}.npz")
        if os.path.exists(part):
            with np.load(part) as d:
                if not (np.array_equal(d["rewards_BM"], R) and np.allclose(d["scores_BM"], S, atol=1e-4)):
                    raise SystemExit(f"{part}: the redraw differs from the saved evaluation")
            checked += 1
        for b in gap_prompts(R, S):
            top = int(np.argmax(S[b]))
            best_right = max(np.flatnonzero(R[b] > 0), key=lambda j: S[b, j])
            wrong = g.texts_BM[b][top]
            rows.append((problem_kind(chunk[b].prompt), slip_kind(wrong)))
            if shown < args.show:
                shown += 1
                q = outranking_share(R[b], S[b])
                print(
                    f"=== prompt {start + b} (answer {chunk[b].answer}; {int((R[b] > 0).sum())} of {c.eval.m} right; q {q:.3f})"
                )
                print(chunk[b].prompt.strip())
                print(
                    f"--- the verifier's pick (score {S[b, top]:+.2f}; first false step: {rows[-1][1]})\n{wrong}"
                )
                print(
                    f"--- the best-scored right sample (score {S[b, best_right]:+.2f})\n{g.texts_BM[b][best_right]}\n"
                )

    print(f"seed {args.seed}, {c.eval.split}: {len(rows)} gap prompts of {len(examples)}"
          f" ({checked} of {-(-len(examples) // per_call)} chunks checked against the saved evaluation)")  # fmt: skip
    tally = collections.Counter(rows)
    kinds = sorted({k for k, _ in rows})
    slips = ("carry", "units", "other", "no false step", "unparsed step")
    print("| problem | " + " | ".join(slips) + " | all |")
    print("|---" * (len(slips) + 2) + "|")
    for k in kinds:
        print(
            f"| {k} | "
            + " | ".join(str(tally[(k, s)]) for s in slips)
            + f" | {sum(tally[(k, s)] for s in slips)} |"
        )


if __name__ == "__main__":
    main()
