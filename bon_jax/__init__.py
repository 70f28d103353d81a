"""bon_jax: inference-aware (Best-of-N) fine-tuning of language models in JAX/Flax.

Array names end in their shape (`tokens_BMT`: B prompts, M samples per prompt, T tokens); the letters are
defined once, in docs/glossary.md.
"""

from bon_jax import xla_cpu as _xla_cpu

_xla_cpu.apply()  # before any JAX backend starts (bon_jax/xla_cpu.py)

__version__ = "0.1.0"
