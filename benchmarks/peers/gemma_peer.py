"""The `gemma` library's sampler (`gm.text.Sampler`, google-deepmind/gemma) on its own `gm.nn.Transformer`
built from a `TransformerConfig` with the benchmark's shapes (Gemma-2 style: local/global layers,
soft-caps, post-norms), float32, random weights (`model.init`).

Like tunix, the sampler takes one prompt per row, so Best-of-N is each prompt repeated N times. Prompts are
strings of token ids through a whitespace tokenizer (a `gm.text.Tokenizer` subclass) whose end tokens
(EOS, end-of-turn, tool response) are ids outside the vocabulary, so no row stops early;
`RandomSampling(temperature=1)`; `pad_length=T_p` so the prompt is not padded to gemma's default 256.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MODEL, measure, prompts, run_peer  # noqa: E402


def main(w):
    import dataclasses
    import enum
    import importlib.metadata

    import jax
    import jax.numpy as jnp
    from gemma import gm
    from gemma.gm.text import _tokenizer

    never = 10**7  # not a token id: rows never stop

    class IdSpecialTokens(_tokenizer.SpecialTokens, enum.IntEnum):
        PAD = 0
        EOS = never
        BOS = 2
        UNK = 3
        MASK = 4
        CUSTOM = 6
        START_OF_TURN = never + 1
        END_OF_TURN = never + 2
        IMAGE_PLACEHOLDER = never + 3
        START_OF_IMAGE = never + 4
        END_OF_IMAGE = never + 5
        AUDIO_PLACEHOLDER = never + 6
        START_OF_AUDIO = never + 7
        END_OF_AUDIO = never + 8
        BEGIN_OF_TOOL_RESPONSE = never + 9
        END_OF_TOOL_RESPONSE = never + 10

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class IdTokenizer(_tokenizer.Tokenizer):
        path: object = None

        def encode(self, text, *, add_bos=False, add_eos=False):
            return [int(t) for t in text.split()]  # the prompts carry no BOS: same length as the others

        def decode(self, ids):
            return " ".join(str(int(i)) for i in jnp.asarray(ids).reshape(-1).tolist())

        @property
        def special_tokens(self):
            return IdSpecialTokens

        @property
        def vocab_size(self):
            return MODEL["vocab_size"]

    kinds = {"local": gm.nn.AttentionType.LOCAL_SLIDING, "global": gm.nn.AttentionType.GLOBAL}
    L = MODEL["num_layers"]
    config = gm.nn.config.TransformerConfig(
        num_embed=MODEL["vocab_size"], embed_dim=MODEL["embed_dim"], hidden_dim=MODEL["mlp_dim"],
        num_heads=MODEL["num_heads"], head_dim=MODEL["head_dim"], num_kv_heads=MODEL["num_kv_heads"],
        final_logit_softcap=MODEL["final_logit_softcap"], use_post_attn_norm=True, use_post_ffw_norm=True,
        attention_types=tuple(kinds[MODEL["pattern"][i % 2]] for i in range(L)),
        attn_logits_soft_cap=MODEL["attn_logit_softcap"], sliding_window_size=MODEL["sliding_window"])
    model = gm.nn.Transformer(config=config, dtype=jnp.float32, tokens="batch.tokens")
    T_p, T_new, N = w["prompt_len"], w["new_tokens"], w["n"]
    params = model.init(jax.random.key(w["seed"]), jnp.ones((1, T_p), jnp.int32))["params"]
    sampler = gm.text.Sampler(
        model=model, params=params, tokenizer=IdTokenizer(),
        sampling=gm.text.RandomSampling(temperature=1.0), cache_length=T_p + T_new + 1,
        max_out_length=T_new, pad_length=T_p)
    strings = [" ".join(map(str, p)) for p in prompts(w) for _ in range(N)]

    def call(i):
        out = sampler.sample(strings, max_new_tokens=T_new, rng=i, return_state=True)
        return jax.device_get(out.state.predicted_tokens)

    def check(tokens):
        if tokens.shape != (len(strings), T_new):
            raise AssertionError(f"expected {(len(strings), T_new)} tokens, got {tokens.shape}")

    res = measure(call, w, check)
    res.update(peer="gemma", version=importlib.metadata.version("gemma"), jax=jax.__version__,
               params=sum(x.size for x in jax.tree.leaves(params)),
               how="gm.text.Sampler on B*N repeated prompts (prefill N times)")
    return res


if __name__ == "__main__":
    run_peer(main)
