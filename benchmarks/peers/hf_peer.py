"""HF transformers `generate` (torch, CPU) on `Gemma2ForCausalLM` built from a `Gemma2Config` with the
benchmark's shapes (local/global layers, soft-caps, post-norms, tied embedding), random weights.

Best-of-N through `num_return_sequences=N` (transformers expands each prompt N times before the prefill).
`do_sample=True, temperature=1, top_k=0, top_p=1` (full-vocabulary sampling; the default top_k=50 is
switched off), `min_new_tokens = max_new_tokens` so EOS never ends a row. Eager attention (Gemma 2's
logit soft-cap). dtype from the workload's "dtype" (float32 or bfloat16; logits are upcast by transformers).
torch uses every core (`torch.set_num_threads(os.cpu_count())`) with OMP_WAIT_POLICY=PASSIVE (unless set):
with OpenMP's default spin-waiting, any other load on a 2-core machine made torch's matmuls ~6x slower
(9 vs 62 GFLOP/s for a 256 x 256 x 1024 linear, measured under load). Generation under `torch.inference_mode`.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, measure, prompts, run_peer  # noqa: E402


def main(w):
    import importlib.metadata

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(w["seed"])
    dtype = getattr(torch, w.get("dtype", "float32"))
    L = MODEL["num_layers"]
    kinds = {"local": "sliding_attention", "global": "full_attention"}
    T_p, T_new, N = w["prompt_len"], w["new_tokens"], w["n"]
    config = transformers.Gemma2Config(
        vocab_size=MODEL["vocab_size"], hidden_size=MODEL["embed_dim"], intermediate_size=MODEL["mlp_dim"],
        num_hidden_layers=L, num_attention_heads=MODEL["num_heads"],
        num_key_value_heads=MODEL["num_kv_heads"], head_dim=MODEL["head_dim"],
        hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=MODEL["head_dim"],
        sliding_window=MODEL["sliding_window"], final_logit_softcapping=MODEL["final_logit_softcap"],
        attn_logit_softcapping=MODEL["attn_logit_softcap"],
        layer_types=[kinds[MODEL["pattern"][i % 2]] for i in range(L)],
        max_position_embeddings=T_p + T_new, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=2, eos_token_id=1)
    model = transformers.Gemma2ForCausalLM(config).to(dtype).eval()
    input_ids = torch.tensor(prompts(w), dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)

    def call(i):
        torch.manual_seed(i)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0,
                top_k=0, top_p=1.0, max_new_tokens=T_new, min_new_tokens=T_new,
                num_return_sequences=N, pad_token_id=0)
        return out[:, T_p:].numpy()

    def check(tokens):
        if tokens.shape != (w["batch"] * N, T_new):
            raise AssertionError(f"expected {(w['batch'] * N, T_new)} new tokens, got {tokens.shape}")

    res = measure(call, w, check)
    res.update(peer=f"transformers ({w.get('dtype', 'float32')})",
               version=importlib.metadata.version("transformers"), torch=torch.__version__,
               params=sum(p.numel() for p in model.parameters()),
               how="generate(num_return_sequences=N): prompt expanded N times before the prefill")
    return res


if __name__ == "__main__":
    run_peer(main)
