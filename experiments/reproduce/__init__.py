"""`make reproduce`: the nine claims of issue 15 (Chow et al. on arith, Amini et al. on sentiment) run,
analysed and written to docs/reproduction.md.

    settings.py  the per-method settings per profile (full: the real one; tiny: the pipeline in minutes)
    claims.py    the claims: statement, methods needed, comparisons and their claimed directions
    runs.py      the run list per claim, deduplicated, and where each run lives
    runner.py    runs the missing runs through bon_jax.pipeline.run.run_experiment, timing each
    stats.py     95% CIs over seeds x prompts (crossed) and the verdict rule
    analysis.py  per claim: the comparisons, the levels per method, the verdict
    figures.py   one PNG per claim
    writer.py    docs/reproduction.md
    __main__.py  the command line
"""
