"""google-tunix's `Sampler` (tunix.generate.sampler) on tunix's own Gemma (tunix.models.gemma, the Gemma 1/2
nnx model: local/global layers, soft-caps, post-norms), random weights.

tunix samples one row per input string, so Best-of-N is each prompt repeated N times (B * N strings):
the prompt is prefilled N times and the KV cache holds N copies. Strings are the token ids written out
("12 7 301"), through a whitespace tokenizer, so tokenisation costs next to nothing. top_p=1.0 selects
tunix's sampling mode (temperature 1, categorical over the full vocabulary); eos_tokens=[-1] never
matches, so every row generates new_tokens tokens.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, measure, prompts, run_peer  # noqa: E402


class IdTokenizer:
    """Token ids as whitespace-separated integers (what tunix's TokenizerAdapter needs: encode, decode,
    bos_id, eos_id, pad_id)."""

    def encode(self, text, **_):
        return [int(t) for t in text.split()]

    def decode(self, ids, **_):
        return " ".join(str(int(i)) for i in ids)

    def bos_id(self):
        return 0  # falsy: tunix then adds no BOS

    def eos_id(self):
        return 1

    def pad_id(self):
        return 0


def main(w):
    import jax
    from flax import nnx
    from tunix.generate import sampler as sampler_lib
    from tunix.models.gemma import model as gemma_lib

    kinds = {"local": gemma_lib.AttentionType.LOCAL_SLIDING, "global": gemma_lib.AttentionType.GLOBAL}
    L = MODEL["num_layers"]
    cfg = gemma_lib.ModelConfig(
        num_layers=L, num_embed=MODEL["vocab_size"], embed_dim=MODEL["embed_dim"],
        hidden_dim=MODEL["mlp_dim"], num_heads=MODEL["num_heads"], head_dim=MODEL["head_dim"],
        num_kv_heads=MODEL["num_kv_heads"], final_logit_softcap=MODEL["final_logit_softcap"],
        use_post_attn_norm=True, use_post_ffw_norm=True,
        attention_types=tuple(kinds[MODEL["pattern"][i % 2]] for i in range(L)),
        attn_logits_soft_cap=MODEL["attn_logit_softcap"], sliding_window_size=MODEL["sliding_window"])
    model = gemma_lib.Gemma(cfg, rngs=nnx.Rngs(params=w["seed"]))
    T_p, T_new, N = w["prompt_len"], w["new_tokens"], w["n"]
    sampler = sampler_lib.Sampler(
        model, IdTokenizer(),
        sampler_lib.CacheConfig(cache_size=T_p + T_new, num_layers=L,
                                num_kv_heads=MODEL["num_kv_heads"], head_dim=MODEL["head_dim"]))
    strings = [" ".join(map(str, p)) for p in prompts(w) for _ in range(N)]

    def call(i):
        out = sampler(strings, max_generation_steps=T_new, max_prompt_length=T_p, temperature=1.0,
                      top_p=1.0, eos_tokens=[-1], seed=i)
        return out.tokens

    def check(tokens):
        lengths = {len(t) for t in tokens}
        if len(tokens) != len(strings) or lengths != {T_new}:
            raise AssertionError(f"expected {len(strings)} rows of {T_new} tokens, got {lengths}")

    res = measure(call, w, check)
    res.update(peer="tunix", version=_version("google-tunix"), jax=jax.__version__,
               params=sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))),
               how="Sampler on B*N repeated prompts (prefill N times, cache tiled by construction)")
    return res


def _version(dist):
    import importlib.metadata
    return importlib.metadata.version(dist)


if __name__ == "__main__":
    run_peer(main)
