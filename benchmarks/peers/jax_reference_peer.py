"""A careful plain-JAX Best-of-N sampler on the benchmark model: the reference bon_jax's sampler is held to.

Written for this benchmark with `jax.numpy` and `jax.lax` only (no bon_jax, no Flax), the way one would
write a fast sampler by hand:

- prefill once: the B prompts [B, T_p] run through the model once, writing their keys/values into a cache
  of S = T_p + T_new slots per row, kv-head-major [rows, G, S, E];
- tiled cache: the prefilled cache is repeated N times (row r = b * N + i), so the R = B * N samples
  decode against one [R, G, S, E] cache each;
- `lax.fori_loop` decode: T_new - 1 steps of one token per row at static shapes (token 0 comes from the
  prefill's last logits); a step writes its key/value into slot T_p + t with `lax.dynamic_update_slice`
  and attends over all S slots, masked to the slots written so far (and, in local layers, to the last
  `window` positions);
- inverse-CDF sampling: token = #{v : cdf_v < u * cdf_last} with u ~ U(0, 1) per row and step, where cdf
  is the running sum of exp(l - max l) of the (soft-capped) logits at temperature 1.

The architecture is the workload's (common.py MODEL): Gemma 2 style, embedding scaled by sqrt(D), RMSNorm
x / rms(x) * (1 + scale) before and after attention and MLP, RoPE (base 10,000), queries scaled by E^-1/2,
attention-logit soft-cap, GeGLU MLP, tied unembedding with the final soft-cap; random weights, float32.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]
from common import MODEL, measure, prompts, run_peer  # noqa: E402


def build(jax, jnp, lax):
    """The model's functions (init, forward, inverse_cdf, sample), closed over the workload's sizes."""
    V, L, D = MODEL["vocab_size"], MODEL["num_layers"], MODEL["embed_dim"]
    H, G, E, F = MODEL["num_heads"], MODEL["num_kv_heads"], MODEL["head_dim"], MODEL["mlp_dim"]
    Q = H // G
    window, attn_cap, final_cap = MODEL["sliding_window"], MODEL["attn_logit_softcap"], MODEL["final_logit_softcap"]
    local = [MODEL["pattern"][i % len(MODEL["pattern"])] == "local" for i in range(L)]

    def init(key):
        ks = iter(jax.random.split(key, 6 * L + 1))
        normal = lambda shape, fan_in: jax.random.normal(next(ks), shape, jnp.float32) / fan_in**0.5
        layers = [dict(wq=normal((D, H * E), D), wkv=normal((D, 2 * G * E), D), wo=normal((H * E, D), H * E),
                       wgu=normal((D, 2 * F), D), wd=normal((F, D), F),
                       norms=0.1 * jax.random.normal(next(ks), (4, D), jnp.float32)) for _ in range(L)]
        return dict(embed=normal((V, D), 1.0), layers=layers, final=jnp.zeros((D,), jnp.float32))

    def rms(x, scale):
        return x * lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * (1.0 + scale)

    def rope(x, pos):  # x [..., T, heads, E], pos [..., T]
        freq = 10000.0 ** (-jnp.arange(E // 2, dtype=jnp.float32) * 2 / E)
        ang = pos[..., None, None].astype(jnp.float32) * freq
        x1, x2 = x[..., : E // 2], x[..., E // 2:]
        return jnp.concatenate([x1 * jnp.cos(ang) - x2 * jnp.sin(ang), x2 * jnp.cos(ang) + x1 * jnp.sin(ang)], -1)

    def attend(q_XTGQE, k_XGSE, v_XGSE, allowed_XTS):
        s = jnp.einsum("xtgqe,xgse->xgqts", q_XTGQE, k_XGSE)
        s = attn_cap * jnp.tanh(s / attn_cap)
        s = jnp.where(allowed_XTS[:, None, None], s, -1e30)
        p = jax.nn.softmax(s, axis=-1)
        return jnp.einsum("xgqts,xgse->xtgqe", p, v_XGSE)

    def layer(w, i, x_XTD, pos_XT, cache_k, cache_v, slot, allowed_XTS):
        """One decoder layer on T tokens per row written at slots [slot, slot + T) of the layer's cache."""
        X, T = x_XTD.shape[:2]
        h = rms(x_XTD, w["norms"][0])
        q = rope((h @ w["wq"]).reshape(X, T, H, E), pos_XT) * E**-0.5
        kv = (h @ w["wkv"]).reshape(X, T, 2, G, E)
        k = rope(kv[:, :, 0], pos_XT).transpose(0, 2, 1, 3)  # [X, G, T, E]
        cache_k = lax.dynamic_update_slice(cache_k, k, (0, 0, slot, 0))
        cache_v = lax.dynamic_update_slice(cache_v, kv[:, :, 1].transpose(0, 2, 1, 3), (0, 0, slot, 0))
        out = attend(q.reshape(X, T, G, Q, E), cache_k, cache_v, allowed_XTS[i])
        x_XTD = x_XTD + rms(out.reshape(X, T, H * E) @ w["wo"], w["norms"][1])
        gate, up = jnp.split(rms(x_XTD, w["norms"][2]) @ w["wgu"], 2, axis=-1)
        x_XTD = x_XTD + rms((jax.nn.gelu(gate) * up) @ w["wd"], w["norms"][3])
        return x_XTD, cache_k, cache_v

    def forward(params, tokens_XT, pos_XT, caches, slot, key_pos_S):
        """Logits of the last token [X, V] and the caches with this call's keys/values written."""
        x = params["embed"][tokens_XT] * D**0.5
        written = key_pos_S[None, None, :] <= pos_XT[:, :, None]  # causal: slots written up to this token
        in_window = pos_XT[:, :, None] - key_pos_S[None, None, :] < window
        allowed = [written & in_window if local[i] else written for i in range(L)]
        new = []
        for i, w in enumerate(params["layers"]):
            x, ck, cv = layer(w, i, x, pos_XT, *caches[i], slot, allowed)
            new.append((ck, cv))
        logits = rms(x[:, -1], params["final"]) @ params["embed"].T
        return final_cap * jnp.tanh(logits / final_cap), new

    def inverse_cdf(logits_RV, key):
        u_R = jax.random.uniform(key, logits_RV.shape[:1])
        cdf_RV = jnp.cumsum(jnp.exp(logits_RV - jnp.max(logits_RV, -1, keepdims=True)), -1)
        return jnp.minimum(jnp.sum(cdf_RV < (u_R * cdf_RV[:, -1])[:, None], -1), V - 1).astype(jnp.int32)

    def sample(params, prompts_BT, key, n, new_tokens):
        B, T_p = prompts_BT.shape
        S, R = T_p + new_tokens, B * n
        key_pos_S = jnp.arange(S)
        empty = [(jnp.zeros((B, G, S, E)), jnp.zeros((B, G, S, E))) for _ in range(L)]
        logits_BV, caches = forward(params, prompts_BT, jnp.broadcast_to(jnp.arange(T_p), (B, T_p)), empty, 0,
                                    key_pos_S)
        caches = [(jnp.repeat(k, n, 0), jnp.repeat(v, n, 0)) for k, v in caches]  # the tiled cache
        keys = jax.random.split(key, new_tokens)
        first_R = inverse_cdf(jnp.repeat(logits_BV, n, 0), keys[0])
        out_RT = jnp.zeros((R, new_tokens), jnp.int32).at[:, 0].set(first_R)

        def step(t, carry):
            out_RT, caches = carry
            pos = T_p + t
            logits_RV, caches = forward(params, lax.dynamic_slice_in_dim(out_RT, t, 1, 1),
                                        jnp.full((R, 1), pos), caches, pos, key_pos_S)
            token_R = inverse_cdf(logits_RV, keys[t + 1])
            return lax.dynamic_update_slice(out_RT, token_R[:, None], (0, t + 1)), caches

        out_RT, _ = lax.fori_loop(0, new_tokens - 1, step, (out_RT, caches))
        return out_RT.reshape(B, n, new_tokens)

    return dict(init=init, forward=forward, inverse_cdf=inverse_cdf, sample=sample)


def main(w):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    fns = build(jax, jnp, lax)
    params, sample = fns["init"](jax.random.key(w["seed"])), fns["sample"]
    prompts_BT = jnp.asarray(np.array(prompts(w), np.int32))
    B = prompts_BT.shape[0]
    sample_jit = jax.jit(sample, static_argnums=(3, 4))

    def call(i):
        return jax.device_get(sample_jit(params, prompts_BT, jax.random.key(i), w["n"], w["new_tokens"]))

    def check(tokens):
        if tokens.shape != (B, w["n"], w["new_tokens"]) or tokens.min() < 0 or tokens.max() >= MODEL["vocab_size"]:
            raise AssertionError(f"expected {(B, w['n'], w['new_tokens'])} tokens in [0, V), got {tokens.shape}")

    res = measure(call, w, check)
    res.update(peer="plain JAX reference (float32)", version="", jax=jax.__version__,
               params=sum(int(x.size) for x in jax.tree.leaves(params)),
               how="prefill once, cache tiled N times, lax.fori_loop decode, inverse-CDF sampling (this file)")
    return res


if __name__ == "__main__":
    run_peer(main)
