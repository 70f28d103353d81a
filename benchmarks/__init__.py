"""Benchmarks of bon_jax (`make bench`, i.e. `python -m benchmarks.run`); see benchmarks/README.md."""
