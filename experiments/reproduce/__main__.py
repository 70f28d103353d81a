"""`make reproduce [ARGS="--profile=tiny --only=claim1,claim4"]`: run the claims' missing runs, then write
the report.

    python -m experiments.reproduce [--profile=full|tiny] [--only=claim1,...] [--workdir=results/reproduce]
                                    [--list] [--no-run] [--doc=PATH] [--figures=DIR]

`full` writes docs/reproduction.md, docs/figures/reproduce_claim*.png and README.md's claims table; `tiny`
(a pipeline check, not the science) writes them under <workdir>/tiny/ unless --doc / --figures say
otherwise, and no README. `--list` prints the runs and whether each is finished; `--no-run` writes the
report from the finished runs only. A SIGTERM stops the run in flight at its next checkpoint (exit 0); the
same command resumes.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="full", choices=("full", "tiny"))
    p.add_argument(
        "--only", default="", help="comma-separated claims, e.g. claim1,claim7 (default: all nine)"
    )
    p.add_argument(
        "--workdir", default="results/reproduce", help="finished runs here are tracked by git (resume anywhere)"
    )
    p.add_argument("--list", action="store_true", help="print the runs and exit")
    p.add_argument("--no-run", action="store_true", help="write the report from the finished runs only")
    p.add_argument("--doc", default=None, help="markdown path (full: docs/reproduction.md)")
    p.add_argument("--figures", default=None, help="PNG folder (full: docs/figures)")
    p.add_argument(
        "--readme", default=None, help="README whose claims-table block is rewritten (full: README.md)"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from bon_jax.cli import run_reporting_errors
    from experiments.reproduce import analysis, figures, runner, writer
    from experiments.reproduce.claims import CLAIMS
    from experiments.reproduce.runs import runs_for
    from experiments.reproduce.settings import get_profile

    profile = get_profile(args.profile)
    claim_ids = [c.strip() for c in args.only.split(",") if c.strip()] or list(CLAIMS)
    unknown = [c for c in claim_ids if c not in CLAIMS]
    if unknown:
        print(f"[reproduce] error: unknown claims {unknown}; known: {', '.join(CLAIMS)}", file=sys.stderr)
        return 2
    runs = runs_for(profile, claim_ids)
    if args.list:
        for run in runs:
            print(
                f"{'done ' if run.finished(args.workdir) else 'to do'}  {run.run_id}  {dict(run.overrides)}"
            )
        return 0
    here = os.path.join(args.workdir, profile.name)
    doc = args.doc or (
        "docs/reproduction.md" if profile.name == "full" else os.path.join(here, "reproduction.md")
    )
    fig_dir = args.figures or ("docs/figures" if profile.name == "full" else os.path.join(here, "figures"))
    if not args.no_run:
        run_reporting_errors(lambda: runner.run_all(runs, args.workdir))
    results = analysis.analyse(profile, claim_ids, args.workdir)
    for r in results:
        figures.plot_claim(r, os.path.join(fig_dir, f"reproduce_{r.claim.id}.png"))
    command = "make reproduce" + (f' ARGS="--profile={profile.name}"' if profile.name != "full" else "")
    path = writer.write(
        results,
        profile=profile,
        log=runner.read_log(args.workdir, profile.name),
        root=args.workdir,
        doc_path=doc,
        figure_dir=fig_dir,
        command=command,
        verifier=analysis.verifier_check(profile, args.workdir) if "claim1" in claim_ids else None,
    )
    readme = args.readme or ("README.md" if profile.name == "full" else None)
    if readme:
        t = writer.wall_time(results, runner.read_log(args.workdir, profile.name), args.workdir)
        note = (
            f"The claims, as `{command}` last left them ({t['current_finished']} of {t['current_runs']} runs "
            f"finished, {t['current_s'] / 3600:.2f} h of runs; verdicts follow mechanically from the 95% CIs "
            f"over seeds x test prompts; details and figures in [{os.path.relpath(doc)}]({os.path.relpath(doc)})):"
        )
        writer.update_readme(readme, results, os.path.relpath(doc, os.path.dirname(os.path.abspath(readme))), note)
    for r in results:
        print(f"[reproduce] {r.claim.id}: {r.verdict}")
    print(f"[reproduce] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
