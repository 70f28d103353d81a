import jax
import jax.numpy as jnp
import numpy as np

from bon_jax.models import get_config, init_params, make_model
from bon_jax.tokenizer import Tokenizer
from bon_jax.train.lm import sequence_batch, sft_loss, token_logprobs
from bon_jax.train.optim import adamw
from bon_jax.train.step import TrainState, make_update_step

CORPUS = [f"Problem: {a}+{b}=?\nSolution:\n\\boxed{{{a + b}}}" for a in range(20) for b in range(20)]


def _tok():
    return Tokenizer.train(CORPUS, vocab_size=320)


def test_sequence_batch_layout():
    tok = _tok()
    b = sequence_batch(tok, ["Problem: 1+2=?"], ["\\boxed{3}"], 32)
    p_ids, c_ids = tok.encode("Problem: 1+2=?"), tok.encode("\\boxed{3}")
    row = [tok.bos_id] + p_ids + c_ids + [tok.eos_id]
    np.testing.assert_array_equal(b["tokens_BT"][0, : len(row)], row)
    assert not b["tokens_BT"][0, len(row) :].any()
    target = np.zeros(32, bool)
    target[1 + len(p_ids) : len(row)] = True
    np.testing.assert_array_equal(b["target_BT"][0], target)
    assert not b["truncated_B"][0]
    assert sequence_batch(tok, ["Problem: 1+2=?"], ["\\boxed{3}"], 5)["truncated_B"][0]


def test_token_logprobs_match_float64_log_softmax_of_forward():
    cfg = get_config("tiny", vocab_size=320)
    model, params = make_model(cfg), init_params(cfg, jax.random.key(1))
    tokens = jnp.array([[2, 5, 7, 9, 1, 0, 0], [2, 11, 3, 4, 8, 6, 1]], jnp.int32)
    valid = tokens != 0
    got = token_logprobs(model, params, tokens, valid)
    for b in range(2):
        n = int(valid[b].sum())
        pos = jnp.arange(n)[None]
        mask = jnp.tril(jnp.ones((n, n), bool))[None]
        logits, _ = model.apply({"params": params}, tokens[b : b + 1, :n], pos, mask)
        logits = np.asarray(logits[0], np.float64)
        ref = (
            logits
            - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - logits.max(-1, keepdims=True)
        )
        want = [ref[t - 1, int(tokens[b, t])] for t in range(1, n)]
        np.testing.assert_allclose(np.asarray(got[b, 1:n]), want, atol=1e-5)
        assert float(got[b, 0]) == 0.0 and not np.asarray(got[b, n:]).any()


def test_sft_memorises_a_tiny_corpus():
    tok = _tok()
    cfg = get_config("tiny", vocab_size=tok.vocab_size)
    model = make_model(cfg)
    opt = adamw(1e-2, 150, warmup=10)
    step = jax.jit(make_update_step(sft_loss(model), opt), donate_argnums=0)
    state = TrainState.create(init_params(cfg, jax.random.key(0)), opt)
    prompts = [c.split("\n")[0] + "\nSolution:\n" for c in CORPUS[:16]]
    comps = [c.split("Solution:\n")[1] for c in CORPUS[:16]]
    batch = {
        k: jnp.asarray(v) for k, v in sequence_batch(tok, prompts, comps, 32).items() if k != "truncated_B"
    }
    losses = []
    for _ in range(150):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.25 * losses[0], losses[::25]
