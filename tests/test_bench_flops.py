"""The benchmark's FLOP model (`benchmarks/run.py`) against XLA's own count of the compiled program."""

import jax
import jax.numpy as jnp

from benchmarks.run import bench_config, non_embedding_params, sequence_forward_flops
from bon_jax.models import init_params
from bon_jax.sampling import sequence_logprobs


def _xla_flops(fn, *args) -> float:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def test_shared_prompt_forward_flops_match_xla_cost_analysis():
    """The model counts matmuls and attention contractions only, so it sits a little below XLA's count,
    which adds the elementwise work (norms, softmaxes, RoPE): within 3% here. The full forward of B * M
    (prompt, completion) rows executes far more."""
    cfg = bench_config()
    params = init_params(cfg, jax.random.key(0))
    B, M, T_p, T_new = 2, 8, 32, 16
    prompts_BT = jnp.ones((B, T_p), jnp.int32)
    completions_BMT = jnp.ones((B, M, T_new), jnp.int32)
    count = lambda share: _xla_flops(
        lambda p: sequence_logprobs(p, cfg, prompts_BT, completions_BMT, share_prompt=share), params
    )
    model = sequence_forward_flops(cfg, non_embedding_params(cfg, params), B, M, T_p, T_new)
    shared = count(True)
    assert 0.97 * shared <= model <= shared
    assert count(False) > 1.8 * shared
