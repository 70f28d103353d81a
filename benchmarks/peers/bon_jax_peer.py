"""bon_jax's sampler (`bon_jax.sampling.sample`) on the benchmark model, in bon_jax's own venv, timed by the
same harness as the peers. Best-of-N natively: each prompt is prefilled once and its N samples share its
keys/values. "dtype" in the workload: float32 (default) or bfloat16 (weights cast once per call, bfloat16
activations and cache, float32 logits)."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent)]
from common import MODEL, measure, prompts, run_peer  # noqa: E402


def main(w):
    import importlib.metadata

    import jax
    import jax.numpy as jnp
    import numpy as np

    from bon_jax import sampling
    from bon_jax.models import count_params, get_config, init_params

    dtype = w.get("dtype", "float32")
    cfg = get_config("small", vocab_size=MODEL["vocab_size"], num_layers=MODEL["num_layers"],
                     embed_dim=MODEL["embed_dim"], num_heads=MODEL["num_heads"],
                     num_kv_heads=MODEL["num_kv_heads"], head_dim=MODEL["head_dim"],
                     mlp_dim=MODEL["mlp_dim"], sliding_window_size=MODEL["sliding_window"],
                     attn_logits_soft_cap=MODEL["attn_logit_softcap"],
                     final_logit_soft_cap=MODEL["final_logit_softcap"], dtype=dtype)
    params = init_params(cfg, jax.random.key(w["seed"]))
    prompts_BT = jnp.asarray(np.array(prompts(w), np.int32))
    B, T_p = prompts_BT.shape
    lengths_B = jnp.full((B,), T_p, jnp.int32)

    def call(i):
        out = sampling.sample(params, cfg, prompts_BT, w["n"], jax.random.key(i),
                              max_new_tokens=w["new_tokens"], prompt_lengths_B=lengths_B,
                              temperature=1.0, eos_id=None)
        return jax.device_get(out.tokens_BMT)

    def check(tokens):
        if tokens.shape != (B, w["n"], w["new_tokens"]):
            raise AssertionError(f"expected {(B, w['n'], w['new_tokens'])} tokens, got {tokens.shape}")

    res = measure(call, w, check)
    res.update(peer=f"bon_jax ({dtype})", version=importlib.metadata.version("bon_jax"),
               jax=jax.__version__, params=count_params(params),
               how="sample(): prefill once per prompt, N samples share the prompt's keys/values")
    return res


if __name__ == "__main__":
    run_peer(main)
