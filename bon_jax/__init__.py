"""bon_jax: inference-aware (Best-of-N) fine-tuning of language models in JAX/Flax.

Array names end in their shape (`tokens_BMT`: B prompts, M samples per prompt, T tokens); the letters are
defined once, in docs/glossary.md.
"""

__version__ = "0.1.0"
