"""bon_jax: inference-aware (Best-of-N) fine-tuning of language models in JAX/Flax."""

__version__ = "0.1.0"
